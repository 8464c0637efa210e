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

**int8 accuracy gate** (``openvino_int8``, train arg ``precision: int8``; :mod:`vad.export.int8`): NNCF's
post-training quantisation of the OpenVINO graph, calibrated on OK training images only. Its scores are not the
fp32 ones, so its threshold and normalisation are re-derived on its own validation scores
(``calibration_int8.json``, by the method the fp32 calibration used) and it is kept only when validation image AUROC
and F1 at the trained threshold drop by at most the gate's limits. The scopes are tried in turn, each keeping more
of the graph in fp32; ``parity.json`` lists every attempt with its drops and, label-free, how closely its scores
follow the fp32 ones.

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
INT8_VALIDATION_IMAGES = 1000  # validation images the int8 gate scores at most


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
        train_images: OK training image files (int8 calibration).
        target: ``models/export``.
        graph: The traced ONNX graph.
        tail_name: The model whose numpy tail follows the graph (its arrays saved in ``target``), or None.
        tail: That tail, read back from ``target`` once the torch scorer is gone (None before, and without one).
        reference: Torch's raw scores and per-batch maps of ``pictures``.
        torch_speed: Torch's images/s in batches and one-image milliseconds.
        int8_reference: Torch's raw scores of the int8 gate's validation images where they are more than
            ``pictures`` (None: the reference's), or the exception that scoring them raised (the int8 gate's).
        ood: The model's out-of-distribution check (None: it has none).
        ood_reference: Torch's ``ood_score`` of ``pictures`` (with a check).
    """

    spec: Any
    calibration: Calibration
    validation: list[str]
    pictures: list[Image.Image]
    is_ng: np.ndarray | None
    train_images: Sequence[str]
    target: Path
    graph: bytes
    tail_name: str | None = None
    tail: Any = None
    reference: tuple[np.ndarray, list[np.ndarray]] = (np.empty(0), [])
    torch_speed: dict[str, float] = field(default_factory=dict)
    int8_reference: np.ndarray | Exception | None = None
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
        gate = GateInputs(spec, self.calibration, names, pictures, labels, self.train_images, self.target, graph)
        gate.tail_name = tail_name
        torch_score = torch_scores(scorer, spec)
        gate.ood = OodCheck.load(self.folder)
        described = Described(torch_scores(scorer, spec, described=True))
        raw, maps, per_s = score_batches(described if gate.ood is not None else torch_score, pictures)
        gate.reference = (raw, maps)
        if gate.ood is not None:
            gate.ood_reference = gate.ood.scores(described.descriptors())
        gate.torch_speed = {"torch_images_per_s": per_s, "torch_one_image_ms": one_image_ms(torch_score, pictures[0])}
        if OPENVINO_INT8 in self.kinds and len(names) > len(pictures):  # the int8 gate scores more of them
            try:
                every = [read_image(path) for path in names[:INT8_VALIDATION_IMAGES]]
                gate.int8_reference = score_batches(torch_score, every)[0]
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
    """Write one graph and gate it (fp32: parity with torch; int8: the accuracy gate)."""
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


def _export_int8(fp32_graph: Any, gate: GateInputs) -> dict[str, Any]:
    """Quantise in each int8 scope in turn and keep the first graph that passes the accuracy gate."""
    every = gate.pictures
    fp32_raw = gate.reference[0]
    if isinstance(gate.int8_reference, Exception):
        raise gate.int8_reference
    if gate.int8_reference is not None:  # torch scored more validation images than the fp32 gate's
        every = [read_image(path) for path in gate.validation[:INT8_VALIDATION_IMAGES]]
        fp32_raw = gate.int8_reference
    labels = None if gate.is_ng is None else gate.is_ng[: len(every)]
    path = gate.target / OPENVINO_INT8.file
    attempts: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    for scope in int8.INT8_SCOPES:
        if not int8.scope_differs(fp32_graph, scope):
            continue  # nothing more to keep in fp32: the same graph again
        _save_openvino(int8.quantize_int8(fp32_graph, gate.train_images, gate.size, scope), path)
        exported = ExportedScorer(runner(OPENVINO_INT8, path), gate.size, gate.tail)
        raw, _, per_s = score_batches(exported.score_images, every)
        figures, own = gates.int8_gate(fp32_raw, raw, labels, gate.calibration)
        speed = {"export_images_per_s": per_s, "export_one_image_ms": one_image_ms(exported.score_images, every[0])}
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
    export = _Export(trained.spec, trained.calibration, validation, folder, formats, precision, is_ng, train_images)
    export.trace(trained.model)
    del trained  # the torch scorer (its bank, search index and backbone) goes before the tail and the runtimes load
    gc.collect()
    return export.gate()
