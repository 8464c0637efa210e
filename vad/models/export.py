"""Exporting a trained model (OpenVINO, ONNX; int8 by NNCF), each graph proven on the validation images.

The graph (:class:`ScoringGraph`) takes model-size uint8 pixels and computes, inside: the normalisation, the
backbone (torch's batch-norm-folded graph), the model's scoring (each scorer's :meth:`graph_forward`) and
the raw image score and anomaly map. It is traced to ONNX once; OpenVINO's graph is converted from it.

**fp32 parity gate** (``onnx``, ``openvino``): the validation images scored through torch and through the
exported graph; ``models/export/parity.json`` gets, per export:

- raw scores: max absolute and max relative difference (relative to the calibration's score range);
- normalised scores (``anomaly_score``): max absolute difference; the gate needs at most
  :data:`MAX_NORMALIZED_DIFFERENCE`;
- labels: whether every validation image gets the same OK/NG label; the gate needs all;
- maps (normalised): max absolute difference, reported only (PatchCore's torch maps of large banks come
  from the inverted file; the exported graph searches exactly);
- speed of both on the same images: images/s in batches of :data:`BATCH` and one image with its map (ms).

**int8 accuracy gate** (``openvino_int8``, train arg ``precision: int8``): NNCF's post-training quantisation of
the OpenVINO graph, calibrated on OK training images only. Its scores are not the fp32 ones, so its threshold
and normalisation are re-derived on its own validation scores (``calibration_int8.json``, by the method the
fp32 calibration used) and it is kept only when validation image AUROC drops by at most
:data:`MAX_AUROC_DROP` and F1 at the trained threshold by at most :data:`MAX_F1_DROP`. The scopes of
:data:`INT8_SCOPES` are tried in turn, each keeping more of the graph in fp32; ``parity.json`` lists every attempt
with its drops and, label-free, how closely its scores follow the fp32 ones.

A refused export leaves no graph (``manifest.json`` says why, the log warns) and the training run still
succeeds without it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vad import metrics
from vad.batches import to_tensor
from vad.calibration import Calibration
from vad.exported import (
    EMBEDDING_NAME,
    INPUT_NAME,
    INT8_CALIBRATION_FILE,
    KINDS,
    MANIFEST_FILE,
    ONNX,
    OPENVINO,
    OPENVINO_INT8,
    OUTPUT_NAMES,
    PARITY_FILE,
    ExportedScorer,
    ExportKind,
    decline_telemetry,
    export_dir,
    import_openvino,
    load_tail,
    runner,
)
from vad.images import model_pixels, read_image
from vad.models.scorer import GraphScorer

logger = logging.getLogger("assets.models.export")

OPSET = 17
FORMATS = ("openvino", "onnx")
DEFAULT_FORMATS = ("openvino", "onnx")  # OpenVINO for Intel edge boxes; ONNX for the smallest edge install
MAX_NORMALIZED_DIFFERENCE = 1e-3  # the fp32 gate: normalised scores of every validation image within this
MAX_AUROC_DROP = 0.005  # the int8 gate: validation image AUROC may drop by this much
MAX_F1_DROP = 0.01  # and F1 at the trained threshold by this much
DROP_TOLERANCE = 1e-9  # float rounding: one swapped pair of 20 OK x 10 NG is a drop of 0.005, within the limit
GATE_IMAGES = 64  # validation images the fp32 gate scores at most (the first ones)
INT8_VALIDATION_IMAGES = 1000  # validation images the int8 gate scores at most
CALIBRATION_IMAGES = 300  # OK training images the quantiser sees at most
BATCH = 4
LATENCY_REPEATS = 5  # one-image timings (after one warm-up call); their median is reported
# int8 quantisation scopes, tried in this order until one passes the accuracy gate, each keeping more in fp32 and
# following the fp32 graph more closely: the whole graph (the fastest), the backbone only (the model's own scoring
# after it, such as FastFlow's flows, in fp32), then the backbone's dense convolutions only (its depthwise ones in
# fp32 too: on the generated products the product FastFlow's largest int8-to-fp32 score difference falls from
# 0.29-0.38 of the fp32 score range to 0.04, at 1.1-1.2x fp32's speed instead of the whole graph's 1.8-2.2x;
# BENCHMARKS.md "int8: quantisation settings").
INT8_SCOPES = ("graph", "backbone", "dense")
SCOPE_NAMES = {"graph": "the graph", "backbone": "the backbone", "dense": "the dense convolutions"}  # in messages
DEPTHWISE = "GroupConvolution"  # OpenVINO's operation for grouped (here: depthwise) convolutions
# The model's own scoring after the backbone, by the names the ONNX trace gives its operations (``/scorer/...`` but
# not ``/scorer/backbone/...``; a graph that ends at the embedding has none): NNCF's ignored-scope pattern.
OUTSIDE_BACKBONE = r"^/scorer/(?!backbone/).*"


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
    from vad.exported import TAILS

    module = importlib.import_module(TAILS[name][0])
    module.save_tail(folder, arrays)


def parity(
    reference: tuple[np.ndarray, list[np.ndarray]],
    exported: tuple[np.ndarray, list[np.ndarray]],
    calibration: Calibration,
) -> dict[str, Any]:
    """Compare torch's scores and maps with an fp32 export's (the gate's figures).

    Args:
        reference: Torch's raw scores and per-batch raw maps.
        exported: The export's, of the same images.
        calibration: The model's calibration.

    Returns:
        The figures, with ``accepted`` and, when refused, ``reason``.
    """
    raw, exported_raw = reference[0], exported[0]
    map_difference = max(
        float(np.max(np.abs(calibration.normalize(a) - calibration.normalize(b))))
        for a, b in zip(reference[1], exported[1], strict=True)
    )
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


def fidelity(fp32_raw: np.ndarray, int8_raw: np.ndarray) -> dict[str, float]:
    """How closely int8 scores follow fp32 ones, without labels: rank correlation, largest difference / fp32 range.

    Args:
        fp32_raw: The fp32 graph's raw scores.
        int8_raw: The int8 graph's, of the same images.

    Returns:
        ``rank_correlation`` and ``largest_relative_difference``; both NaN when they cannot be measured (no
        images, different counts, non-finite fp32 scores).
    """
    if len(fp32_raw) == 0 or len(fp32_raw) != len(int8_raw) or not np.all(np.isfinite(fp32_raw)):
        return {"rank_correlation": float("nan"), "largest_relative_difference": float("nan")}
    span = float(np.ptp(fp32_raw))
    largest = float(np.max(np.abs(int8_raw - fp32_raw)))
    return {
        "rank_correlation": metrics.rank_correlation(fp32_raw, int8_raw),
        "largest_relative_difference": largest / span if span > 0 else float("nan"),
    }


def int8_gate(
    fp32_raw: np.ndarray, int8_raw: np.ndarray, is_ng: np.ndarray | None, calibration: Calibration
) -> tuple[dict[str, Any], Calibration | None]:
    """The int8 accuracy gate: its own calibration from its validation scores, and its AUROC and F1 drops.

    Args:
        fp32_raw: Torch's raw validation scores.
        int8_raw: The int8 graph's, of the same images.
        is_ng: True for NG validation images (None: no labels).
        calibration: The fp32 model's calibration (its method, percentile and class names are reused).

    Returns:
        The figures (``accepted``, ``reason`` when refused; also, reported only, ``rank_correlation`` of the
        int8 scores with the fp32 ones and their ``largest_relative_difference`` to the fp32 score range) and
        the int8 calibration (None when refused).
    """
    if not np.all(np.isfinite(int8_raw)):
        return {"accepted": False, "reason": "the int8 graph gives non-finite scores", "images": len(int8_raw)}, None
    follows = fidelity(fp32_raw, int8_raw)
    if is_ng is None or not np.any(is_ng) or np.all(is_ng):
        reason = "validation holds no NG image (or no OK image), so its AUROC and F1 drops cannot be measured"
        return {"accepted": False, "reason": reason, "images": len(int8_raw), **follows}, None
    own, _ = Calibration.fit(
        int8_raw, is_ng, calibration.method, calibration.percentile, calibration.ok_name, calibration.ng_name
    )
    before = metrics.classification_scores(is_ng, calibration.apply(fp32_raw).is_anomalous, fp32_raw)
    after = metrics.classification_scores(is_ng, own.apply(int8_raw).is_anomalous, int8_raw)
    auroc_drop, f1_drop = before["auroc"] - after["auroc"], before["f1"] - after["f1"]
    figures: dict[str, Any] = {
        "images": len(int8_raw),
        "n_ng": int(np.sum(is_ng)),
        "fp32_auroc": before["auroc"],
        "int8_auroc": after["auroc"],
        "auroc_drop": auroc_drop,
        "fp32_f1": before["f1"],
        "int8_f1": after["f1"],
        "f1_drop": f1_drop,
        "limit_auroc_drop": MAX_AUROC_DROP,
        "limit_f1_drop": MAX_F1_DROP,
        "int8_threshold": own.threshold,
        "fp32_threshold": calibration.threshold,
        **follows,
    }
    reasons = []
    if not auroc_drop <= MAX_AUROC_DROP + DROP_TOLERANCE:
        reasons.append(
            f"validation image AUROC drops by {auroc_drop:.4f} ({before['auroc']:.4f} to {after['auroc']:.4f}; "
            f"limit {MAX_AUROC_DROP:g})"
        )
    if not f1_drop <= MAX_F1_DROP + DROP_TOLERANCE:
        reasons.append(
            f"F1 at the trained threshold drops by {f1_drop:.4f} ({before['f1']:.4f} to {after['f1']:.4f}; "
            f"limit {MAX_F1_DROP:g})"
        )
    figures["accepted"] = not reasons
    if reasons:
        figures["reason"] = "; ".join(reasons)
        return figures, None
    return figures, own


def _score_batches(
    score: Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray | None]], pictures: Sequence[Image.Image]
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Scores and per-batch maps of pictures in batches of :data:`BATCH`, and images/s."""
    scores, maps = [], []
    started = time.perf_counter()
    for start in range(0, len(pictures), BATCH):
        found, found_maps = score(list(pictures[start : start + BATCH]))
        scores.append(np.asarray(found, dtype=np.float32))
        maps.append(found_maps)
    seconds = max(time.perf_counter() - started, 1e-9)
    return np.concatenate(scores), maps, round(len(pictures) / seconds, 2)


def _one_image_ms(score: Callable[[list[Image.Image]], Any], picture: Image.Image) -> float:
    """Median milliseconds to score one picture with its map (after one warm-up call)."""
    score([picture])
    timings = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        score([picture])
        timings.append(time.perf_counter() - started)
    return round(1000 * statistics.median(timings), 2)


def _torch_scores(scorer: GraphScorer, spec: Any) -> Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray]]:
    size = tuple(spec.input_size)

    def score(batch: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        return scorer.score(torch.stack([to_tensor(p, size, spec.mean, spec.std) for p in batch]), True)

    return score


@contextlib.contextmanager
def _quiet() -> Any:
    """NNCF's progress bars and OpenVINO's messages kept out of the pipeline's console, their telemetry declined."""
    decline_telemetry()  # before NNCF is imported: it counts the run at import
    with Path(os.devnull).open("w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        nncf_logger = logging.getLogger("nncf")
        level = nncf_logger.level
        nncf_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            nncf_logger.setLevel(level)


def _outside_backbone(model: Any) -> list[str]:
    """The weighted operations of a graph that are not in the scorer's backbone (the model's own scoring)."""
    weighted = {"Convolution", "GroupConvolution", "MatMul"}
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in weighted and re.match(OUTSIDE_BACKBONE, op.get_friendly_name())
    ]


def _scope_differs(model: Any, scope: str) -> bool:
    """Whether a scope keeps anything in fp32 that the scope before it quantised (else it is the same graph)."""
    if scope == "backbone":
        return bool(_outside_backbone(model))
    if scope == "dense":
        return any(
            op.get_type_name() == DEPTHWISE and not re.match(OUTSIDE_BACKBONE, op.get_friendly_name())
            for op in model.get_ordered_ops()
        )
    return True


def int8_ignored_scope(nncf: Any, scope: str) -> Any:
    """NNCF's ignored scope for one of :data:`INT8_SCOPES` (None for ``graph``: nothing is kept in fp32).

    Args:
        nncf: The imported ``nncf`` module.
        scope: ``graph``, ``backbone`` (the model's own scoring after the backbone stays fp32) or ``dense`` (the
            backbone's depthwise convolutions stay fp32 too).

    Returns:
        An ``nncf.IgnoredScope`` or None.
    """
    if scope == "graph":
        return None
    types = [DEPTHWISE] if scope == "dense" else []
    return nncf.IgnoredScope(patterns=[OUTSIDE_BACKBONE], types=types, validate=False)


def quantize_int8(model: Any, calibration_images: Sequence[str], size: tuple[int, int], scope: str = "graph") -> Any:
    """NNCF's post-training int8 quantisation of an OpenVINO graph, calibrated on OK training images.

    Args:
        model: The fp32 ``openvino.Model``.
        calibration_images: OK training image files (the first :data:`CALIBRATION_IMAGES`).
        size: Input (height, width).
        scope: ``graph`` (every operation NNCF quantises), ``backbone`` (the model's own scoring after the
            backbone stays fp32) or ``dense`` (the backbone's depthwise convolutions stay fp32 too).

    Returns:
        The quantised ``openvino.Model``.

    Raises:
        ValueError: No calibration images.
    """
    files = list(calibration_images)[:CALIBRATION_IMAGES]
    if not files:
        msg = "no OK training images to calibrate the quantisation on"
        raise ValueError(msg)
    with _quiet():
        import nncf

        ignored = int8_ignored_scope(nncf, scope)
        options: dict[str, Any] = {} if ignored is None else {"ignored_scope": ignored}
        dataset = nncf.Dataset(files, lambda path: model_pixels(read_image(path), size)[None])
        return nncf.quantize(
            model, dataset, subset_size=len(files), preset=nncf.QuantizationPreset.PERFORMANCE, **options
        )


def _remove_graph(target: Path, kind: ExportKind) -> None:
    graph = target / kind.file
    graph.unlink(missing_ok=True)
    if graph.suffix == ".xml":
        graph.with_suffix(".bin").unlink(missing_ok=True)
    if kind.precision == "int8":
        (target / INT8_CALIBRATION_FILE).unlink(missing_ok=True)


def _save_openvino(model: Any, path: Path) -> None:
    openvino = import_openvino()
    openvino.save_model(model, str(path), compress_to_fp16=False)  # fp32 weights: the graph the gate proved


@dataclass
class GateInputs:
    """What every graph of one export is gated on.

    Attributes:
        scorer: The torch scorer.
        spec: The model's spec.
        calibration: The fp32 calibration.
        validation: Validation image files.
        pictures: The first :data:`GATE_IMAGES` of them, read.
        is_ng: Their labels (None: none).
        train_images: OK training image files (int8 calibration).
        tail: The numpy tail after the graph, or None.
        target: ``models/export``.
        reference: Torch's raw scores and per-batch maps of ``pictures``.
        torch_speed: Torch's images/s in batches and one-image milliseconds.
    """

    scorer: GraphScorer
    spec: Any
    calibration: Calibration
    validation: list[str]
    pictures: list[Image.Image]
    is_ng: np.ndarray | None
    train_images: Sequence[str]
    tail: Any
    target: Path
    reference: tuple[np.ndarray, list[np.ndarray]] = (np.empty(0), [])
    torch_speed: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """The model's input (height, width)."""
        return tuple(self.spec.input_size)


def export_model(
    scorer: GraphScorer,
    spec: Any,
    calibration: Calibration,
    validation: Sequence[str],
    folder: Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    precision: str = "fp32",
    is_ng: Sequence[bool] | np.ndarray | None = None,
    train_images: Sequence[str] = (),
) -> dict[str, Any]:
    """Export a trained model to ``models/export`` and gate each graph; a refused graph is not left behind.

    Args:
        scorer: The model's torch scorer (loaded from ``folder``).
        spec: The model's spec.
        calibration: Its calibration.
        validation: Validation image files (the fp32 gate scores up to :data:`GATE_IMAGES` of them, the int8
            gate up to :data:`INT8_VALIDATION_IMAGES`).
        folder: ``models/train``.
        formats: ``openvino`` and/or ``onnx``.
        precision: ``int8`` adds the quantised OpenVINO graph (needs ``openvino`` in ``formats``).
        is_ng: Labels of the validation images (the int8 gate needs OK and NG ones).
        train_images: OK training image files (the int8 calibration set).

    Returns:
        The manifest written (``exports``: each graph's entry; ``accepted``: whether any graph passed).
    """
    target = export_dir(folder)
    target.mkdir(parents=True, exist_ok=True)
    for kind in KINDS.values():  # an earlier export's graphs do not outlive this one
        _remove_graph(target, kind)
    for leftover in target.glob("*.npz"):
        leftover.unlink()
    size = tuple(spec.input_size)
    kinds = [KINDS[name] for name in FORMATS if name in formats]
    if precision == "int8" and OPENVINO in kinds:
        kinds.append(OPENVINO_INT8)
    manifest: dict[str, Any] = {
        "opset": OPSET,
        "model_name": spec.model_name,
        "input": {"name": INPUT_NAME, "shape": ["batch", size[0], size[1], 3], "dtype": "uint8", "layout": "NHWC"},
        "outputs": list(OUTPUT_NAMES),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "exports": {},
    }
    parities: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        model, arrays = onnx_bytes(scorer, spec.mean, spec.std, size)
        tail = None
        if arrays is not None:
            save_tail_arrays(scorer.TAIL, target, arrays)
            tail = load_tail(scorer.TAIL, target)
            manifest.update(tail=scorer.TAIL, outputs=[EMBEDDING_NAME])
        names = list(validation)
        pictures = [read_image(path) for path in names[:GATE_IMAGES]]
        if not pictures:
            msg = "no validation images to prove the export on"
            raise ValueError(msg)
        labels = None if is_ng is None else np.asarray(is_ng, dtype=bool)
        gate = GateInputs(scorer, spec, calibration, names, pictures, labels, train_images, tail, target)
        torch_score = _torch_scores(scorer, spec)
        raw, maps, per_s = _score_batches(torch_score, pictures)
        gate.reference = (raw, maps)
        gate.torch_speed = {"torch_images_per_s": per_s, "torch_one_image_ms": _one_image_ms(torch_score, pictures[0])}
        prepared: dict[str, Any] = {}
        for kind in kinds:
            try:
                parities[kind.name] = _export_one(kind, model, prepared, gate)
            except Exception as exc:  # this graph's exporter or runtime cannot take the model: the others go on
                parities[kind.name] = _failed(exc)
    except Exception as exc:  # the trace itself failed: every graph refused, training goes on
        parities = {kind.name: _failed(exc) for kind in kinds}
    for kind in kinds:
        figures = parities[kind.name]
        entry = {"file": kind.file, "runtime": kind.runtime, "precision": kind.precision}
        entry["accepted"] = bool(figures["accepted"])
        if not figures["accepted"]:
            entry["reason"] = figures["reason"]
            _remove_graph(target, kind)
        manifest["exports"][kind.name] = entry
        _log_verdict(kind, figures, target, folder)
    accepted = [name for name, entry in manifest["exports"].items() if entry["accepted"]]
    manifest.update(accepted=bool(accepted), export_seconds=round(time.perf_counter() - started, 2))
    if not accepted:
        manifest["reason"] = "; ".join(f"{name}: {entry['reason']}" for name, entry in manifest["exports"].items())
        for leftover in target.glob("*.npz"):
            leftover.unlink()
    (target / PARITY_FILE).write_text(json.dumps(parities, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _failed(exc: Exception) -> dict[str, Any]:
    logger.debug("export failed", exc_info=exc)
    return {"accepted": False, "reason": f"export failed ({exc.__class__.__name__}: {str(exc)[:160]})"}


def _export_one(kind: ExportKind, model: bytes, prepared: dict[str, Any], gate: GateInputs) -> dict[str, Any]:
    """Write one graph and gate it (fp32: parity with torch; int8: the accuracy gate)."""
    try:
        if kind is ONNX:
            (gate.target / kind.file).write_bytes(model)
        else:
            openvino = import_openvino()
            if "openvino" not in prepared:
                with _quiet():
                    prepared["openvino"] = openvino.convert_model(io.BytesIO(model))
            if kind is OPENVINO_INT8:
                return _export_int8(prepared["openvino"], gate)
            _save_openvino(prepared["openvino"], gate.target / kind.file)
        exported = ExportedScorer(
            runner(kind, model if kind is ONNX else gate.target / kind.file), gate.size, gate.tail
        )
    except ImportError as exc:
        return {"accepted": False, "reason": f"{exc.name or 'its runtime'} is not installed"}
    raw, maps, per_s = _score_batches(exported.score_images, gate.pictures)
    figures = parity(gate.reference, (raw, maps), gate.calibration)
    speed = {
        "export_images_per_s": per_s,
        "export_one_image_ms": _one_image_ms(exported.score_images, gate.pictures[0]),
    }
    return {**figures, **gate.torch_speed, **speed}


def _export_int8(fp32_graph: Any, gate: GateInputs) -> dict[str, Any]:
    """Quantise in each of :data:`INT8_SCOPES` in turn and keep the first graph that passes the accuracy gate."""
    every = gate.pictures
    fp32_raw = gate.reference[0]
    if len(gate.validation) > len(gate.pictures):
        every = [read_image(path) for path in gate.validation[:INT8_VALIDATION_IMAGES]]
        fp32_raw = _score_batches(_torch_scores(gate.scorer, gate.spec), every)[0]
    labels = None if gate.is_ng is None else gate.is_ng[: len(every)]
    path = gate.target / OPENVINO_INT8.file
    attempts: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    for scope in INT8_SCOPES:
        if not _scope_differs(fp32_graph, scope):
            continue  # nothing more to keep in fp32: the same graph again
        _save_openvino(quantize_int8(fp32_graph, gate.train_images, gate.size, scope), path)
        exported = ExportedScorer(runner(OPENVINO_INT8, path), gate.size, gate.tail)
        raw, _, per_s = _score_batches(exported.score_images, every)
        figures, own = int8_gate(fp32_raw, raw, labels, gate.calibration)
        speed = {"export_images_per_s": per_s, "export_one_image_ms": _one_image_ms(exported.score_images, every[0])}
        figures.update(scope=scope, **gate.torch_speed, **speed)
        keys = ("scope", "accepted", "auroc_drop", "f1_drop", "rank_correlation", "largest_relative_difference")
        attempts.append({key: figures.get(key) for key in (*keys, "reason")})
        if own is not None:
            own.save(gate.target, INT8_CALIBRATION_FILE)
            break
        if "auroc_drop" not in figures:  # not measurable (no NG validation images): no other scope can pass
            break
    figures["attempts"] = attempts
    if not figures["accepted"] and len(attempts) > 1:
        figures["reason"] = "; ".join(f"quantising {SCOPE_NAMES[a['scope']]}: {a['reason']}" for a in attempts)
    return figures


def _log_verdict(kind: ExportKind, figures: dict[str, Any], target: Path, folder: Path) -> None:
    where = (target / kind.file).relative_to(folder.parent.parent)
    label = f"{kind.runtime} {kind.precision}"
    if not figures["accepted"]:
        logger.warning(f"export {kind.name} refused: {figures['reason']}")
        return
    speed = (
        f"{figures['export_images_per_s']} images/s against torch's {figures['torch_images_per_s']}, one image "
        f"{figures['export_one_image_ms']} ms against {figures['torch_one_image_ms']}"
    )
    if kind.precision == "int8":
        logger.info(
            f"exported to {where} ({label}, {figures['scope']} quantised): validation AUROC "
            f"{figures['int8_auroc']:.4f} against fp32's {figures['fp32_auroc']:.4f}, F1 {figures['int8_f1']:.4f} "
            f"against {figures['fp32_f1']:.4f}, its own threshold; {speed}"
        )
        return
    logger.info(
        f"exported to {where} ({label}): parity on {figures['images']} validation image(s), normalised scores "
        f"within {figures['normalized_max_abs_difference']:.1e}, labels identical; {speed}"
    )


def export_saved(
    folder: Path,
    validation: Sequence[str],
    formats: Sequence[str] = DEFAULT_FORMATS,
    precision: str = "fp32",
    is_ng: Sequence[bool] | np.ndarray | None = None,
    train_images: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Export the model saved in ``models/train`` (loaded as inference loads it), gated on ``validation``.

    Args:
        folder: ``models/train``.
        validation: Validation image files.
        formats: ``openvino`` and/or ``onnx``.
        precision: ``fp32`` or ``int8`` (see :func:`export_model`).
        is_ng: Labels of the validation images.
        train_images: OK training image files (int8 calibration).

    Returns:
        The manifest, or None when the model has no plain-torch scorer to export (logged).
    """
    from vad.models.factory import load

    trained = load(folder)
    if not isinstance(trained.model, GraphScorer):
        logger.warning("export skipped: this model scores through anomalib (saved without its backbone graph)")
        return None
    return export_model(
        trained.model, trained.spec, trained.calibration, validation, folder, formats, precision, is_ng, train_images
    )
