"""Output step: write the edge conductor's ``inference_summary.yaml`` (inference wrote ``output.csv`` as it scored)."""

from __future__ import annotations

import pandas as pd

from alo import Asset, Config, Data, StepArgs, StepContext, build_summary, write_summary
from vad.batch_summary import summarize


class OutputArgs(StepArgs):
    """The output step takes no arguments."""


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
        if info.get("n_ood") is not None:
            note += f", {info['n_ood']} out of distribution"
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
