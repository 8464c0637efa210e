"""An exported model run by ONNX Runtime, without torch: the runtime an edge install needs.

``models/export/`` (beside ``models/train/``; written by :mod:`assets.vad.models.export` at the end of training or by
``main.py --mode export``) holds ``model.onnx``, ``manifest.json`` and ``parity.json``. The graph takes
images already resized to the model's input size (uint8 RGB, ``B x H x W x 3``: the resize is
:func:`assets.vad.images.model_pixels`, the same code the torch runtime uses) and does the rest inside:
normalisation, backbone, the model's own scoring, the anomaly map and the raw image score. A model is
used here only when its export passed the parity gate (``manifest.json``: ``accepted``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alo.errors import ModelError
from assets.vad.calibration import Calibration
from assets.vad.images import model_pixels
from assets.vad.models import ModelSpec
from assets.vad.models.saved import read_saved
from assets.vad.runtime import cores

logger = logging.getLogger("assets.exported")

EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("scores", "maps")
EMBEDDING_NAME = "embedding"  # the output of a graph whose model finishes in a numpy tail
# Tails after the graph, by a scorer's ``TAIL`` name: module and class (numpy and faiss, no torch).
TAILS = {"patchcore": ("assets.vad.models.patchcore.tail", "PatchcoreTail")}
RUNTIMES = ("torch", "onnxruntime")


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

    Args:
        folder: ``models/train``.

    Returns:
        The manifest.
    """
    try:
        return json.loads((export_dir(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def exported_usable(folder: Path) -> bool:
    """Whether a model folder holds an export that passed its parity gate and ONNX Runtime is installed.

    Args:
        folder: ``models/train``.

    Returns:
        True when :class:`ExportedModel` can load it.
    """
    manifest = read_manifest(folder)
    if not manifest or not manifest.get("accepted") or not (export_dir(folder) / ONNX_FILE).is_file():
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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


class ExportedScorer:
    """The exported scoring graph: pictures in, raw image scores and raw anomaly maps out."""

    def __init__(self, runner: Any, input_size: tuple[int, int], tail: Any = None) -> None:
        """Wrap a session.

        Args:
            runner: An ONNX Runtime session of the graph.
            input_size: The model's (height, width).
            tail: The model's numpy tail when the graph ends at an embedding (PatchCore's bank search), else None.
        """
        self.runner = runner
        self.input_size = input_size
        self.tail = tail

    def score_pixels(self, pixels: np.ndarray, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and maps of model-size pixels.

        Args:
            pixels: uint8 (B, H, W, 3).
            maps: Return the maps (else None).

        Returns:
            Scores (B,) and maps (B, H, W) or None, float32.
        """
        feed = {INPUT_NAME: np.ascontiguousarray(pixels)}
        if self.tail is not None:
            (embedding,) = self.runner.run([EMBEDDING_NAME], feed)
            return self.tail(embedding, maps)
        scores, found = self.runner.run(list(OUTPUT_NAMES), feed)
        return scores.astype(np.float32, copy=False), found.astype(np.float32, copy=False) if maps else None

    def score_images(self, pictures: Sequence[Image.Image], maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and maps of RGB pictures (resized here exactly as the torch runtime resizes them).

        Args:
            pictures: RGB images of any size.
            maps: Return the maps.

        Returns:
            Scores (B,) and maps (B, H, W) or None.
        """
        return self.score_pixels(np.stack([model_pixels(p, self.input_size) for p in pictures]), maps)


@dataclass(frozen=True)
class ExportedModel:
    """A loaded exported model, shaped as the torch runtime's ``TrainedModel`` for the :class:`Detector`.

    Attributes:
        model: Its scorer.
        spec: The model's description.
        calibration: Threshold, normalisation and class names (of the fp32 model it was proven equal to).
        training: Facts of the train run.
        runtime: ``onnxruntime``.
    """

    model: ExportedScorer
    spec: ModelSpec
    calibration: Calibration
    training: dict[str, Any]
    runtime: str = "onnxruntime"

    @classmethod
    def load(cls, folder: Path) -> ExportedModel:
        """Load the export of a ``models/train`` folder.

        Args:
            folder: ``models/train``.

        Returns:
            The model.

        Raises:
            ModelError: No export that passed its parity gate, or ONNX Runtime missing.
        """
        if not exported_usable(folder):
            manifest = read_manifest(folder)
            reason = "it holds no export" if manifest is None else manifest.get("reason", "its export was refused")
            msg = (
                f"model error: runtime onnxruntime needs an exported model that passed its parity gate in "
                f"{export_dir(folder)} ({reason}; and the onnxruntime package); run 'main.py --mode export' "
                "or set the inference arg runtime to torch"
            )
            raise ModelError(msg)
        saved = read_saved(folder)
        tail_name = (read_manifest(folder) or {}).get("tail")
        try:
            runner = session(str(export_dir(folder) / ONNX_FILE))
            tail = load_tail(tail_name, export_dir(folder)) if tail_name else None
        except Exception as exc:  # onnxruntime raises its own types for a damaged graph
            detail = f"{exc.__class__.__name__}: {str(exc)[:120]}"
            msg = f"model error: the exported model in {export_dir(folder)} cannot be loaded ({detail}); export again"
            raise ModelError(msg) from None
        scorer = ExportedScorer(runner, tuple(saved.spec.input_size), tail)
        return cls(scorer, saved.spec, saved.calibration, saved.training)

    def score_images(self, pictures: Sequence[Image.Image], maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores and maps of pictures (see :meth:`ExportedScorer.score_images`).

        Args:
            pictures: RGB images.
            maps: Return the maps.

        Returns:
            Scores and maps or None.
        """
        return self.model.score_images(pictures, maps)


def load_tail(name: str, folder: Path) -> Any:
    """A model's numpy tail, read from ``models/export``.

    Args:
        name: Its ``TAILS`` name.
        folder: ``models/export``.

    Returns:
        The tail (callable: embedding, maps -> scores, maps).
    """
    import importlib

    module, attribute = TAILS[name]
    return getattr(importlib.import_module(module), attribute).load(folder)


def choose_runtime(folder: Path, runtime: str) -> str:
    """The runtime a setting means for a model folder.

    ``auto`` takes torch where it is installed and the exported model (when its export passed the parity
    gate) where it is not: the slim edge install. The gate's speed comparison is not used to choose: it scores
    batches, and PatchCore's export, as fast as torch there, scored one image with its heatmap at 76 ms against
    torch's 44 ms in the serving benchmark (BENCHMARKS.md).

    Args:
        folder: ``models/train``.
        runtime: ``auto``, ``torch`` or ``onnxruntime``.

    Returns:
        ``torch`` or ``onnxruntime``.
    """
    if runtime != "auto":
        return runtime
    import importlib.util

    if importlib.util.find_spec("torch") is None and exported_usable(folder):
        return "onnxruntime"
    return "torch"
