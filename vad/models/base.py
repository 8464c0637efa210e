"""What every registered model provides, and the data it is fitted on.

A model class subclasses anomalib's torch model (its state dict stays anomalib's) and
:class:`VadModel`, which fixes the interface the steps and the :class:`~vad.detector.Detector`
use: ``build``, ``fit``, ``prepare`` and ``score``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import torch
from PIL import Image

from vad.models.folding import fold_batch_norms
from vad.models.maps import as_arrays
from vad.models.spec import ModelSpec
from vad.models.weight_cache import WeightKeyedCache
from vad.ood.descriptor import descriptor_tap, global_descriptor

if TYPE_CHECKING:
    from vad.supervision import LinearHead


@dataclass(frozen=True, init=False)
class FitData:
    """Images a model is fitted or validated on.

    Attributes:
        files: Image files.
        is_ng: True where the image is NG (all False for training images: the default).
    """

    files: list[str]
    is_ng: np.ndarray

    def __init__(self, files: list[str], is_ng: np.ndarray | None = None) -> None:
        labels = np.zeros(len(files), dtype=bool) if is_ng is None else is_ng
        if len(labels) != len(files):
            msg = f"is_ng has {len(labels)} values for {len(files)} files"
            raise ValueError(msg)
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "is_ng", labels)


@dataclass(frozen=True)
class FitOptions:
    """How to fit.

    Attributes:
        batch_size: Images per batch.
        max_epochs: Epochs at most (models trained by gradient descent).
        seed: Seed of every random choice.
        monitor: Validation metric that selects the epoch (``image_AUROC``, ``image_F1Score``, ``loss``).
        augment: Augmentation applied to training images, or None.
        on_epoch: Called after each epoch with (epoch, validation metrics) by models trained in epochs; it may
            raise to stop the fit (the tuner prunes trials so).
    """

    batch_size: int
    max_epochs: int
    seed: int
    monitor: str
    augment: Callable[[Image.Image], Image.Image] | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None


def training_passes(train: FitData, spec: ModelSpec, options: FitOptions) -> tuple[Iterator[torch.Tensor], int]:
    """The training images of a one-pass model (PatchCore, PaDiM): once as they are, once more augmented.

    Args:
        train: OK training images.
        spec: The model's description (input size, normalisation).
        options: Batch size and augmentation.

    Returns:
        The batches and the number of images they hold.
    """
    from vad.batches import loader

    passes = [loader(train.files, spec, options.batch_size)]
    if options.augment is not None:
        passes.append(loader(train.files, spec, options.batch_size, augment=options.augment))
    return (images for batch_loader in passes for images, _ in batch_loader), len(train.files) * len(passes)


class VadModel(torch.nn.Module):
    """The interface of a registered model (mixed into a subclass of anomalib's torch model)."""

    spec: ModelSpec
    weights_source: str

    @classmethod
    def build(cls, spec: ModelSpec, pretrained: bool = True, weights_path: str | Path | None = None) -> Self:
        """Create the model a spec describes, in eval mode, with ImageNet (or the user's) backbone weights.

        The same for every model: :meth:`from_spec` builds the module, then the weights go into
        :meth:`frozen_backbone`.

        Args:
            spec: The model description.
            pretrained: Load ImageNet weights into the backbone (False when a trained state follows).
            weights_path: A user weights file for the backbone.

        Returns:
            The model.
        """
        from vad.backbones import load_pretrained_weights  # timm: only where a model is built, never to score

        model = cls.from_spec(spec)
        model.spec = spec
        model.folded_backbone = WeightKeyedCache()
        model.weights_source = "random initialisation (pretrained: false)"
        if pretrained:
            model.weights_source = load_pretrained_weights(model.frozen_backbone(), spec.backbone, weights_path)
        return model.eval()

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Self:
        """Construct the module a spec describes, its backbone randomly initialised (the hook :meth:`build` calls).

        Args:
            spec: The model description (``spec.params`` holds the model's own parameters).

        Returns:
            The model.
        """
        raise NotImplementedError

    def fit(self, train: FitData, valid: FitData, options: FitOptions, logger: logging.Logger) -> dict[str, Any]:
        """Fit on normal images.

        Args:
            train: OK training images.
            valid: Validation images (models that select epochs use them).
            options: Batch size, epochs, seed, monitor, augmentation.
            logger: Progress logger.

        Returns:
            Fit metrics saved with the model (may be empty; FastFlow adds ``history``, one entry per epoch).
        """
        raise NotImplementedError

    def update(self, new: FitData, options: FitOptions, logger: logging.Logger) -> bool:
        """Add OK images to the fitted model without fitting it again from scratch, where the model allows it.

        A hook: the default cannot (the caller then fits the model again on every image). A model that can
        (PatchCore merges the new images' patches into its memory bank through the same coreset; PaDiM updates
        its Gaussians) returns True.

        Args:
            new: OK images the model has not seen.
            options: Batch size, seed, augmentation (as the first fit had them).
            logger: Progress logger.

        Returns:
            True when the model was updated, False when it cannot be.
        """
        del new, options, logger
        return False

    folded_backbone: WeightKeyedCache[torch.nn.Module]

    def frozen_backbone(self) -> torch.nn.Module:
        """The model's frozen feature network (timm's features-only model), where ImageNet weights go.

        A hook: the default is ``feature_extractor``, or the network inside it where it is anomalib's
        ``TimmFeatureExtractor`` (which holds it as ``feature_extractor.feature_extractor``).

        Returns:
            The module.
        """
        extractor = self.get_submodule("feature_extractor")
        inner = getattr(extractor, "feature_extractor", None)
        return inner if isinstance(inner, torch.nn.Module) else extractor

    def scoring_backbone(self) -> torch.nn.Module:
        """The batch-norm-folded copy of :meth:`frozen_backbone` the model scores with (saved as a graph).

        Returns:
            The backbone, in eval mode.
        """
        backbone = self.frozen_backbone()
        return self.folded_backbone.get(
            backbone, lambda: fold_batch_norms(backbone, example_image(self.spec.input_size, self.device))
        )

    def supports_head(self) -> bool:
        """Whether the model scores with the supervised mode's head (:mod:`vad.supervision`).

        A model that does implements :meth:`image_descriptors` and :meth:`set_head`, and adds the head's
        offset to its raw image score in every scoring path (model, scorer, exported tail).

        Returns:
            False here.
        """
        return False

    def image_descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """One descriptor per image, what the supervised head learns from.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            (B, F) descriptors.
        """
        msg = f"{type(self).__name__} has no supervised head"
        raise NotImplementedError(msg)

    def training_descriptors(self) -> np.ndarray | None:
        """The descriptors of the images the last fit learnt from, where the fit kept them (saves a pass).

        Returns:
            (N, F) descriptors, or None: the caller computes them with :meth:`image_descriptors`.
        """
        return None

    def set_head(self, head: LinearHead | None) -> None:
        """Score with this head from now on (saved with the model), or without one.

        Args:
            head: The head, or None.
        """
        msg = f"{type(self).__name__} has no supervised head"
        raise NotImplementedError(msg)

    def prepare(self) -> None:
        """Build everything scoring needs (folded backbone, search index, flow scoring form) now, once.

        Called when a trained model is loaded, so that no scoring call pays for it: the default scores one
        example image, which builds them all.
        """
        self.eval()
        self.score(example_image(self.spec.input_size, self.device))

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.parameters()).device

    def scores_and_maps(self, images: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image scores and, on request, anomaly maps of a batch (a hook: a model may skip the maps' work).

        Args:
            images: Normalised images (B, 3, H, W), on the model's device.
            maps: Whether the maps are wanted.

        Returns:
            Scores (B,) and maps (B, 1, H, W) or None.
        """
        output = self(images)
        return output.pred_score, output.anomaly_map if maps else None

    def describe(self, images: torch.Tensor) -> np.ndarray:
        """Each image's out-of-distribution descriptor (:mod:`vad.ood.descriptor`): a pass of the scoring backbone.

        Args:
            images: Normalised images (B, 3, H, W), on any device.

        Returns:
            (B, D) float32 descriptors.
        """
        self.eval()
        with torch.inference_mode():
            features = list(self.scoring_backbone()(images.to(self.device)))
            return global_descriptor(features).float().cpu().numpy()

    def score_described(
        self, images: torch.Tensor, maps: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """:meth:`score` and the images' descriptors, tapped from the same backbone pass (else a second pass).

        Args:
            images: Normalised images (B, 3, H, W).
            maps: Whether the maps are wanted.

        Returns:
            Scores (B,), maps (B, H, W) or None, and descriptors (B, D).
        """
        with descriptor_tap() as tapped:
            scores, found = self.score(images, maps)
        if len(tapped) == 1 and len(tapped[0]) == len(images):
            return scores, found, tapped[0].float().cpu().numpy()
        return scores, found, self.describe(images)

    FIT_DESCRIBES_TRAINING: ClassVar[bool] = False  # whether fit and update read each training image's features once

    def fit_pass_descriptors(self, tapped: list[torch.Tensor], images: int) -> np.ndarray | None:
        """The out-of-distribution descriptors of the training images, from a tap open while fitting (a hook).

        A model whose fit reads each training image's features once (:attr:`FIT_DESCRIBES_TRAINING`: PatchCore,
        PaDiM) gives them, the augmented pass's too: images the model learnt. Others (trained in epochs, their
        validation scored between them) give None, and the caller describes the training images in a pass of its
        own.

        Args:
            tapped: What the tap collected during the fit.
            images: How many images the fit read (augmented ones counted).

        Returns:
            (N, D) descriptors, or None.
        """
        if not self.FIT_DESCRIBES_TRAINING or not tapped:
            return None
        found = torch.cat(tapped).float().cpu().numpy()
        return found if len(found) == images else None

    def score(self, images: torch.Tensor, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw image scores and raw anomaly maps of a batch.

        Args:
            images: Normalised images (B, 3, H, W), on any device.
            maps: Whether the maps are wanted (else None).

        Returns:
            Scores (B,) and maps (B, H, W) or None, float32 arrays.
        """
        self.eval()
        with torch.inference_mode():
            return as_arrays(*self.scores_and_maps(images.to(self.device), maps))


def example_image(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A fixed random normalised image (1, 3, H, W): what :meth:`VadModel.prepare` warms the model up with.

    Args:
        size: (height, width).
        device: Where to put it.

    Returns:
        The image.
    """
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
