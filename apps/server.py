"""The scoring service (``main.py --mode serve``): the HTTP API and the web page on one resident detector."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from alo.errors import PlanError
from alo.plan import Plan, load_plan
from alo.runner import model_dir_of, train_id_of
from apps.http.api import MAX_BODY_BYTES, ServeSettings, create_app
from apps.http.auth import check_bind, token_from_env
from apps.http.batcher import Batcher
from apps.http.drift import ServedDrift
from apps.web.app import UiContext, add_ui
from vad.detector import Detector, resident_detector
from vad.drift import DriftSettings, DriftWatch
from vad.ood.verdict import OOD_ACTIONS, OodAction
from vad.review.store import ReviewStore

logger = logging.getLogger("apps.server")


def serve(
    plan_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    data_root: str | None = None,
    max_upload_mb: float = MAX_BODY_BYTES / (1024 * 1024),
) -> None:
    """Load the plan's model once and serve the API until interrupted.

    Args:
        plan_path: The plan (its model: ``load_model_path`` or ``train_artifacts/models``; its inference step's
            ``accelerator``, ``runtime``, ``inference_threshold`` and ``ood_action``; its inference data folder as
            the default data folder).
        host: Address to bind (loopback unless a token is set).
        port: Port.
        data_root: The folder JSON paths must stay inside (default: the plan's inference data folder).
        max_upload_mb: The largest request body.
    """
    token = token_from_env()
    check_bind(host, token)
    plan = load_plan(plan_path)
    args = {step.name: step.args for step in plan.pipelines.get("inference", [])}.get("inference", {})
    with tempfile.TemporaryDirectory(prefix="vad-serve-") as workdir:
        models = model_dir_of(plan, Path(workdir))
        accelerator = str(args.get("accelerator", "cpu"))
        threshold = args.get("inference_threshold")
        ood_action = _ood_action(args.get("ood_action", "flag"))

        def current() -> Detector:
            threshold_value = None if threshold is None else float(threshold)
            runtime = str(args.get("runtime", "auto"))
            return resident_detector(models, accelerator, threshold_value, runtime, ood_action)

        batcher = Batcher(current)
        batcher.resolve().result()  # load before listening, in the thread that scores: /readyz is true at once
        folder = Path(data_root) if data_root else plan.resolve(plan.external_path.load_inference_data_path)
        root = folder if folder is not None and folder.is_dir() else None
        drift = DriftWatch(DriftSettings.of(plan.control.drift_window, plan.control.drift_limit))
        settings = ServeSettings(
            data_root=root,
            token=token,
            max_body_bytes=int(max_upload_mb * 1024 * 1024),
            version=plan.version,
            train_id=train_id_of(models),
            review=ReviewStore.of_project(plan.root, plan.control.review_size_mb),
            drift=ServedDrift(drift, models),
        )
        ui = UiContext(plan.root, plan.path, models, Path(data_root) if data_root else _page_data_root(plan))
        logger.info(f"serving {models} on http://{host}:{port} (data folder: {root or 'none, uploads only'})")
        logger.info(f"the page: http://{host}:{port}/ui/inspect (its data folder: {ui.data_root or 'none'})")

        def page(app: FastAPI, batcher: Batcher) -> None:
            add_ui(app, batcher, ui, settings.token, settings.max_images, settings.version)

        app = create_app(current, settings, batcher, extensions=[page])
        uvicorn.run(app, host=host, port=port, log_level="warning")


def _ood_action(value: object) -> OodAction:
    """The inference step's ``ood_action`` as written in the plan, checked (a plan error names the choices)."""
    for action in OOD_ACTIONS:
        if value == action:
            return action
    msg = f"plan error: 'inference.ood_action' is {value!r}: it must be one of {', '.join(OOD_ACTIONS)}"
    raise PlanError(msg)


def _page_data_root(plan: Plan) -> Path | None:
    """The page's data folder by default: the folder holding both the plan's train and inference data."""
    folders = [
        plan.resolve(plan.external_path.load_train_data_path),
        plan.resolve(plan.external_path.load_inference_data_path),
    ]
    found = [str(folder) for folder in folders if folder is not None and folder.is_dir()]
    return Path(os.path.commonpath(found)) if found else None
