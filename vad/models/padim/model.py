"""PaDiM on anomalib's ``PadimModel``, with offline weights, a folded backbone and a streamed Gaussian fit.

anomalib keeps every training embedding in memory and fits the Gaussians afterwards (all images x
channels x patches floats); here the per-patch sums and outer products are accumulated batch by
batch in float64, so memory follows the model (patches x channels^2), not the number of images.
The state dict (``feature_extractor.*``, ``idx``, ``gaussian.mean``, ``gaussian.inv_covariance``)
is anomalib's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import MultiVariateGaussian, TimmFeatureExtractor
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn

from alo.logs import Progress
from vad.models.base import FitData, FitOptions, VadModel, training_passes
from vad.models.blur import SeparableGaussianBlur2d
from vad.models.feature_cache import backbone_features
from vad.models.padim import PadimParams
from vad.models.spec import ModelSpec

DEFAULT_FEATURES = 100  # channels kept when the plan leaves n_features out (the paper's choice for ResNet-18)
REGULARISATION = 0.01  # added to the covariance diagonal, as anomalib does


class OfflinePadim(VadModel, PadimModel):
    """anomalib's PaDiM whose backbone weights come from offline sources."""

    FIT_DESCRIBES_TRAINING = True  # one pass over the training images (see VadModel.fit_pass_descriptors)

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        n_features: int | None,
    ) -> None:
        nn.Module.__init__(self)
        self.tiler = None
        self.backbone = backbone
        self.layers = list(layers)
        self.feature_extractor = TimmFeatureExtractor(backbone=backbone, layers=self.layers, pre_trained=False).eval()
        self.n_features_original = sum(self.feature_extractor.out_dims)
        self.n_features = n_features or min(DEFAULT_FEATURES, self.n_features_original)
        if not 0 < self.n_features <= self.n_features_original:
            msg = (
                f"padim_n_features is {self.n_features}; {backbone} {self.layers} has "
                f"{self.n_features_original} feature channels: use at most that"
            )
            raise ValueError(msg)
        self.register_buffer("idx", torch.randperm(self.n_features_original)[: self.n_features])
        self.idx: torch.Tensor
        self.loss = None
        self.anomaly_map_generator = AnomalyMapGenerator()
        blur = self.anomaly_map_generator.blur
        self.anomaly_map_generator.blur = SeparableGaussianBlur2d(
            sigma=4, channels=1, kernel_size=(blur.height, blur.width)
        )
        self.gaussian = MultiVariateGaussian()
        self.memory_bank: list[torch.Tensor] = []
        # how many images the Gaussians were estimated from (0: unknown, a model saved before updates existed)
        self.fit_images: torch.Tensor
        self.register_buffer("fit_images", torch.zeros((), dtype=torch.float64))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Models saved before updates existed have no image count: they load with 0 (they train again)."""
        state_dict.setdefault(f"{prefix}fit_images", torch.zeros((), dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OfflinePadim:
        """See :meth:`VadModel.from_spec`.

        Args:
            spec: The model description (``PadimParams``).

        Returns:
            The model.
        """
        params = spec.params_as(PadimParams)
        return cls(spec.backbone, spec.layers, params.n_features)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The selected channels of the concatenated layer features, (B, n_features, h, w).

        The backbone runs as its batch-norm-folded copy (:func:`fold_batch_norms`): same features, less work; inside
        :func:`feature_cache.enabled` its features come from the memo where it holds them.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The embedding.
        """
        images = images.to(self.device)
        backbone = self.scoring_backbone()
        features = dict(zip(self.layers, backbone_features(backbone, self.layers, images), strict=True))
        with torch.no_grad():
            return self.generate_embedding(features)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor | InferenceBatch:
        """Embeddings while training; else the anomaly map and its peak as the image score (anomalib's forward).

        Args:
            input_tensor: Normalised images (B, 3, H, W).

        Returns:
            The embedding while training, else anomalib's ``InferenceBatch``.
        """
        embedding = self.embed(input_tensor)
        if self.training:
            return embedding
        if self.gaussian.mean.numel() == 0:
            msg = "the Gaussians are not fitted: fit the model before scoring"
            raise ValueError(msg)
        with torch.no_grad():
            anomaly_map = self.anomaly_map_generator(
                embedding=embedding,
                mean=self.gaussian.mean,
                inv_covariance=self.gaussian.inv_covariance,
                image_size=input_tensor.shape[-2:],
            )
        return InferenceBatch(pred_score=torch.amax(anomaly_map, dim=(-2, -1)), anomaly_map=anomaly_map)

    # VadModel.fit (the registry's interface) takes the place of anomalib's argument-less PadimModel.fit
    def fit(  # type: ignore[override]
        self, train: FitData, valid: FitData, options: FitOptions, logger: logging.Logger
    ) -> dict[str, float]:
        """Fit one Gaussian per patch position on the training images (and an augmented pass when augmenting).

        Args:
            train: OK training images.
            valid: Unused (PaDiM has no epochs to select).
            options: Batch size, augmentation.
            logger: Progress logger.

        Returns:
            No fit metrics.
        """
        del valid
        self.fit_gaussians(*training_passes(train, self.spec, options), logger)
        return {}

    def update(self, new: FitData, options: FitOptions, logger: logging.Logger) -> bool:
        """See :meth:`VadModel.update`: the Gaussians of the old and the new images together, exactly as one fit.

        The old covariance is read back from the saved inverse (the regularisation taken off), its scatter combined
        with the new images' (the parallel formula of Chan et al.), and inverted again. A model saved before the
        image count was kept cannot (it trains again).

        Args:
            new: OK images the Gaussians have not seen.
            options: Batch size, augmentation.
            logger: Progress logger.

        Returns:
            True, or False without the image count.
        """
        old = float(self.fit_images)
        if old < 2:
            return False
        count, sums, products = self._moments(*training_passes(new, self.spec, options), logger)
        identity = torch.eye(sums.shape[0], dtype=torch.float64, device=sums.device)
        inverse = self.gaussian.inv_covariance.double()
        old_covariance = torch.linalg.inv(inverse) - (REGULARISATION + 1e-5) * identity
        old_mean = self.gaussian.mean.double()
        new_mean = sums / count
        scatter = (
            (old - 1) * old_covariance
            + products
            - count * torch.einsum("dp,ep->pde", new_mean, new_mean)
            + (old * count / (old + count)) * torch.einsum("dp,ep->pde", old_mean - new_mean, old_mean - new_mean)
        )
        total = old + count
        self._set_gaussians((old * old_mean + sums) / total, scatter, total)
        logger.info(f"PaDiM: Gaussians updated with {count} images ({int(total)} in all)")
        return True

    def fit_gaussians(self, batches: Iterable[torch.Tensor], total: int, logger: logging.Logger) -> None:
        """Mean and inverse covariance per patch position, accumulated batch by batch (float64 sums).

        The same estimate as anomalib's ``MultiVariateGaussian.fit`` (unbiased covariance, 0.01 added to
        its diagonal, then 1e-5 before inverting), without keeping the embeddings.

        Args:
            batches: Batches of normalised OK images.
            total: Number of images (for progress).
            logger: Progress logger.
        """
        count, sums, products = self._moments(batches, total, logger)
        if count < 2:
            msg = "PaDiM needs at least 2 training images to estimate a covariance"
            raise ValueError(msg)
        mean = sums / count  # (D, P)
        self._set_gaussians(mean, products - count * torch.einsum("dp,ep->pde", mean, mean), count)
        logger.info(
            f"PaDiM: Gaussians of {mean.shape[0]} channels at {mean.shape[1]} patch positions from {count} images"
        )

    def _moments(
        self, batches: Iterable[torch.Tensor], total: int, logger: logging.Logger
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Image count, sums (D, P) and sums of outer products (P, D, D) of the embeddings, in float64."""
        self.eval()
        progress = Progress(logger, "feature extraction", total)
        count = 0
        sums: torch.Tensor | None = None
        products: torch.Tensor | None = None
        for images in batches:
            embedding = self.embed(images.to(self.device)).double()
            vectors = embedding.flatten(2)  # (B, D, P)
            if sums is None or products is None:
                sums = torch.zeros(vectors.shape[1:], dtype=torch.float64, device=vectors.device)
                products = torch.zeros(
                    vectors.shape[2], vectors.shape[1], vectors.shape[1], dtype=torch.float64, device=vectors.device
                )
            sums += vectors.sum(dim=0)
            products += torch.einsum("bdp,bep->pde", vectors, vectors)
            count += len(images)
            progress.update(len(images))
        if sums is None or products is None:
            msg = "PaDiM was given no images"
            raise ValueError(msg)
        return count, sums, products

    def _set_gaussians(self, mean: torch.Tensor, scatter: torch.Tensor, count: float) -> None:
        """The Gaussians from a mean (D, P) and a scatter (P, D, D) of ``count`` images (unbiased, regularised)."""
        identity = torch.eye(mean.shape[0], dtype=torch.float64, device=mean.device)
        covariance = scatter / (count - 1) + REGULARISATION * identity
        self.gaussian.mean = mean.float()
        self.gaussian.inv_covariance = torch.linalg.inv(covariance + 1e-5 * identity).float()
        self.fit_images = torch.tensor(float(count), dtype=torch.float64, device=mean.device)
