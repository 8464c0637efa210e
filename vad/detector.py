"""``Detector``: a trained model held in memory, turning images into results. Every consumer scores through it.

    from vad.detector import Detector

    detector = Detector.load("train_artifacts/models")          # or a model.tar.gz
    result = detector.predict("part_0001.png")                  # a path, a PIL image or a numpy array
    print(result.label, result.anomaly_score, result.is_anomalous)
    results = detector.predict(["a.png", "b.png"], heatmaps=True)  # several: a list; pictures on request

Everything expensive (model construction, the batch-norm-folded backbone, the flows' scoring
form, the search index) happens once in :meth:`Detector.load`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, overload

import numpy as np
from PIL import Image

from alo.archive import extract_archive
from alo.errors import DataError, ModelError
from alo.logs import Progress
from vad.calibration import Calibration, Scored
from vad.export.runtime import ExportedModel, choose_runtime
from vad.heatmaps import render
from vad.images import read_image, to_rgb
from vad.models import ModelSpec
from vad.ood.verdict import OodAction, apply_ood

if TYPE_CHECKING:
    from vad.models.factory import TrainedModel

ImageInput = str | Path | Image.Image | np.ndarray
ImageT = TypeVar("ImageT", bound=ImageInput)  # the images of a list, of one kind or several
DEFAULT_BATCH_SIZE = 8
RESULT_COLUMNS = (
    "raw_score",
    "anomaly_score",
    "pred_label",
    "certainty",
    "is_anomalous",
    "ood_score",
    "in_distribution",
)


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        source: The file path, or None for an image given in memory.
        raw_score: The model's own score.
        anomaly_score: The score normalised so that the trained threshold is 0.5, in [0, 1].
        is_anomalous: True when ``anomaly_score`` reaches the inference threshold.
        label: The OK class name or the NG name.
        certainty: ``1 - H2(anomaly_score)``: 1 when sure, 0 at the threshold.
        anomaly_map: The normalised anomaly map at the model's input size (on request).
        heatmap: The picture original | overlay | predicted region at the original size (on request).
        ood_score: Distance to the training images over the out-of-distribution threshold (None: the model has no
            check).
        in_distribution: False when ``ood_score`` reaches 1: not the kind of image the model was trained on.
    """

    source: str | None
    raw_score: float
    anomaly_score: float
    is_anomalous: bool
    label: str
    certainty: float
    anomaly_map: np.ndarray | None = None
    heatmap: Image.Image | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None

    def result_row(self) -> dict[str, float | str | bool | None]:
        """The image's result columns as ``output.csv``, the HTTP API and the MLflow model answer them.

        Returns:
            ``{column: value}`` for each of :data:`RESULT_COLUMNS`, in that order.
        """
        return {
            "raw_score": self.raw_score,
            "anomaly_score": self.anomaly_score,
            "pred_label": self.label,
            "certainty": self.certainty,
            "is_anomalous": self.is_anomalous,
            "ood_score": self.ood_score,
            "in_distribution": self.in_distribution,
        }


@dataclass(frozen=True)
class PredictionBatch:
    """One scored batch of :meth:`Detector.iter_predict`.

    Attributes:
        positions: Positions of the batch's images in the input sequence.
        scored: The output columns and the is-anomalous array.
        raw_maps: Raw anomaly maps (B, H, W) when asked for (pixel metrics), else None.
        predictions: One :class:`Prediction` per image.
    """

    positions: np.ndarray
    scored: Scored
    raw_maps: np.ndarray | None
    predictions: list[Prediction]


def _as_image(item: ImageInput) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or a numpy array (H x W gray, H x W x 3 RGB, H x W x 4 RGBA)."""
    if isinstance(item, (str, Path)):
        return read_image(item)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)) or min(item.shape[:2]) < 1:
            msg = f"data error: an image array must be H x W, H x W x 3 or H x W x 4, got shape {item.shape}"
            raise DataError(msg)
        array = item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
        if array.dtype != np.uint8:
            array = np.clip(np.nan_to_num(array.astype(np.float64)), 0, 255).astype(np.uint8)
        return to_rgb(Image.fromarray(np.ascontiguousarray(array)))
    msg = f"data error: cannot score a {type(item).__name__}; give a file path, a PIL image or a numpy array"
    raise DataError(msg)


class Detector:
    """A trained model and its calibration, ready to score."""

    def __init__(
        self,
        trained: TrainedModel | ExportedModel,
        inference_threshold: float | None = None,
        ood_action: OodAction = "flag",
    ) -> None:
        self.trained = trained
        calibration = trained.calibration
        if inference_threshold is not None:
            calibration = calibration.with_inference_threshold(inference_threshold)
        self.calibration: Calibration = calibration
        self.ood_action: OodAction = ood_action
        self._workdir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        accelerator: str = "cpu",
        inference_threshold: float | None = None,
        runtime: str = "auto",
        ood_action: OodAction = "flag",
    ) -> Detector:
        """Load a trained model once, with everything scoring needs prepared.

        Args:
            path: A ``train_artifacts/models`` folder (or its ``train`` subfolder), or a ``model.tar.gz``.
            accelerator: ``cpu``, ``gpu`` or ``auto`` (see :func:`vad.runtime.resolve_device`).
            inference_threshold: Normalised score from which an image is NG (default 0.5, the trained threshold).
            runtime: ``torch``, ``openvino`` or ``onnxruntime`` (an exported model, no torch imported) or ``auto``
                (see :func:`vad.export.runtime.choose_runtime`).
            ood_action: What an out-of-distribution image becomes: ``flag`` or ``reject`` (:mod:`vad.ood.verdict`).

        Returns:
            The detector.

        Raises:
            ModelError: Nothing loadable at ``path``.
        """
        path = Path(path)
        workdir = None
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            workdir = tempfile.TemporaryDirectory(prefix="vad-model-")
            path = extract_archive(path, Path(workdir.name) / "models")
        folder = path / "train" if (path / "train").is_dir() else path
        if not folder.is_dir():
            msg = f"model error: {path} is neither a models folder nor a model.tar.gz; point it at a train run's model"
            raise ModelError(msg)
        chosen = choose_runtime(folder, runtime) if accelerator == "cpu" else "torch"
        if chosen != "torch":
            trained: TrainedModel | ExportedModel = ExportedModel.load(folder, chosen)
        else:
            from vad.models.factory import load  # torch: imported only by the torch runtime
            from vad.runtime import resolve_device, use_all_cores

            device = resolve_device(accelerator)
            use_all_cores()
            trained = load(folder, device)
        detector = cls(trained, inference_threshold, ood_action)
        detector._workdir = workdir  # the extracted files live as long as the detector
        return detector

    @property
    def spec(self) -> ModelSpec:
        """The model's description (name, backbone, layers, input size)."""
        return self.trained.spec

    @property
    def model_name(self) -> str:
        """The registered model name."""
        return self.trained.spec.model_name

    @property
    def has_ood_check(self) -> bool:
        """Whether the model checks that images are the kind it was trained on (models trained since it exists)."""
        return self.trained.ood is not None

    def with_threshold(self, inference_threshold: float | None, ood_action: OodAction | None = None) -> Detector:
        """A detector sharing this one's model that decides NG at another normalised score (or OOD otherwise).

        Args:
            inference_threshold: Normalised score in [0, 1] (None: this detector's).
            ood_action: ``flag`` or ``reject`` (None: this detector's).

        Returns:
            The detector.
        """
        threshold = self.calibration.inference_threshold if inference_threshold is None else inference_threshold
        return Detector(self.trained, threshold, ood_action or self.ood_action)

    @overload
    def predict(self, images: ImageInput, maps: bool = False, heatmaps: bool = False) -> Prediction: ...

    @overload
    def predict(
        self, images: list[ImageT] | tuple[ImageT, ...], maps: bool = False, heatmaps: bool = False
    ) -> list[Prediction]: ...

    def predict(
        self, images: ImageInput | list[ImageT] | tuple[ImageT, ...], maps: bool = False, heatmaps: bool = False
    ) -> Prediction | list[Prediction]:
        """Score one image or several.

        Args:
            images: A file path, PIL image or numpy array (RGB or gray), or a list of them.
            maps: Include the normalised anomaly map of each image.
            heatmaps: Include the heatmap picture of each image.

        Returns:
            One :class:`Prediction` for one image, a list for a list.
        """
        items: list[ImageInput] = list(images) if isinstance(images, list | tuple) else [images]
        results = [p for batch in self.iter_predict(items, maps=maps, heatmaps=heatmaps) for p in batch.predictions]
        return results if isinstance(images, list | tuple) else results[0]

    def iter_predict(
        self,
        images: Sequence[ImageInput],
        batch_size: int = DEFAULT_BATCH_SIZE,
        maps: bool = False,
        heatmaps: bool = False,
        progress_logger: logging.Logger | None = None,
        raw_maps: bool = False,
    ) -> Iterator[PredictionBatch]:
        """Score images batch by batch, in input order; only the current batch is held in memory.

        Args:
            images: File paths, PIL images or numpy arrays.
            batch_size: Images per batch.
            maps: Include normalised anomaly maps in the predictions.
            heatmaps: Include heatmap pictures in the predictions.
            progress_logger: Logs progress when given.
            raw_maps: Keep the raw maps in each batch (without any kind of map, PatchCore searches only the
                patches that can hold each image's peak exactly).

        Yields:
            One :class:`PredictionBatch` per batch.
        """
        progress = Progress(progress_logger, "inference", len(images)) if progress_logger else None
        for start in range(0, len(images), batch_size):
            items = images[start : start + batch_size]
            pictures = [_as_image(item) for item in items]
            raw_scores, found, descriptors = self.trained.score_described(pictures, maps or heatmaps or raw_maps)
            check = self.trained.ood
            ood = check.scores(descriptors) if check is not None and descriptors is not None else None
            scored = apply_ood(self.calibration.apply(raw_scores), ood, self.ood_action)
            columns = scored.columns
            predictions = []
            for i, (item, picture) in enumerate(zip(items, pictures, strict=True)):
                normalized = self.calibration.normalize(found[i]) if found is not None and (maps or heatmaps) else None
                predictions.append(
                    Prediction(
                        source=str(item) if isinstance(item, (str, Path)) else None,
                        raw_score=float(columns["raw_score"][i]),
                        anomaly_score=float(columns["anomaly_score"][i]),
                        is_anomalous=bool(scored.is_anomalous[i]),
                        label=str(columns["pred_label"][i]),
                        certainty=float(columns["certainty"][i]),
                        anomaly_map=normalized if maps else None,
                        heatmap=render(picture, normalized, self.calibration.inference_threshold)
                        if heatmaps and normalized is not None
                        else None,
                        ood_score=float(ood[i]) if ood is not None else None,
                        in_distribution=bool(columns["in_distribution"][i]) if ood is not None else None,
                    )
                )
            if progress is not None:
                progress.update(len(items))
            kept = found if raw_maps else None
            yield PredictionBatch(np.arange(start, start + len(items)), scored, kept, predictions)


RESIDENT_MODELS = 2  # detectors a long-running process keeps (the loop's current model and one other)
_resident: OrderedDict[tuple, Detector] = OrderedDict()


def _fingerprint(folder: Path, prefix: str = "") -> tuple:
    """What identifies a saved model's files: every file's name, size and modification time (one stat a file)."""
    found: list[tuple] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir():
                found.extend(_fingerprint(Path(entry.path), f"{prefix}{entry.name}/"))
            elif entry.is_file():
                stat = entry.stat()
                found.append((f"{prefix}{entry.name}", stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def resident_detector(
    path: Path,
    accelerator: str = "cpu",
    inference_threshold: float | None = None,
    runtime: str = "auto",
    ood_action: OodAction = "flag",
) -> Detector:
    """A detector kept in memory between runs of a long-running process (the edge loop, the HTTP service).

    The same model folder with unchanged files is loaded once; a retrained or replaced model (other
    files) is loaded again. At most ``RESIDENT_MODELS`` are kept, the least recently used dropped.

    Args:
        path: A ``train_artifacts/models`` folder or its ``train`` subfolder.
        accelerator: ``cpu``, ``gpu`` or ``auto``.
        inference_threshold: Normalised score from which an image is NG.
        runtime: ``torch``, ``openvino``, ``onnxruntime`` or ``auto`` (see :meth:`Detector.load`).
        ood_action: ``flag`` or ``reject`` (see :mod:`vad.ood.verdict`).

    Returns:
        The detector, with this threshold and action.
    """
    folder = path / "train" if (path / "train").is_dir() else path
    key = (str(folder.resolve()), accelerator, runtime, _fingerprint(folder))
    if key in _resident:
        _resident.move_to_end(key)
    else:
        _resident[key] = Detector.load(folder, accelerator, runtime=runtime)
        while len(_resident) > RESIDENT_MODELS:
            _resident.popitem(last=False)
    detector = _resident[key]
    if inference_threshold is None and ood_action == detector.ood_action:
        return detector
    return detector.with_threshold(inference_threshold, ood_action)
