"""Exporting a trained model (OpenVINO, ONNX; int8 by NNCF), each graph proven on the validation images.

The graph (:mod:`vad.export.trace`) takes model-size uint8 pixels and computes, inside: the normalisation, the
backbone (torch's batch-norm-folded graph), the model's scoring and the raw image score and anomaly map. It is
traced to ONNX once; OpenVINO's graph is converted from it.

**fp32 parity gate** (``onnx``, ``openvino``; :mod:`vad.export.gates`): the validation images scored through torch
and through the exported graph; ``models/export/parity.json`` gets, per export:

- raw scores: max absolute and max relative difference (relative to the calibration's score range);
- normalised scores (``anomaly_score``): max absolute difference, within the gate's limit;
- labels: whether every validation image gets the same OK/NG label; the gate needs all;
- maps (normalised): max absolute difference, reported only (PatchCore's torch maps of large banks come
  from the inverted file; the exported graph searches exactly);
- speed of both on the same images (:mod:`vad.export.timing`): images/s in batches and one image with its map (ms).

**int8 fidelity gate** (``openvino_int8``, train arg ``precision: int8``; :mod:`vad.export.int8`): NNCF's
post-training quantisation of the OpenVINO graph, calibrated on OK training images. Every 4th OK training image is
held out of that calibration (:func:`vad.export.int8.split_images`); those and the validation images are the gate
images, scored through torch and through the int8 graph. The graph is kept when it follows the accepted fp32 model
on them (:func:`vad.export.gates.int8_gate`: rank correlation, largest normalised-score difference, verdicts at the
trained threshold), and then scores with the fp32 model's calibration. The scopes are tried in turn, each keeping
more of the graph in fp32; ``parity.json`` lists every attempt with its fidelity figures, and the labelled AUROC
and F1 of both graphs on the validation images as information (with the resolution their count allows).

A refused export leaves no graph (``manifest.json`` says why, the log warns) and the training run still
succeeds without it.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vad.calibration import Calibration
from vad.export import gates, int8
from vad.export.runtime import (
    DEFAULT_FORMATS,
    DESCRIPTOR_NAME,
    EMBEDDING_NAME,
    FORMATS,
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
    export_dir,
    import_openvino,
    load_tail,
    runner,
)
from vad.export.timing import Described, one_image_ms, score_batches, torch_scores
from vad.export.trace import OPSET, onnx_bytes
from vad.images import read_image
from vad.models import entry as model_entry
from vad.models.scorer import GraphScorer
from vad.ood import OodCheck

logger = logging.getLogger("vad.export")

GATE_IMAGES = 64  # validation images the fp32 gate scores at most (the first ones)
INT8_VALIDATION_IMAGES = 1000  # validation images the int8 gate scores at most (the first ones)


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
    """What every graph of one export is gated on: the torch scorer's results, never the scorer itself.

    Attributes:
        spec: The model's spec.
        calibration: The fp32 calibration.
        validation: Validation image files.
        pictures: The first :data:`GATE_IMAGES` of them, read.
        is_ng: Their labels (None: none).
        target: ``models/export``.
        graph: The traced ONNX graph.
        tail_name: The model whose numpy tail follows the graph (its arrays saved in ``target``), or None.
        tail: That tail, read back from ``target`` once the torch scorer is gone (None before, and without one).
        reference: Torch's raw scores and per-batch maps of ``pictures``.
        torch_speed: Torch's images/s in batches and one-image milliseconds.
        int8_calibration: The OK training images NNCF calibrates on (disjoint from ``int8_images``).
        int8_images: The int8 gate's images: held-out OK training images, then validation images.
        int8_is_validation: True for those that are validation images.
        int8_reference: Torch's raw scores of ``int8_images`` and their ``ood_score`` (None without a check), or
            the exception that scoring them raised (it refuses the int8 graph only).
        ood: The model's out-of-distribution check (None: it has none).
        ood_reference: Torch's ``ood_score`` of ``pictures`` (with a check).
    """

    spec: Any
    calibration: Calibration
    validation: list[str]
    pictures: list[Image.Image]
    is_ng: np.ndarray | None
    target: Path
    graph: bytes
    tail_name: str | None = None
    tail: Any = None
    reference: tuple[np.ndarray, list[np.ndarray]] = (np.empty(0), [])
    torch_speed: dict[str, float] = field(default_factory=dict)
    int8_calibration: list[str] = field(default_factory=list)
    int8_images: list[str] = field(default_factory=list)
    int8_is_validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    int8_reference: tuple[np.ndarray, np.ndarray | None] | Exception | None = None
    ood: OodCheck | None = None
    ood_reference: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The model's input (height, width)."""
        return tuple(self.spec.input_size)


class _Export:
    """One export in two phases, so that the torch scorer can be released before the graphs are gated.

    :meth:`trace` is all that needs the torch scorer: the ONNX trace, the tail's arrays (written to
    ``models/export``) and torch's reference scores (for the int8 gate also those of its validation images).
    :meth:`gate` reads the numpy tail back and runs each graph in its runtime, one at a time. A caller that owns the
    scorer drops it in between (:func:`export_saved`): the scorer's memory bank and search index are then never in
    memory beside the tail's (with a 2,000-image PatchCore bank, 167 MB each, and as much again for each index).
    """

    def __init__(
        self,
        spec: Any,
        calibration: Calibration,
        validation: Sequence[str],
        folder: Path,
        formats: Sequence[str],
        precision: str,
        is_ng: Sequence[bool] | np.ndarray | None,
        train_images: Sequence[str],
    ) -> None:
        self.spec, self.calibration, self.folder = spec, calibration, folder
        self.validation, self.is_ng, self.train_images = list(validation), is_ng, train_images
        self.target = export_dir(folder)
        self.target.mkdir(parents=True, exist_ok=True)
        for kind in KINDS.values():  # an earlier export's graphs do not outlive this one
            _remove_graph(self.target, kind)
        for leftover in self.target.glob("*.npz"):
            leftover.unlink()
        size = tuple(spec.input_size)
        self.kinds = [KINDS[name] for name in FORMATS if name in formats]
        if precision == "int8" and OPENVINO in self.kinds:
            self.kinds.append(OPENVINO_INT8)
        self.manifest: dict[str, Any] = {
            "opset": OPSET,
            "model_name": spec.model_name,
            "input": {"name": INPUT_NAME, "shape": ["batch", size[0], size[1], 3], "dtype": "uint8", "layout": "NHWC"},
            "outputs": [*OUTPUT_NAMES, DESCRIPTOR_NAME],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "exports": {},
        }
        self.parities: dict[str, Any] = {}
        self.inputs: GateInputs | None = None
        self.started = time.perf_counter()

    def trace(self, scorer: GraphScorer) -> None:
        """Everything the gates need from the torch scorer; it is not kept (a failure refuses every graph).

        Args:
            scorer: The model's torch scorer.
        """
        try:
            self.inputs = self._trace(scorer)
        except Exception as exc:  # the trace itself failed: every graph refused, training goes on
            self.parities = {kind.name: _failed(exc) for kind in self.kinds}

    def _trace(self, scorer: GraphScorer) -> GateInputs:
        spec = self.spec
        graph, arrays = onnx_bytes(scorer, spec.mean, spec.std, tuple(spec.input_size))
        tail_name = scorer.TAIL if arrays is not None else None  # arrays come with a tail only
        if arrays is not None and tail_name is not None:
            model_entry(tail_name).tail_class().save(self.target, arrays)
            self.manifest.update(tail=tail_name, outputs=[EMBEDDING_NAME, DESCRIPTOR_NAME])
        del arrays  # views of the scorer's bank
        names = self.validation
        pictures = [read_image(path) for path in names[:GATE_IMAGES]]
        if not pictures:
            msg = "no validation images to prove the export on"
            raise ValueError(msg)
        labels = None if self.is_ng is None else np.asarray(self.is_ng, dtype=bool)
        gate = GateInputs(spec, self.calibration, names, pictures, labels, self.target, graph)
        gate.tail_name = tail_name
        torch_score = torch_scores(scorer, spec)
        gate.ood = OodCheck.load(self.folder)
        described = Described(torch_scores(scorer, spec, described=True))
        raw, maps, per_s = score_batches(described if gate.ood is not None else torch_score, pictures)
        gate.reference = (raw, maps)
        if gate.ood is not None:
            gate.ood_reference = gate.ood.scores(described.descriptors())
        gate.torch_speed = {"torch_images_per_s": per_s, "torch_one_image_ms": one_image_ms(torch_score, pictures[0])}
        if OPENVINO_INT8 in self.kinds:
            gate.int8_calibration, held_out = int8.split_images(self.train_images)
            gate.int8_images = [*held_out, *names[:INT8_VALIDATION_IMAGES]]
            gate.int8_is_validation = np.arange(len(gate.int8_images)) >= len(held_out)
            try:
                gate.int8_reference = _scored_described(
                    torch_scores(scorer, spec, described=True), gate.int8_images, gate.ood
                )[:2]
            except Exception as exc:  # refuses the int8 graph only, as when it is gated (no frames kept)
                gate.int8_reference = exc.with_traceback(None)
        return gate

    def gate(self) -> dict[str, Any]:
        """Read the tail back, gate each graph, write ``manifest.json`` and ``parity.json``.

        Returns:
            The manifest written.
        """
        inputs, kinds, target = self.inputs, self.kinds, self.target
        if inputs is not None:
            try:
                if inputs.tail_name is not None:
                    inputs.tail = load_tail(inputs.tail_name, target)
                prepared: dict[str, Any] = {}
                for kind in kinds:
                    try:
                        self.parities[kind.name] = _export_one(kind, inputs.graph, prepared, inputs)
                    except Exception as exc:  # this graph's exporter or runtime cannot take the model: others go on
                        self.parities[kind.name] = _failed(exc)
            except Exception as exc:  # the tail cannot be read back: every graph refused, training goes on
                self.parities = {kind.name: _failed(exc) for kind in kinds}
        manifest, parities = self.manifest, self.parities
        for kind in kinds:
            figures = parities[kind.name]
            entry: dict[str, Any] = {"file": kind.file, "runtime": kind.runtime, "precision": kind.precision}
            entry["accepted"] = bool(figures["accepted"])
            if not figures["accepted"]:
                entry["reason"] = figures["reason"]
                _remove_graph(target, kind)
            manifest["exports"][kind.name] = entry
            _log_verdict(kind, figures, target, self.folder)
        accepted = [name for name, entry in manifest["exports"].items() if entry["accepted"]]
        manifest.update(accepted=bool(accepted), export_seconds=round(time.perf_counter() - self.started, 2))
        if not accepted:
            manifest["reason"] = "; ".join(f"{name}: {entry['reason']}" for name, entry in manifest["exports"].items())
            for leftover in target.glob("*.npz"):
                leftover.unlink()
        (target / PARITY_FILE).write_text(json.dumps(parities, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return manifest


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

    The scorer stays in memory until the graphs are gated (the caller holds it); :func:`export_saved` releases
    its own before the exported tail and the runtimes load theirs.

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
    export = _Export(spec, calibration, validation, folder, formats, precision, is_ng, train_images)
    export.trace(scorer)
    return export.gate()


def _failed(exc: Exception) -> dict[str, Any]:
    logger.debug("export failed", exc_info=exc)
    return {"accepted": False, "reason": f"export failed ({exc.__class__.__name__}: {str(exc)[:160]})"}


def _export_one(kind: ExportKind, model: bytes, prepared: dict[str, Any], gate: GateInputs) -> dict[str, Any]:
    """Write one graph and gate it (fp32: parity with torch; int8: the fidelity gate)."""
    try:
        if kind is ONNX:
            (gate.target / kind.file).write_bytes(model)
        else:
            openvino = import_openvino()
            if "openvino" not in prepared:
                with int8.quiet():
                    prepared["openvino"] = openvino.convert_model(io.BytesIO(model))
            if kind is OPENVINO_INT8:
                return _export_int8(prepared["openvino"], gate)
            _save_openvino(prepared["openvino"], gate.target / kind.file)
        exported = ExportedScorer(
            runner(kind, model if kind is ONNX else gate.target / kind.file), gate.size, gate.tail
        )
    except ImportError as exc:
        return {"accepted": False, "reason": f"{exc.name or 'its runtime'} is not installed"}
    described = Described(exported.score_described)
    raw, maps, per_s = score_batches(described if gate.ood is not None else exported.score_images, gate.pictures)
    figures = gates.parity(gate.reference, (raw, maps), gate.calibration)
    if gate.ood is not None and gate.ood_reference is not None:
        figures = gates.with_ood_parity(figures, gate.ood_reference, gate.ood.scores(described.descriptors()))
    speed = {
        "export_images_per_s": per_s,
        "export_one_image_ms": one_image_ms(exported.score_images, gate.pictures[0]),
    }
    return {**figures, **gate.torch_speed, **speed}


def _scored_described(
    score: Any, files: Sequence[str], ood: OodCheck | None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Raw scores of image files (read a few at a time), their ``ood_score`` (with a check) and images/s scored."""
    described = Described(score)
    raw: list[np.ndarray] = []
    seconds = 0.0
    step = 16
    for start in range(0, len(files), step):
        found, _, per_s = score_batches(described, [read_image(path) for path in files[start : start + step]])
        raw.append(found)
        seconds += len(found) / per_s if per_s > 0 else 0.0
    scores = np.concatenate(raw) if raw else np.zeros(0, dtype=np.float32)
    images_per_s = round(len(scores) / seconds, 1) if seconds > 0 else 0.0
    return scores, (ood.scores(described.descriptors()) if ood is not None else None), images_per_s


def _export_int8(fp32_graph: Any, gate: GateInputs) -> dict[str, Any]:
    """Quantise in each int8 scope in turn and keep the first graph that passes the fidelity gate."""
    if isinstance(gate.int8_reference, Exception):
        raise gate.int8_reference
    if gate.int8_reference is None:
        msg = "the int8 gate images were not scored through torch"
        raise ValueError(msg)
    fp32_raw, fp32_ood = gate.int8_reference
    labels = None if gate.is_ng is None else gate.is_ng[:INT8_VALIDATION_IMAGES]
    path = gate.target / OPENVINO_INT8.file
    first = read_image(gate.validation[0])  # the one-image latency
    attempts: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    for scope in int8.INT8_SCOPES:
        if not int8.scope_differs(fp32_graph, scope):
            continue  # nothing more to keep in fp32: the same graph again
        _save_openvino(int8.quantize_int8(fp32_graph, gate.int8_calibration, gate.size, scope), path)
        exported = ExportedScorer(runner(OPENVINO_INT8, path), gate.size, gate.tail, gate.ood is not None)
        raw, ood_scores, per_s = _scored_described(exported.score_described, gate.int8_images, gate.ood)
        figures = gates.int8_gate(fp32_raw, raw, gate.int8_is_validation, gate.calibration, labels)
        if fp32_ood is not None and ood_scores is not None:
            figures = gates.with_int8_ood(figures, fp32_ood, ood_scores)
        speed = {
            "export_images_per_s": per_s,
            "export_one_image_ms": one_image_ms(exported.score_images, first),
            "calibration_images": len(gate.int8_calibration),
            "held_out_training_files": gate.int8_images[: int(np.sum(~gate.int8_is_validation))],
        }
        figures.update(scope=scope, **gate.torch_speed, **speed)
        keys = ("scope", "accepted", "rank_correlation", "largest_difference", "verdict_changes", "reason")
        attempts.append({key: figures.get(key) for key in keys})
        if figures["accepted"]:
            break
    figures["attempts"] = attempts
    if not figures["accepted"] and len(attempts) > 1:
        figures["reason"] = "; ".join(f"quantising {int8.SCOPE_NAMES[a['scope']]}: {a['reason']}" for a in attempts)
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
        labelled = (
            f"; validation AUROC {figures['int8_auroc']:.4f} against fp32's {figures['fp32_auroc']:.4f} (information)"
            if "int8_auroc" in figures
            else ""
        )
        logger.info(
            f"exported to {where} ({label}, {int8.SCOPE_NAMES[figures['scope']]} quantised): follows fp32 on "
            f"{figures['images']} gate image(s), rank correlation {figures['rank_correlation']:.4f}, normalised "
            f"scores within {figures['largest_difference']:.3f}, {figures['verdict_changes']} verdict change(s) near "
            f"the threshold{labelled}; {speed}"
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
    export = _Export(trained.spec, trained.calibration, validation, folder, formats, precision, is_ng, train_images)
    export.trace(trained.model)
    del trained  # the torch scorer (its bank, search index and backbone) goes before the tail and the runtimes load
    gc.collect()
    return export.gate()
