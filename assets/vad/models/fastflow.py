"""FastFlow on any timm CNN backbone, extending anomalib's ``FastflowModel``.

anomalib accepts four backbone names only; its CNN branch (per-stage LayerNorm over the
feature maps, one 2-D flow per stage) works for any timm CNN, which this subclass allows.
The backbone is frozen, so its features can be computed once and reused across epochs.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.fastflow.loss import FastflowLoss
from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block
from torch import nn

from assets.vad.backbones import load_pretrained_weights
from assets.vad.models.flow_steps import prepare_flow, run_flow, train_flow
from assets.vad.models.folding import fold_batch_norms
from assets.vad.models.weight_cache import WeightKeyedCache

HIGHER_IS_BETTER = {"image_AUROC": True, "image_F1Score": True, "loss": False}
# How far below the best an image metric may fall and still count as "as good". Validation sets are small
# (30 images move AUROC in steps of ~0.005), so smaller changes are noise; the flows keep improving on held-out
# data long after a small validation set stops showing it (BENCHMARKS.md), so plateaus must not stop training.
FEATURE_CACHE_LIMIT = 2 * 1024**3  # bytes of backbone features kept across epochs; more: extracted every epoch
TOLERANCE = {"image_AUROC": 0.02, "image_F1Score": 0.02, "loss": 0.0}


class OfflineFastflow(FastflowModel):
    """FastFlow with a timm CNN backbone given by name and feature layers."""

    def __init__(
        self,
        input_size: tuple[int, int],
        backbone: str,
        layers: Sequence[str],
        flow_steps: int = 8,
        conv3x3_only: bool = False,
        hidden_ratio: float = 1.0,
        pretrained: bool = True,
        weights_path: str | Path | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.input_size = tuple(input_size)
        extractor = TimmFeatureExtractor(backbone=backbone, layers=list(layers), pre_trained=False)
        self.feature_extractor = extractor.feature_extractor
        self.weights_source = "random initialisation (pretrained: false)"
        if pretrained:
            self.weights_source = load_pretrained_weights(self.feature_extractor, backbone, weights_path)
        for parameter in self.feature_extractor.parameters():
            parameter.requires_grad = False
        self.feature_extractor.eval()
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in self.feature_extractor(torch.zeros(1, 3, *self.input_size))]
        self.feature_values_per_image = sum(math.prod(shape) for shape in shapes)
        self.norms = nn.ModuleList([nn.LayerNorm(list(shape), elementwise_affine=True) for shape in shapes])
        self.fast_flow_blocks = nn.ModuleList(
            [
                create_fast_flow_block(
                    input_dimensions=list(shape),
                    conv3x3_only=conv3x3_only,
                    hidden_ratio=hidden_ratio,
                    flow_steps=flow_steps,
                )
                for shape in shapes
            ]
        )
        self.anomaly_map_generator = AnomalyMapGenerator(input_size=self.input_size)
        self.layout = torch.contiguous_format
        self.folded_backbone: WeightKeyedCache[nn.Module] = WeightKeyedCache()  # batch-norm-folded copy
        self.scoring_flows: WeightKeyedCache[list] = WeightKeyedCache()  # eval mode: flows in scoring form

    def use_channels_last(self) -> OfflineFastflow:
        """Run backbone and flows in channels-last layout, for scoring (1.25x faster on this CPU, same scores).

        Training stays in NCHW, where the flows' backward pass is faster.

        Returns:
            The model.
        """
        self.to(memory_format=torch.channels_last)
        self.layout = torch.channels_last
        return self

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone features of a batch, from its batch-norm-folded copy (:func:`fold_batch_norms`).

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            One feature map per layer.
        """
        self.feature_extractor.eval()
        images = images.contiguous(memory_format=self.layout)
        backbone = self.folded_backbone.get(
            self.feature_extractor, lambda: fold_batch_norms(self.feature_extractor, images[:1])
        )
        with torch.no_grad():
            return list(backbone(images))

    def flow(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Run the per-stage norms and flows on backbone features (anomalib's forward, after extraction).

        Args:
            features: Output of :meth:`extract`.

        Returns:
            In training mode the hidden variables and log-Jacobians; otherwise scores and anomaly maps. The
            flows run in their training or scoring form (:mod:`assets.vad.models.flow_steps`).
        """
        hidden: list[torch.Tensor] = []
        jacobians: list[torch.Tensor] = []
        if self.training:
            for norm, block, feature in zip(self.norms, self.fast_flow_blocks, features, strict=True):
                normed = norm(feature)
                hidden_variable, log_jacobian = train_flow(block, normed) or block(normed)
                hidden.append(hidden_variable)
                jacobians.append(log_jacobian)
            return hidden, jacobians
        blocks = self.fast_flow_blocks
        scoring = self.scoring_flows.get(blocks, lambda: [prepare_flow(block) for block in blocks])
        with torch.no_grad():
            for norm, block, steps, feature in zip(self.norms, blocks, scoring, features, strict=True):
                hidden.append(block(norm(feature))[0] if steps is None else run_flow(steps, norm(feature)))
        anomaly_map = self.anomaly_map_generator(hidden)
        return InferenceBatch(pred_score=self.image_scores(anomaly_map), anomaly_map=anomaly_map)

    def image_scores(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image scores from anomaly maps (their peak, as anomalib scores FastFlow).

        Validation takes them from the training-mode pass that also gives the loss
        (``anomaly_map_generator(hidden)``), so the flows run once per validation batch.

        Args:
            anomaly_map: Maps of shape (B, 1, H, W).

        Returns:
            Scores of shape (B, 1).
        """
        return torch.amax(anomaly_map, dim=(-2, -1))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Score a batch of images (or return flow outputs in training mode).

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            See :meth:`flow`.
        """
        return self.flow(self.extract(images))


def fit_fastflow(
    model: OfflineFastflow,
    train_batches: Callable[[], list[list[torch.Tensor]] | object],
    evaluate: Callable[[OfflineFastflow], dict[str, float]],
    max_epochs: int,
    monitor: str,
    patience: int,
    logger: logging.Logger,
) -> dict[str, float]:
    """Train the flows with Adam (anomalib's settings), keep the latest epoch as good as the best by ``monitor``.

    An epoch is as good as the best when ``monitor`` is within :data:`TOLERANCE` of the best value so far;
    training stops after ``patience`` consecutive epochs that are not, and the latest as-good epoch is kept
    (the most trained model that validation cannot tell apart from the best).

    Args:
        model: The model.
        train_batches: Returns an iterable of feature batches (lists of per-layer tensors) for one epoch.
        evaluate: Scores the validation set, returning ``image_AUROC``, ``image_F1Score`` and ``loss``.
        max_epochs: Upper bound on epochs.
        monitor: Metric deciding the best epoch and early stopping.
        patience: Epochs without improvement before stopping.
        logger: Progress logger.

    Returns:
        The validation metrics of the kept epoch, plus ``epoch`` and ``epoch_seconds`` (the mean wall time of
        the epochs run: training, first-epoch feature extraction and validation).
    """
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.001, weight_decay=0.00001)
    criterion = FastflowLoss()
    higher = HIGHER_IS_BETTER[monitor]
    sign = 1.0 if higher else -1.0
    best_value = float("-inf")
    kept: dict[str, float] | None = None
    kept_state: dict[str, torch.Tensor] | None = None
    stale = 0
    epoch_seconds: list[float] = []
    for epoch in range(1, max_epochs + 1):
        started = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for features in train_batches():  # type: ignore[union-attr]
            hidden, jacobians = model.flow(features)  # type: ignore[misc]
            loss = criterion(hidden, jacobians)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(features[0])
            count += len(features[0])
        model.eval()
        metrics = evaluate(model)
        value = sign * metrics[monitor]
        epoch_seconds.append(time.perf_counter() - started)
        measured = not math.isnan(value)  # NaN: the metric cannot be computed (e.g. no NG image in validation)
        if measured:
            best_value = max(best_value, value)
        as_good = measured and value >= best_value - TOLERANCE[monitor]
        logger.info(
            f"epoch {epoch}/{max_epochs}: train loss {total / max(count, 1):.4g}, "
            + ", ".join(f"valid {k} {v:.4g}" for k, v in metrics.items())
            + f" ({epoch_seconds[-1]:.1f} s)"
            + (" (kept)" if as_good else "")
        )
        if as_good or kept is None:
            kept = {**metrics, "epoch": float(epoch)}
            kept_state = copy.deepcopy(model.state_dict())
        if as_good:
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                logger.info(f"early stopping: {monitor} stayed below its best for {patience} epochs")
                break
    model.eval()
    if kept is None or kept_state is None:  # max_epochs < 1: nothing trained
        return {}
    model.load_state_dict(kept_state)
    logger.info(f"kept epoch {int(kept['epoch'])}: valid {monitor} {kept[monitor]:.4g}")
    return {**kept, "epoch_seconds": sum(epoch_seconds) / len(epoch_seconds)}
