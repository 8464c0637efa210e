"""Output step: write the edge conductor's ``inference_summary.yaml`` (inference wrote ``output.csv`` as it scored)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alo import Asset, Config, Data, StepArgs, StepContext, build_summary, write_summary
from alo.summary import MAX_RESULT


class OutputArgs(StepArgs):
    """The output step takes no arguments."""


def summarize(
    predictions: pd.DataFrame, is_anomalous: np.ndarray, ok_name: str, ng_name: str
) -> tuple[str, float, dict[str, float]]:
    """Result, score and probability of the summary.

    One image: its predicted label, its certainty and {OK: 1-p, NG: p}. Several: counts per
    label (``good:12,bad:3``; ``OK:12,NG:3`` when the names do not fit 32 characters), the mean
    certainty and the mean probabilities.

    Args:
        predictions: ``output.csv`` rows.
        is_anomalous: True where an image is predicted NG (the calibration's verdict).
        ok_name: OK class name.
        ng_name: NG name.

    Returns:
        (result, score, probability).
    """
    p = float(np.mean(predictions["anomaly_score"]))
    score = float(np.mean(predictions["certainty"]))
    probability = {ok_name: 1.0 - p, ng_name: p}
    if len(predictions) == 1:
        return str(predictions["pred_label"].iloc[0])[:MAX_RESULT], score, probability
    n_ng = int(np.count_nonzero(is_anomalous))
    n_ok = len(predictions) - n_ng
    result = f"{ok_name}:{n_ok},{ng_name}:{n_ng}"
    if len(result) > MAX_RESULT:
        result = f"OK:{n_ok},NG:{n_ng}"
    return result, score, probability


class OutputStep(Asset):
    """Writes the inference results."""

    Args = OutputArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Write ``score/inference_summary.yaml`` from the predictions inference wrote to ``output.csv``.

        Args:
            ctx: Run context.
            data: Needs ``predictions`` and ``is_anomalous``.
            config: Needs ``inference``.

        Returns:
            ``data`` and ``config`` with ``summary``.
        """
        predictions: pd.DataFrame = data["predictions"]
        info = config["inference"]
        result, score, probability = summarize(predictions, data["is_anomalous"], info["ok_class"], info["ng_name"])
        samples = data["samples"]
        file_path = samples["_file"].iloc[0] if len(samples) == 1 else str(data["data_dir"])
        note = (
            f"{info['model_name']}: {info['n_images']} image(s), {info['n_pred_ng']} {info['ng_name']} "
            f"at threshold {info['inference_threshold']}"
        )
        summary = build_summary(
            result=result,
            score=score,
            probability=probability,
            note=note,
            file_path=str(file_path),
            version=ctx.plan.version,
        )
        write_summary(summary, ctx.artifact_path("score", "inference_summary.yaml"))
        ctx.logger.info(f"summary: result {summary['result']}, score {summary['score']}")
        config["summary"] = summary
        return data, config


ASSET = OutputStep
