"""SuperSimpleNet on anomalib's ``SupersimplenetModel``: offline backbone, standardised features, cached training.

anomalib's model upsamples a WideResNet's features twice, trains on images through Lightning and adds
noise of a fixed 0.015 to raw features. Here, for any offline timm backbone on a CPU:

- the features keep the first layer's stride (PatchCore's embedding: deeper layers upsampled to it, 3 x 3
  neighbourhood mean), a quarter of the positions of the 2x upsampled map;
- each channel is standardised by its mean and spread over the training images (saved with the model), so the
  noise's standard deviation (``noise_std``) means the same for every backbone (0.015 on raw lite0 features,
  whose spread is about 3, left the heads at chance on real cracks);
- the backbone is frozen, so the training images' features are extracted once and the heads train on them;
- the epoch is chosen on the validation images as FastFlow's is (:mod:`vad.models.epochs`);
- scores stay logits (no sigmoid, whose saturation ties the highest scores);
- with ``image_score: map_max`` (the default) the image head scores nothing, so it is neither trained nor run:
  its 5 x 5 convolution is about three quarters of the heads' work, and with anomalib's stopped gradient it
  never shaped the pixel head anyway.

The state dict keeps anomalib's names for the heads (``adaptor.*``, ``segdec.*``,
``anomaly_map_generator.smoothing.kernel``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.supersimplenet.anomaly_generator import AnomalyGenerator as SupersimplenetAnomalyGenerator
from anomalib.models.image.supersimplenet.loss import SSNLoss as SupersimplenetLoss
from anomalib.models.image.supersimplenet.torch_model import AnomalyMapGenerator as SupersimplenetAnomalyMap
from anomalib.models.image.supersimplenet.torch_model import FeatureAdapter as SupersimplenetFeatureAdapter
from anomalib.models.image.supersimplenet.torch_model import SegmentationDetectionModule as SupersimplenetSegDec
from anomalib.models.image.supersimplenet.torch_model import SupersimplenetModel
from torch import nn

from alo.logs import Progress
from vad import metrics
from vad.batches import loader
from vad.models.base import FitData, FitOptions, VadModel, training_passes
from vad.models.blur import SeparableGaussianBlur2d
from vad.models.epochs import train_epochs
from vad.models.feature_cache import backbone_features
from vad.models.maps import concat_layers
from vad.models.spec import ModelSpec
from vad.models.supersimplenet import SupersimplenetParams
from vad.thresholds import sweep

HEAD_BATCH = 16  # images per optimisation step of the heads (the plan's batch_size sets the extraction batches)
FEATURE_CACHE_LIMIT = 2 * 1024**3  # bytes of training features kept (float16); more: extracted every epoch
SIGMA = 4  # the anomaly map's Gaussian blur (anomalib's)
IMAGE_SCORES = ("map_max", "classifier")
# anomalib's Perlin noise draws up to 32 cells per side and fails on smaller grids: smaller feature maps (inputs
# under 256 px at stride 8) get their regions drawn on a 32-cell grid and resized.
PERLIN_MIN_SIDE = 32


class AnyShapeAnomalyGenerator(SupersimplenetAnomalyGenerator):
    """anomalib's anomaly generator, for feature maps of any size."""

    def generate_perlin(self, batches: int, height: int, width: int) -> torch.Tensor:
        """Binary Perlin regions (B, 1, h, w), drawn on at least a 32 x 32 grid.

        Args:
            batches: Number of masks.
            height: Feature map height.
            width: Feature map width.

        Returns:
            The masks.
        """
        drawn = super().generate_perlin(batches, max(height, PERLIN_MIN_SIDE), max(width, PERLIN_MIN_SIDE))
        if tuple(drawn.shape[-2:]) == (height, width):
            return drawn
        return F.interpolate(drawn.float(), size=(height, width), mode="nearest").to(drawn.dtype)


class OfflineSupersimplenet(VadModel, SupersimplenetModel):
    """anomalib's SuperSimpleNet whose backbone is any offline timm CNN and whose features are standardised."""

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        noise_std: float,
        perlin_threshold: float,
        image_score: str,
    ) -> None:
        nn.Module.__init__(self)
        if image_score not in IMAGE_SCORES:
            msg = f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {image_score!r}"
            raise ValueError(msg)
        self.layers = list(layers)
        self.image_score = image_score
        extractor = TimmFeatureExtractor(backbone=backbone, layers=self.layers, pre_trained=False).eval()
        extractor.requires_grad_(False)
        channels = sum(extractor.out_dims)
        # anomalib's SupersimplenetModel annotates this attribute as its upscaling extractor; the plain timm one
        # takes its place here (the same state-dict name)
        self.feature_extractor = extractor  # type: ignore[assignment]
        self.pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
        self.feature_mean: torch.Tensor
        self.feature_std: torch.Tensor
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.adapt_cls_features = False  # anomalib's default: the image head sees the features, not the adapted ones
        self.adaptor = SupersimplenetFeatureAdapter(channels)
        self.segdec = SupersimplenetSegDec(channel_dim=channels, stop_grad=True)
        self.anomaly_generator = AnyShapeAnomalyGenerator(noise_mean=0, noise_std=noise_std, threshold=perlin_threshold)
        self.anomaly_map_generator = SupersimplenetAnomalyMap(sigma=SIGMA)
        blur = self.anomaly_map_generator.smoothing
        self.anomaly_map_generator.smoothing = SeparableGaussianBlur2d(
            sigma=SIGMA, channels=1, kernel_size=(blur.height, blur.width)
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OfflineSupersimplenet:
        """See :meth:`VadModel.from_spec`.

        Args:
            spec: The model description (``SupersimplenetParams``).

        Returns:
            The model.
        """
        params = spec.params_as(SupersimplenetParams)
        return cls(spec.backbone, spec.layers, params.noise_std, params.perlin_threshold, params.image_score)

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, concatenated layer features of a batch before standardisation, (B, C, h, w).

        The backbone runs as its batch-norm-folded copy; inside :func:`feature_cache.enabled` its features come
        from the memo where it holds them.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The features.
        """
        images = images.to(self.device)
        with torch.no_grad():
            features = backbone_features(self.scoring_backbone(), self.layers, images)
            return self.pooler(concat_layers(list(features), "bilinear"))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """Features in units of each channel's spread over the training images.

        Args:
            features: (B, C, h, w) from :meth:`raw_features`.

        Returns:
            The standardised features.
        """
        return (features - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Segmentation logits (B, 1, h, w) and, when the image score is the classifier's, image logits (B,).

        Args:
            features: Standardised features.

        Returns:
            The outputs of anomalib's segmentation-detection module (the image head only when it scores).
        """
        adapted = self.adaptor(features)
        if self.image_score != "classifier":
            return self.segdec.seg_head(adapted), None
        return self.segdec(seg_features=adapted, cls_features=features)

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> InferenceBatch:
        """Score a batch: the blurred, upsampled segmentation logits and the chosen image score.

        Args:
            images: Normalised images (B, 3, H, W).
            masks: Must be None (anomalib's forward trains with them; this model trains in :meth:`fit`).
            labels: Must be None, likewise.

        Returns:
            anomalib's ``InferenceBatch`` (scores (B,), maps (B, 1, H, W)).

        Raises:
            ValueError: Masks or labels given.
        """
        if masks is not None or labels is not None:
            msg = "OfflineSupersimplenet trains in fit(); its forward scores images only (no masks, no labels)"
            raise ValueError(msg)
        with torch.no_grad():
            segmentation, classification = self.heads(self.standardise(self.raw_features(images)))
            anomaly_map = self.anomaly_map_generator(segmentation, final_size=tuple(self.spec.input_size))
        score = torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1) if classification is None else classification
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)

    def fit(self, train: FitData, valid: FitData, options: FitOptions, logger: logging.Logger) -> dict[str, Any]:
        """Standardise on the training features, then train the heads against synthetic anomalies, epoch by epoch.

        The training images (and one augmented pass of them when augmenting) are extracted once; while their
        features fit in :data:`FEATURE_CACHE_LIMIT` they are kept (float16), else extracted again each epoch.

        Args:
            train: OK training images.
            valid: Validation images; their scores select the epoch.
            options: Batch size, epochs, seed, monitor, augmentation.
            logger: Progress logger.

        Returns:
            The kept epoch's validation metrics, its number, the mean epoch seconds and the per-epoch history.
        """
        params = self.spec.params_as(SupersimplenetParams)
        cached = self._standardisation(train, options, logger)
        valid_features = [
            self.standardise(self.raw_features(images)) for images, _ in loader(valid.files, self.spec, HEAD_BATCH)
        ]
        with torch.random.fork_rng():
            torch.manual_seed(options.seed)
            channels = len(self.feature_mean)  # fresh heads drawn from the seed: the same plan trains the same model
            self.adaptor = SupersimplenetFeatureAdapter(channels).to(self.device)
            self.segdec = SupersimplenetSegDec(channel_dim=channels, stop_grad=True).to(self.device)
            return self._train_heads(
                lambda: self._epoch_features(train, options, cached),
                lambda: self.validate(valid_features, valid.is_ng, options.seed),
                options,
                params.early_stopping_patience,
                logger,
            )

    def _standardisation(self, train: FitData, options: FitOptions, logger: logging.Logger) -> list[torch.Tensor]:
        """Set each channel's mean and spread from the training features; return them (float16) while they fit."""
        batches, total = training_passes(train, self.spec, options)
        progress = Progress(logger, "feature extraction", total)
        count, sums, squares = 0, None, None
        cached: list[torch.Tensor] = []
        cached_bytes = 0
        for images in batches:
            features = self.raw_features(images)
            flat = features.double().transpose(0, 1).reshape(features.shape[1], -1)
            sums = flat.sum(dim=1) if sums is None else sums + flat.sum(dim=1)
            squares = (flat**2).sum(dim=1) if squares is None else squares + (flat**2).sum(dim=1)
            count += flat.shape[1]
            cached_bytes += features.numel() * 2
            if cached_bytes <= FEATURE_CACHE_LIMIT:
                cached.append(features.half())
            progress.update(len(images))
        if sums is None or squares is None or count < 2:
            msg = "SuperSimpleNet needs training images to learn from"
            raise ValueError(msg)
        mean = sums / count
        spread = (squares / count - mean**2).clamp_min(0).sqrt()
        self.feature_mean = mean.float().to(self.device)
        floor = max(1e-6 * float(spread.max()), 1e-8)  # a channel constant over the training images divides by this
        self.feature_std = spread.clamp_min(floor).float().to(self.device)
        if cached_bytes > FEATURE_CACHE_LIMIT:
            logger.info(
                f"training features would take {cached_bytes / 2**30:.1f} GiB (cache limit "
                f"{FEATURE_CACHE_LIMIT / 2**30:.1f} GiB): extracting them every epoch"
            )
            return []
        return [torch.cat(cached)] if cached else []  # one tensor: each epoch only draws a new order

    def _epoch_features(
        self, train: FitData, options: FitOptions, cached: list[torch.Tensor]
    ) -> Iterator[torch.Tensor]:
        """One epoch's standardised training features in shuffled head batches (from the cache when it holds them)."""
        if not cached:  # too many images to keep: extracted again, the same images in the same order
            batches, _ = training_passes(train, self.spec, options)
            cached_now = (self.raw_features(images) for images in batches)
            yield from (self.standardise(features) for features in cached_now)
            return
        (every,) = cached
        order = torch.randperm(len(every))
        for start in range(0, len(every), HEAD_BATCH):
            yield self.standardise(every[order[start : start + HEAD_BATCH]].float())

    def _train_heads(
        self,
        epoch_features: Any,
        evaluate: Any,
        options: FitOptions,
        patience: int,
        logger: logging.Logger,
    ) -> dict[str, Any]:
        """Train the heads as anomalib does (AdamW, two learning rates, steps down at 80% and 90%, norm clip 1)."""
        head_parameters = [*self.adaptor.parameters(), *self.segdec.parameters()]
        optimizer = torch.optim.AdamW(
            [
                {"params": self.adaptor.parameters(), "lr": 0.0001},
                {"params": self.segdec.parameters(), "lr": 0.0002, "weight_decay": 0.00001},
            ]
        )
        milestones = [int(options.max_epochs * 0.8), int(options.max_epochs * 0.9)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.4)
        criterion = SupersimplenetLoss()

        def train_epoch() -> tuple[float, int]:
            self.adaptor.train()
            self.segdec.train()
            total, count = 0.0, 0
            for features in epoch_features():
                loss = self._loss(features, criterion)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(head_parameters, 1.0)
                optimizer.step()
                total += float(loss) * len(features)
                count += len(features)
            scheduler.step()
            return total, count

        return train_epochs(
            self, train_epoch, evaluate, options.max_epochs, options.monitor, patience, logger, options.on_epoch
        )

    def _loss(self, features: torch.Tensor, criterion: SupersimplenetLoss) -> torch.Tensor:
        """The loss (anomalib's) on a batch of normal features, half of its copies noised in Perlin-shaped regions."""
        batch, _, height, width = features.shape
        masks = torch.zeros(batch, 1, height, width, device=features.device)
        labels = torch.zeros(batch, device=features.device)
        noised, noised_adapted, masks, labels = self.anomaly_generator(
            input_features=features, adapted_features=self.adaptor(features), masks=masks, labels=labels
        )
        if self.image_score != "classifier":  # the image head scores nothing: only the pixel head's terms
            segmentation = self.segdec.seg_head(noised_adapted)
            return criterion.focal_loss(segmentation, masks) + criterion.trunc_l1_loss(segmentation, masks)
        segmentation, classification = self.segdec(seg_features=noised_adapted, cls_features=noised)
        return criterion(segmentation, classification, masks, labels)

    def validate(self, features: list[torch.Tensor], is_ng: np.ndarray, seed: int) -> dict[str, float]:
        """Validation metrics of the current heads.

        Args:
            features: Standardised features of the validation batches.
            is_ng: True where a validation image is NG.
            seed: Seed of the synthetic anomalies the loss is measured on (the same every epoch).

        Returns:
            ``image_AUROC``, ``image_F1Score`` (best over thresholds) and ``loss`` (on the OK images, noised).
        """
        criterion = SupersimplenetLoss()
        scores, losses, sizes = [], [], []
        ok = torch.from_numpy(~is_ng)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            start = 0
            for batch in features:
                segmentation, classification = self.heads(batch)
                if classification is None:
                    anomaly_map = self.anomaly_map_generator(segmentation, final_size=tuple(self.spec.input_size))
                    scores.append(torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1).numpy())
                else:
                    scores.append(classification.reshape(-1).numpy())
                normal = batch[ok[start : start + len(batch)]]
                if len(normal):
                    losses.append(float(self._loss(normal, criterion)))
                    sizes.append(len(normal))
                start += len(batch)
        raw = np.concatenate(scores) if scores else np.zeros(0)
        best_f1 = float(sweep(raw, is_ng)["f1"].max()) if is_ng.any() else float("nan")
        loss = float(np.average(losses, weights=sizes)) if sizes else float("nan")
        return {"image_AUROC": metrics.auroc(is_ng, raw), "image_F1Score": best_f1, "loss": loss}
