"""Exporting a trained model to ONNX, proven equal to the torch scores on the validation images (the parity gate).

The graph (:class:`ScoringGraph`) takes model-size uint8 pixels and computes, inside: the normalisation, the
backbone (torch's batch-norm-folded graph), the model's scoring (each scorer's :meth:`graph_forward`) and
the raw image score and anomaly map. The gate scores the validation images through torch and through the
exported graph in ONNX Runtime and writes ``models/export/parity.json``:

- raw scores: max absolute and max relative difference (relative to the calibration's score range);
- normalised scores (``anomaly_score``): max absolute difference; the gate needs at most
  :data:`MAX_NORMALIZED_DIFFERENCE`;
- labels: whether every validation image gets the same OK/NG label; the gate needs all;
- maps (normalised): max absolute difference, reported only (PatchCore's torch maps of large banks come
  from the inverted file; the exported graph searches exactly);
- images/s of both on the same images (reported; ``auto`` does not choose by them).

An export that fails the gate is refused: ``model.onnx`` is removed, ``manifest.json`` says why, and the
training run still succeeds without it.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from assets.vad.batches import to_tensor
from assets.vad.calibration import Calibration
from assets.vad.exported import (
    EMBEDDING_NAME,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    PARITY_FILE,
    ExportedScorer,
    export_dir,
    load_tail,
    session,
)
from assets.vad.images import model_pixels, read_image
from assets.vad.models.scorer import GraphScorer

logger = logging.getLogger("assets.models.export")

OPSET = 17
FORMATS = ("onnx",)
MAX_NORMALIZED_DIFFERENCE = 1e-3  # the gate: normalised scores of every validation image within this
GATE_IMAGES = 64  # validation images the gate scores at most (the first ones)
BATCH = 4


class ScoringGraph(nn.Module):
    """Model-size uint8 pixels (B, H, W, 3) to raw image scores (B,) and raw anomaly maps (B, H, W).

    For a scorer with a ``TAIL`` (PatchCore), to its embedding instead: the numpy tail scores it.
    """

    def __init__(self, scorer: GraphScorer, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.scorer = scorer
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 1, 1, 3))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Scores and maps (or the tail's embedding), as the torch runtime computes them from the same pixels.

        Args:
            pixels: uint8 (B, H, W, 3).

        Returns:
            Scores (B,) and maps (B, H, W).
        """
        images = ((pixels.float() / 255.0 - self.mean) / self.std).permute(0, 3, 1, 2)
        if self.scorer.TAIL is not None:
            return self.scorer.graph_embedding(images)
        scores, maps = self.scorer.graph_forward(images)
        return scores.reshape(-1), maps.reshape(maps.shape[0], maps.shape[-2], maps.shape[-1])


def onnx_bytes(
    scorer: GraphScorer, mean: Sequence[float], std: Sequence[float], size: tuple[int, int]
) -> tuple[bytes, dict[str, np.ndarray] | None]:
    """The scoring graph of a scorer as ONNX (batch size free), and its tail's arrays when it has one.

    Args:
        scorer: A loaded scorer (CPU, eval).
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        size: Input (height, width).

    Returns:
        The ONNX model, and the tail's arrays or None.
    """
    graph = ScoringGraph(scorer, mean, std).eval()
    example = torch.zeros(2, *size, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    outputs = [EMBEDDING_NAME] if scorer.TAIL is not None else list(OUTPUT_NAMES)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
    with torch.inference_mode():
        warm = graph(example)  # operators a scorer builds on first use (PatchCore's blur) are trace constants
        tail = scorer.tail_arrays(warm) if scorer.TAIL is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter says a newer one exists
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=outputs, dynamic_axes=axes,
        )  # fmt: skip
    return buffer.getvalue(), tail


def save_tail_arrays(name: str, folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a tail's arrays into ``models/export`` (``np.savez``: plain arrays, read back without pickles).

    Args:
        name: The tail's ``TAILS`` name.
        folder: ``models/export``.
        arrays: Its arrays.
    """
    from assets.vad.exported import TAILS

    module = importlib.import_module(TAILS[name][0])
    module.save_tail(folder, arrays)


def parity(
    scorer: GraphScorer, exported: ExportedScorer, calibration: Calibration, pictures: Sequence[Image.Image], spec: Any
) -> dict[str, Any]:
    """Score the same pictures through torch and through the export, and compare (the gate's figures).

    Args:
        scorer: The torch scorer.
        exported: The exported graph in ONNX Runtime.
        calibration: The model's calibration.
        pictures: Validation images.
        spec: The model's spec (input size, normalisation).

    Returns:
        The figures, with ``accepted`` and, when refused, ``reason``.
    """
    size = tuple(spec.input_size)
    ours: list[np.ndarray] = []
    theirs: list[np.ndarray] = []
    torch_maps: list[np.ndarray] = []
    export_maps: list[np.ndarray] = []
    torch_seconds = export_seconds = 0.0
    for start in range(0, len(pictures), BATCH):
        batch = pictures[start : start + BATCH]
        started = time.perf_counter()
        scores, maps = scorer.score(torch.stack([to_tensor(p, size, spec.mean, spec.std) for p in batch]), True)
        torch_seconds += time.perf_counter() - started
        started = time.perf_counter()
        exported_scores, exported_maps = exported.score_pixels(np.stack([model_pixels(p, size) for p in batch]))
        export_seconds += time.perf_counter() - started
        ours.append(scores)
        theirs.append(exported_scores)
        torch_maps.append(calibration.normalize(maps))
        export_maps.append(calibration.normalize(exported_maps))
    raw, exported_raw = np.concatenate(ours), np.concatenate(theirs)
    map_difference = max(float(np.max(np.abs(a - b))) for a, b in zip(torch_maps, export_maps, strict=True))
    span = max(calibration.high - calibration.low, 1e-12)
    scored, exported_scored = calibration.apply(raw), calibration.apply(exported_raw)
    normalized = float(np.max(np.abs(scored.columns["anomaly_score"] - exported_scored.columns["anomaly_score"])))
    same_labels = bool(np.array_equal(scored.is_anomalous, exported_scored.is_anomalous))
    figures: dict[str, Any] = {
        "images": len(raw),
        "raw_max_abs_difference": float(np.max(np.abs(raw - exported_raw))),
        "raw_max_relative_difference": float(np.max(np.abs(raw - exported_raw)) / span),
        "normalized_max_abs_difference": normalized,
        "labels_identical": same_labels,
        "map_max_abs_difference": map_difference,
        "torch_images_per_s": round(len(raw) / torch_seconds, 2),
        "export_images_per_s": round(len(raw) / export_seconds, 2),
        "limit_normalized": MAX_NORMALIZED_DIFFERENCE,
    }
    reasons = []
    if not same_labels:
        flipped = int(np.sum(scored.is_anomalous != exported_scored.is_anomalous))
        reasons.append(f"{flipped} of {len(raw)} validation label(s) differ")
    if not normalized <= MAX_NORMALIZED_DIFFERENCE:  # NaN fails too
        reasons.append(f"normalised scores differ by up to {normalized:.2e} (limit {MAX_NORMALIZED_DIFFERENCE:g})")
    figures["accepted"] = not reasons
    if reasons:
        figures["reason"] = "; ".join(reasons)
    return figures


def export_model(
    scorer: GraphScorer, spec: Any, calibration: Calibration, validation: Sequence[str], folder: Path
) -> dict[str, Any]:
    """Export a trained model to ``models/export`` and run the parity gate; a refused export leaves no graph.

    Args:
        scorer: The model's torch scorer (loaded from ``folder``).
        spec: The model's spec.
        calibration: Its calibration.
        validation: Validation image files (the gate scores up to :data:`GATE_IMAGES` of them).
        folder: ``models/train``.

    Returns:
        The manifest written (``accepted``, the gate's figures under ``parity``).
    """
    target = export_dir(folder)
    target.mkdir(parents=True, exist_ok=True)
    graph_file = target / ONNX_FILE
    size = tuple(spec.input_size)
    manifest: dict[str, Any] = {
        "format": "onnx",
        "opset": OPSET,
        "precision": "fp32",
        "model_name": spec.model_name,
        "input": {"name": INPUT_NAME, "shape": ["batch", size[0], size[1], 3], "dtype": "uint8", "layout": "NHWC"},
        "outputs": list(OUTPUT_NAMES),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    started = time.perf_counter()
    try:
        model, arrays = onnx_bytes(scorer, spec.mean, spec.std, size)
        graph_file.write_bytes(model)
        tail = None
        if arrays is not None:
            save_tail_arrays(scorer.TAIL, target, arrays)
            tail = load_tail(scorer.TAIL, target)
            manifest.update(tail=scorer.TAIL, outputs=[EMBEDDING_NAME])
        exported = ExportedScorer(session(model), size, tail)
        pictures = [read_image(path) for path in list(validation)[:GATE_IMAGES]]
        if not pictures:
            msg = "no validation images to prove the export on"
            raise ValueError(msg)
        figures = parity(scorer, exported, calibration, pictures, spec)
    except Exception as exc:  # an exporter or runtime that cannot take this model: refused, training goes on
        figures = {"accepted": False, "reason": f"export failed ({exc.__class__.__name__}: {str(exc)[:160]})"}
        logger.debug("export failed", exc_info=exc)
    manifest.update(accepted=figures["accepted"], export_seconds=round(time.perf_counter() - started, 2))
    if figures["accepted"]:
        logger.info(
            f"exported to {graph_file.relative_to(folder.parent.parent)} (ONNX fp32): parity on {figures['images']} "
            f"validation image(s), normalised scores within {figures['normalized_max_abs_difference']:.1e}, labels "
            f"identical; {figures['export_images_per_s']} images/s against torch's {figures['torch_images_per_s']}"
        )
    else:
        manifest["reason"] = figures["reason"]
        graph_file.unlink(missing_ok=True)
        for leftover in target.glob("*.npz"):
            leftover.unlink()
        logger.warning(f"export refused: {figures['reason']}; the model scores with torch")
    (target / PARITY_FILE).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def export_saved(folder: Path, validation: Sequence[str]) -> dict[str, Any] | None:
    """Export the model saved in ``models/train`` (loaded as inference loads it), gated on ``validation``.

    Args:
        folder: ``models/train``.
        validation: Validation image files.

    Returns:
        The manifest, or None when the model has no plain-torch scorer to export (logged).
    """
    from assets.vad.models.factory import load

    trained = load(folder)
    if not isinstance(trained.model, GraphScorer):
        logger.warning("export skipped: this model scores through anomalib (saved without its backbone graph)")
        return None
    return export_model(trained.model, trained.spec, trained.calibration, validation, folder)
