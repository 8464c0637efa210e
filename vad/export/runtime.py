"""Exported models run by OpenVINO or ONNX Runtime, without torch: the runtimes an edge install needs.

``models/export/`` (beside ``models/train/``; written by :mod:`vad.export.writer` at the end of training or by
``main.py --mode export``) holds ``manifest.json``, ``parity.json`` and one graph per export that passed its gate:

- ``onnx``: ``model.onnx`` (fp32), run by ONNX Runtime;
- ``openvino``: ``model.xml`` + ``model.bin`` (fp32 weights, run at f32 precision), run by OpenVINO;
- ``openvino_int8``: ``model_int8.xml`` + ``.bin`` (NNCF post-training quantisation), kept only when it follows
  the fp32 model closely enough to share its calibration (``calibration.json``). Graphs exported before that gate
  carry their own ``calibration_int8.json``, which is still read.

Each graph takes images already resized to the model's input size (uint8 RGB, ``B x H x W x 3``: the resize is
:func:`vad.images.model_pixels`, the same code the torch runtime uses) and does the rest inside:
normalisation, backbone, the model's own scoring, the anomaly map and the raw image score (or, for PatchCore,
the patch embeddings its numpy tail searches). A graph is used only when its export passed its gate.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from alo.errors import ModelError
from vad.calibration import Calibration
from vad.images import model_pixels
from vad.models import ModelSpec, entry
from vad.models.saved import read_saved
from vad.ood import OodCheck
from vad.runtime import cores

logger = logging.getLogger("assets.exported")

EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"
INT8_CALIBRATION_FILE = "calibration_int8.json"  # written by exports before the int8 fidelity gate
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("scores", "maps")
EMBEDDING_NAME = "embedding"  # the output of a graph whose model finishes in a numpy tail
DESCRIPTOR_NAME = "descriptor"  # the out-of-distribution descriptor (graphs exported since the check exists)


@dataclass(frozen=True)
class ExportKind:
    """One kind of exported graph.

    Attributes:
        name: Its key in the manifest and in ``parity.json``.
        file: The graph file in ``models/export``.
        runtime: The runtime that runs it (the inference arg ``runtime``).
        package: The Python package that runtime needs.
        precision: ``fp32`` or ``int8``.
    """

    name: str
    file: str
    runtime: str
    package: str
    precision: str


ONNX = ExportKind("onnx", ONNX_FILE, "onnxruntime", "onnxruntime", "fp32")
OPENVINO = ExportKind("openvino", "model.xml", "openvino", "openvino", "fp32")
OPENVINO_INT8 = ExportKind("openvino_int8", "model_int8.xml", "openvino", "openvino", "int8")
KINDS = {kind.name: kind for kind in (ONNX, OPENVINO, OPENVINO_INT8)}
ExportFormat = Literal["openvino", "onnx"]
FORMATS: tuple[ExportFormat, ...] = ("openvino", "onnx")  # the plan's ``export`` values
# OpenVINO for Intel edge boxes; ONNX for the smallest edge install
DEFAULT_FORMATS: tuple[ExportFormat, ...] = ("openvino", "onnx")
# The graphs a runtime may run, the preferred first (int8 only exists when it passed its fidelity gate).
RUNTIME_KINDS = {"openvino": (OPENVINO_INT8, OPENVINO), "onnxruntime": (ONNX,)}
AUTO_ORDER = ("openvino", "onnxruntime")  # the exported runtimes ``auto`` tries, in this order


def export_dir(folder: Path) -> Path:
    """Where the export of a ``models/train`` folder lives: ``models/export``.

    Args:
        folder: ``models/train``.

    Returns:
        The folder.
    """
    return folder.parent / EXPORT_DIR


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The export manifest of a ``models/train`` folder, or None when it has none (or an unreadable one).

    Manifests written before there were several exports (one ONNX graph, ``format`` and ``accepted`` at the
    top) read as one ``onnx`` export.

    Args:
        folder: ``models/train``.

    Returns:
        The manifest, with ``exports``: kind name -> its entry (``accepted``, ``reason`` when refused).
    """
    try:
        manifest = json.loads((export_dir(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if "exports" not in manifest and manifest.get("format") == "onnx":  # the first layout: one ONNX graph
        entry = {"file": ONNX_FILE, "precision": "fp32", "accepted": bool(manifest.get("accepted"))}
        if "reason" in manifest:
            entry["reason"] = manifest["reason"]
        manifest["exports"] = {ONNX.name: entry}
    manifest.setdefault("exports", {})
    return manifest


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def usable_kind(folder: Path, runtime: str, precision: str | None = None) -> ExportKind | None:
    """The graph a runtime would run for a model folder: passed its gate, on disk, its package installed.

    Args:
        folder: ``models/train``.
        runtime: ``openvino`` or ``onnxruntime``.
        precision: Only graphs of this precision (None: the runtime's preferred one that passed).

    Returns:
        The kind, or None.
    """
    manifest = read_manifest(folder)
    if not manifest:
        return None
    for kind in RUNTIME_KINDS.get(runtime, ()):
        if precision is not None and kind.precision != precision:
            continue
        entry = manifest["exports"].get(kind.name) or {}
        if entry.get("accepted") and (export_dir(folder) / kind.file).is_file() and _installed(kind.package):
            return kind
    return None


def session(model: bytes | str, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for a graph, its threads not spinning between calls.

    Args:
        model: The ONNX graph (bytes or a file path).
        threads: Intra-op threads (default: every core this process may use).

    Returns:
        The ``onnxruntime.InferenceSession``.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def decline_telemetry() -> None:
    """Decline the usage telemetry that OpenVINO's converter and NNCF send unless a consent file says no.

    Without a consent file ``import openvino`` counts the run in ``~/intel``, and a conversion forks a process that
    calls a web service: a factory machine must not reach out, and the forked child would outlive a training run.
    """
    try:
        from openvino_telemetry.main import Telemetry
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # the tools fall back to their own no-op stub
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    created = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    if created is not None:
        created.consent = False


def import_openvino() -> Any:
    """Import OpenVINO with its telemetry declined (see :func:`decline_telemetry`).

    Returns:
        The ``openvino`` module.
    """
    decline_telemetry()
    import openvino

    return openvino


class OpenvinoRunner:
    """An OpenVINO graph compiled for the CPU, called as an ONNX Runtime session is (``run(names, feed)``).

    Compiled at f32 inference precision: OpenVINO would otherwise run an fp32 graph in bf16 on CPUs that have
    it (this machine's does), and its scores would no longer be the ones the parity gate proved. In an int8
    graph the quantised operations still run in int8. One infer request, behind a lock (OpenVINO's requests
    are not shared between threads).
    """

    def __init__(self, model: Any, threads: int | None = None) -> None:
        """Compile a graph.

        Args:
            model: An ``openvino.Model`` or the path of its ``.xml``.
            threads: Inference threads (default: every core this process may use).
        """
        openvino = import_openvino()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads or cores(),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self.compiled = openvino.Core().compile_model(
            model if not isinstance(model, Path) else str(model), "CPU", config
        )
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()

    def run(self, names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph.

        Args:
            names: Output names.
            feed: Input name -> array.

        Returns:
            The outputs (copies: the request's buffers are reused by the next call).
        """
        with self.lock:
            self.request.infer(feed)
            return [np.array(self.request.get_tensor(name).data) for name in names]


def runner(kind: ExportKind, path: Path | bytes | Any, threads: int | None = None) -> Any:
    """The runtime's runner for a graph of a kind.

    Args:
        kind: The export kind.
        path: The graph (a file, ONNX bytes, or an ``openvino.Model``).
        threads: Threads (default: every core).

    Returns:
        An object with ``run(names, feed)``.
    """
    if kind.runtime == "openvino":
        return OpenvinoRunner(path, threads)
    return session(path if isinstance(path, bytes) else str(path), threads)


class ExportedScorer:
    """The exported scoring graph: pictures in, raw image scores and raw anomaly maps out."""

    def __init__(self, runner: Any, input_size: tuple[int, int], tail: Any = None, described: bool = True) -> None:
        """Wrap a session.

        Args:
            runner: An ONNX Runtime session of the graph.
            input_size: The model's (height, width).
            tail: The model's numpy tail when the graph ends at an embedding (PatchCore's bank search), else None.
            described: Whether the graph outputs the out-of-distribution descriptor (exports before it did not).
        """
        self.runner = runner
        self.input_size = input_size
        self.tail = tail
        self.described = described

    def score_pixels(self, pixels: np.ndarray, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and maps of model-size pixels.

        Args:
            pixels: uint8 (B, H, W, 3).
            maps: Return the maps (else None).

        Returns:
            Scores (B,) and maps (B, H, W) or None, float32.
        """
        scores, found, _ = self.score_described_pixels(pixels, maps, describe=False)
        return scores, found

    def score_described_pixels(
        self, pixels: np.ndarray, maps: bool = True, describe: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Raw scores, maps and out-of-distribution descriptors of model-size pixels, in one run of the graph.

        Args:
            pixels: uint8 (B, H, W, 3).
            maps: Return the maps (else None).
            describe: Return the descriptors (None also where the graph has none).

        Returns:
            Scores (B,), maps (B, H, W) or None, descriptors (B, D) or None.
        """
        feed = {INPUT_NAME: np.ascontiguousarray(pixels)}
        extra = [DESCRIPTOR_NAME] if describe and self.described else []
        if self.tail is not None:
            embedding, *described = self.runner.run([EMBEDDING_NAME, *extra], feed)
            scores, found = self.tail(embedding, maps)
        else:
            scores, found, *described = self.runner.run([*OUTPUT_NAMES, *extra], feed)
            scores = scores.astype(np.float32, copy=False)
            found = found.astype(np.float32, copy=False) if maps else None
        return scores, found, described[0].astype(np.float32, copy=False) if described else None

    def score_images(self, pictures: Sequence[Image.Image], maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and maps of RGB pictures (resized here exactly as the torch runtime resizes them).

        Args:
            pictures: RGB images of any size.
            maps: Return the maps.

        Returns:
            Scores (B,) and maps (B, H, W) or None.
        """
        return self.score_pixels(self._pixels(pictures), maps)

    def score_described(
        self, pictures: Sequence[Image.Image], maps: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`score_images` and the pictures' out-of-distribution descriptors (None where the graph has none).

        Args:
            pictures: RGB images of any size.
            maps: Return the maps.

        Returns:
            Scores (B,), maps (B, H, W) or None, descriptors (B, D) or None.
        """
        return self.score_described_pixels(self._pixels(pictures), maps)

    def _pixels(self, pictures: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([model_pixels(p, self.input_size) for p in pictures])


@dataclass(frozen=True)
class ExportedModel:
    """A loaded exported model, shaped as the torch runtime's ``TrainedModel`` for the :class:`Detector`.

    Attributes:
        model: Its scorer.
        spec: The model's description.
        calibration: Threshold, normalisation and class names: the fp32 model's (which the fp32 graphs were
            proven equal to), or for int8 the one re-derived on the int8 model's validation scores.
        training: Facts of the train run.
        runtime: ``openvino`` or ``onnxruntime``.
        precision: ``fp32`` or ``int8``.
        ood: The model's out-of-distribution check, or None (saved without one, or a graph exported before graphs
            gave the descriptor).
    """

    model: ExportedScorer
    spec: ModelSpec
    calibration: Calibration
    training: dict[str, Any]
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    ood: OodCheck | None = None

    @property
    def label(self) -> str:
        """The runtime as the log names it (``openvino int8``, ``onnxruntime``)."""
        return self.runtime if self.precision == "fp32" else f"{self.runtime} {self.precision}"

    @classmethod
    def load(cls, folder: Path, runtime: str = "onnxruntime", precision: str | None = None) -> ExportedModel:
        """Load the export of a ``models/train`` folder that a runtime runs.

        Args:
            folder: ``models/train``.
            runtime: ``openvino`` (its int8 graph when that passed its gate, else fp32) or ``onnxruntime``.
            precision: ``fp32`` or ``int8`` to ask for one graph (None: the runtime's preferred one).

        Returns:
            The model.

        Raises:
            ModelError: No export for that runtime passed its gate, or the runtime's package is missing.
        """
        kind = usable_kind(folder, runtime, precision)
        if kind is None:
            manifest = read_manifest(folder)
            candidates = [k for k in RUNTIME_KINDS.get(runtime, ()) if precision in (None, k.precision)]
            entries = [(manifest or {}).get("exports", {}).get(k.name) for k in candidates]
            reasons = [e["reason"] for e in entries if e and e.get("reason")]
            if manifest is None or not any(entries):
                reason = f"it holds no {runtime} export" + (f" in {precision}" if precision else "")
            elif reasons and not any(e and e.get("accepted") for e in entries):
                reason = reasons[0]
            else:
                reason = f"the {RUNTIME_KINDS.get(runtime, (ONNX,))[-1].package} package is not installed"
            msg = (
                f"model error: runtime {runtime} needs an exported model that passed its parity gate in "
                f"{export_dir(folder)} ({reason}); run 'main.py --mode export' (train arg export lists the "
                "formats) or set the inference arg runtime to torch"
            )
            raise ModelError(msg)
        saved = read_saved(folder)
        manifest = read_manifest(folder) or {}
        tail_name = manifest.get("tail")
        target = export_dir(folder)
        try:
            calibration = saved.calibration
            own = target / INT8_CALIBRATION_FILE  # an int8 graph exported before the fidelity gate
            if kind.precision == "int8" and own.is_file():
                calibration = Calibration.from_dict(json.loads(own.read_text(encoding="utf-8")))
            graph = runner(kind, target / kind.file)
            tail = load_tail(tail_name, target) if tail_name else None
            described = DESCRIPTOR_NAME in manifest.get("outputs", [])
            ood = OodCheck.load(folder) if described else None
        except Exception as exc:  # the runtimes raise their own types for a damaged graph
            detail = f"{exc.__class__.__name__}: {str(exc)[:120]}"
            msg = f"model error: the exported model in {target} cannot be loaded ({detail}); export again"
            raise ModelError(msg) from None
        scorer = ExportedScorer(graph, saved.spec.input_size, tail, described)
        return cls(scorer, saved.spec, calibration, saved.training, kind.runtime, kind.precision, ood)

    def score_images(self, pictures: Sequence[Image.Image], maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and maps of pictures (see :meth:`ExportedScorer.score_images`).

        Args:
            pictures: RGB images.
            maps: Return the maps.

        Returns:
            Scores and maps or None.
        """
        return self.model.score_images(pictures, maps)

    def score_described(
        self, pictures: Sequence[Image.Image], maps: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Raw scores, maps and, where the model has a check, descriptors (see :meth:`ExportedScorer.score_described`).

        Args:
            pictures: RGB images.
            maps: Return the maps.

        Returns:
            Scores, maps or None, descriptors or None.
        """
        if self.ood is None:
            return (*self.model.score_images(pictures, maps), None)
        return self.model.score_described(pictures, maps)


def load_tail(name: str, folder: Path) -> Any:
    """A model's numpy tail, read from ``models/export``.

    Args:
        name: The model's name (its registry entry names the tail class).
        folder: ``models/export``.

    Returns:
        The tail (callable: embedding, maps -> scores, maps).
    """
    return entry(name).tail_class().load(folder)


def export_beats_torch(folder: Path, runtime: str) -> bool:
    """Whether the gate measured a runtime's export faster than torch, for one image with its map and in batches.

    Args:
        folder: ``models/train``.
        runtime: ``openvino`` or ``onnxruntime``.

    Returns:
        True when both of its speed figures in ``parity.json`` beat torch's.
    """
    kind = usable_kind(folder, runtime)
    if kind is None:
        return False
    try:
        figures = json.loads((export_dir(folder) / PARITY_FILE).read_text(encoding="utf-8")).get(kind.name, {})
        return bool(
            figures["export_one_image_ms"] < figures["torch_one_image_ms"]
            and figures["export_images_per_s"] > figures["torch_images_per_s"]
        )
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return False


def choose_runtime(folder: Path, runtime: str) -> str:
    """The runtime a setting means for a model folder.

    ``auto`` takes an exported model that passed its gate (OpenVINO before ONNX Runtime) where torch is not
    installed (the slim edge install), and where it is, only when the gate measured that export faster than
    torch both for one image with its map and in batches (``parity.json``). Batch speed alone misled: PatchCore's
    ONNX export, as fast as torch in batches, scored one image with its heatmap at 76 ms against torch's 44 ms
    in the serving benchmark (BENCHMARKS.md). Otherwise torch.

    Args:
        folder: ``models/train``.
        runtime: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``.

    Returns:
        ``torch``, ``openvino`` or ``onnxruntime``.
    """
    if runtime != "auto":
        return runtime
    exported = [name for name in AUTO_ORDER if usable_kind(folder, name) is not None]
    if not _installed("torch"):
        return exported[0] if exported else "torch"
    return next((name for name in exported if export_beats_torch(folder, name)), "torch")
