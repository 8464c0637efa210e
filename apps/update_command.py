"""``main.py --mode update`` and ``--mode rollback --version N``: improve the model from the engineer's verdicts.

Update: the verdicts of ``review/feedback.csv`` (written by the page's Review tab) go into one train pipeline run
of the plan, started from the active model (:mod:`alo.model_versions`): OK images the model has not learnt yet are
added to it where the model allows it (PatchCore's memory bank, PaDiM's Gaussians; other models are trained again
with them), NG verdicts join validation and the threshold is derived again. The run is an ordinary train run
(staged, promoted only when it succeeds, in ``history/``, tracked), and its model is kept as a new version with the
data it added and the validation figures before and after. A failed or interrupted update leaves the active
version as it was.

Rollback: a kept version becomes the active model again; the loop and the HTTP service load it as they load a
retrained model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alo.artifacts import project_lock
from alo.errors import DataError
from alo.model_versions import ModelVersion, activate, register_active
from alo.plan import load_plan
from alo.runner import PreparedStep, prepare, run_pipeline
from vad.feedback_rows import learnt_review_ids, read_verdicts
from vad.models.saved import read_saved

logger = logging.getLogger("alo.update")

FEEDBACK_CSV = Path("review") / "feedback.csv"  # beside the plan: the page's verdicts


def run_update(plan_path: str | Path, package: str = "assets", reporter: str | None = None) -> ModelVersion:
    """Update the active model with the verdicts not yet learnt, as a new version.

    Args:
        plan_path: The plan.
        package: The solution package.
        reporter: The tracking plugin.

    Returns:
        The active version afterwards (the new one, or the old one when there was nothing new).

    Raises:
        DataError: No verdicts yet.
    """
    plan = load_plan(plan_path)
    root = plan.root
    feedback = root / FEEDBACK_CSV
    if not feedback.is_file():
        msg = f"data error: no verdicts yet ({feedback} is missing); mark images OK or NG on the page's Review tab"
        raise DataError(msg)
    steps = prepare(plan, "train", package)
    with project_lock(root):
        base = register_active(root)
        learnt = learnt_review_ids(read_saved(base.folder(root) / "train").training)
        new = [i for i in read_verdicts(feedback)["review_id"] if i not in learnt]
        if not new:
            logger.info(f"no verdicts since model version {base.number} learnt its own: nothing to update")
            return base
        logger.info(f"updating model version {base.number} with {len(new)} new verdict(s)")
        updating = [_updating(step, base.folder(root), feedback) for step in steps]
        run_pipeline(plan, "train", updating, package, reporter=reporter)
        version = register_active(root, made_by="update", based_on=base.number)
    before = base.validation.get("auroc")
    after = version.validation.get("auroc")
    logger.info(f"model version {version.number} is active: validation AUROC {before} before, {after} after")
    return version


def _updating(step: PreparedStep, base: Path, feedback: Path) -> PreparedStep:
    """The train step told to start from ``base`` and learn ``feedback``; other steps as they are."""
    if step.name != "train":
        return step
    args = step.args.model_copy(update={"update_from": str(base), "feedback_csv": str(feedback)})
    return PreparedStep(step.name, step.asset, args)


def run_rollback(plan_path: str | Path, number: int) -> ModelVersion:
    """Make a kept model version the active model again.

    Args:
        plan_path: The plan.
        number: The version.

    Returns:
        The version.
    """
    plan = load_plan(plan_path)
    with project_lock(plan.root):
        return activate(plan.root, number)
