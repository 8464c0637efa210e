"""PatchCore on anomalib's ``PatchcoreModel``, with offline weights, a streamed coreset and a fast search."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from alo.logs import Progress
from vad.coreset import k_center_greedy
from vad.models.base import FitData, FitOptions, VadModel, training_passes
from vad.models.blur import SeparableGaussianBlur2d
from vad.models.feature_cache import backbone_features, memoised
from vad.models.patchcore import PatchcoreParams
from vad.models.patchcore.head import embedding_descriptors
from vad.models.patchcore.search import cluster_bank
from vad.models.patchcore.torch_tail import TorchTail, exact_nearest
from vad.models.spec import ModelSpec
from vad.supervision import LinearHead

CHUNK_PATCHES = 16384  # patches per coreset chunk; chunks close at this count whatever the batch size
MERGE_FACTOR = 2.0  # each chunk keeps this many times the sampling ratio before the merge pass
GROUP_ROWS = 65536  # chunk picks merged and reduced together: bounds memory and each greedy pass
SEARCH_MODES = ("auto", "exact")
IMAGE_SCORES = ("map_max", "reweighted")


class OfflinePatchcore(VadModel, PatchcoreModel):
    """anomalib's PatchCore whose backbone weights come from offline sources.

    The state dict (``feature_extractor.*``, ``memory_bank``) is anomalib's own.
    """

    FIT_DESCRIBES_TRAINING = True  # one pass over the training images (see VadModel.fit_pass_descriptors)

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        num_neighbors: int,
        search: str,
        image_score: str,
    ) -> None:
        super().__init__(layers=list(layers), backbone=backbone, pre_trained=False, num_neighbors=num_neighbors)
        if search not in SEARCH_MODES:
            msg = f"search must be one of {', '.join(SEARCH_MODES)}, got {search!r}"
            raise ValueError(msg)
        if image_score not in IMAGE_SCORES:
            msg = f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {image_score!r}"
            raise ValueError(msg)
        self.search = search
        self.image_score = image_score
        blur = self.anomaly_map_generator.blur
        self.anomaly_map_generator.blur = SeparableGaussianBlur2d(
            sigma=4, channels=1, kernel_size=(blur.height, blur.width)
        )
        # k-means centroids of the memory bank for the inverted-file search; empty: exact search.
        self.search_centroids: torch.Tensor
        self.register_buffer("search_centroids", torch.empty(0))
        # the supervised mode's linear head on image descriptors (empty: none, the plain PatchCore score)
        self.head_weights: torch.Tensor
        self.head_bias: torch.Tensor
        self.register_buffer("head_weights", torch.empty(0))
        self.register_buffer("head_bias", torch.empty(0))
        self._tail: TorchTail | None = None  # the scoring after the embedding, for the current bank and head
        self._tail_key: tuple | None = None
        self.fit_descriptors: np.ndarray | None = None  # of the images the bank was built from (not saved)
        # NHWC convolutions: oneDNN runs MobileNetV2 at 256 px 1.6x faster than in NCHW on this CPU.
        self.feature_extractor.to(memory_format=torch.channels_last)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> OfflinePatchcore:
        """See :meth:`VadModel.from_spec`.

        Args:
            spec: The model description (``PatchcoreParams``).

        Returns:
            The model.
        """
        params = spec.params_as(PatchcoreParams)
        return cls(spec.backbone, spec.layers, params.num_neighbors, params.search, params.image_score)

    def fit(self, train: FitData, valid: FitData, options: FitOptions, logger: logging.Logger) -> dict[str, float]:
        """Build the memory bank from the training images (and one augmented pass of them when augmenting).

        Args:
            train: OK training images.
            valid: Validation images (unused: a memory bank needs none).
            options: Batch size, seed, augmentation.
            logger: Progress logger.

        Returns:
            No fit metrics.
        """
        batches, total = training_passes(train, self.spec, options)
        params = self.spec.params_as(PatchcoreParams)
        self.fit_bank(
            (images.to(self.device) for images in batches), total, params.coreset_sampling_ratio, options.seed, logger
        )
        del valid
        return {}

    def update(self, new: FitData, options: FitOptions, logger: logging.Logger) -> bool:
        """See :meth:`VadModel.update`: the new images' patches reduced by the same coreset, added to the bank.

        The bank of a fit is the union of coreset picks of chunks of the training patches (merge and reduce): the
        new images' picks at the same sampling ratio join it as one more piece, which is the bank a fit on every
        image would have built from one more chunk. A model with a supervised head cannot (the head was fitted on
        the old bank's scores).

        Args:
            new: OK images the bank has not seen.
            options: Batch size, seed, augmentation.
            logger: Progress logger.

        Returns:
            False with a supervised head, else True.
        """
        if len(self.head_weights):
            return False
        batches, total = training_passes(new, self.spec, options)
        params = self.spec.params_as(PatchcoreParams)
        self.fit_bank(
            (images.to(self.device) for images in batches),
            total,
            params.coreset_sampling_ratio,
            options.seed,
            logger,
            base=self.memory_bank,
        )
        return True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Models saved before the supervised mode have no head: they load with an empty one."""
        for name in ("head_weights", "head_bias"):
            state_dict.setdefault(f"{prefix}{name}", torch.empty(0))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def supports_head(self) -> bool:
        """See :meth:`VadModel.supports_head`: the map-peak image score takes a head, anomalib's re-weighting not.

        Returns:
            True for ``image_score: map_max``.
        """
        return self.image_score == "map_max"

    def image_descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """See :meth:`VadModel.image_descriptors`: each embedding channel's mean and spread over the image.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            (B, 2 * D) descriptors.
        """
        with torch.inference_mode():
            embedding = self._embedding_map(images.to(self.device).type(self.memory_bank.dtype))
            return torch.from_numpy(embedding_descriptors(embedding.permute(0, 2, 3, 1).float().cpu().numpy()))

    def training_descriptors(self) -> np.ndarray | None:
        """See :meth:`VadModel.training_descriptors`: kept while the bank was built.

        Returns:
            (N, 2 * D) descriptors, or None before a fit.
        """
        return self.fit_descriptors

    def set_head(self, head: LinearHead | None) -> None:
        """See :meth:`VadModel.set_head`.

        Args:
            head: The head, or None to score without one.
        """
        if head is None:
            self.head_weights, self.head_bias = torch.empty(0), torch.empty(0)
            return
        self.head_weights = torch.as_tensor(head.weights, dtype=torch.float32, device=self.device)
        self.head_bias = torch.tensor([head.bias], dtype=torch.float32, device=self.device)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor | InferenceBatch:
        """Embeddings while training; else the anomaly map and the image score.

        The backbone runs on a channels-last copy of the batch (see ``__init__``). With
        ``image_score="map_max"`` the image score is the peak of the blurred anomaly map, the map the
        heatmaps show; ``"reweighted"`` keeps anomalib's score (the farthest patch, re-weighted by
        the density of its nearest bank rows).

        Args:
            input_tensor: Normalised images (B, 3, H, W).

        Returns:
            Embeddings while training, else anomalib's ``InferenceBatch``.
        """
        input_tensor = input_tensor.contiguous(memory_format=torch.channels_last)
        if self.training or self.image_score == "reweighted":
            return super().forward(input_tensor)
        pred_score, anomaly_map = self._peak_scores(input_tensor, maps=True)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def scores_and_maps(self, images: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """See :meth:`VadModel.scores_and_maps`: without maps, only the patches that can hold a peak are exact."""
        if self.image_score == "reweighted":
            return super().scores_and_maps(images, maps)
        return self._peak_scores(images.contiguous(memory_format=torch.channels_last), maps)

    def _peak_scores(self, images: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Map-peak image scores (exact) and maps on request, of a channels-last batch (:class:`TorchTail`)."""
        if self.memory_bank.size(0) == 0:
            msg = "memory bank is empty: fit the model before scoring"
            raise ValueError(msg)
        with torch.no_grad():
            embedding = self._embedding_map(images.type(self.memory_bank.dtype))
            return self.bank_tail()(embedding.permute(0, 2, 3, 1), maps)

    def nearest_neighbors(self, embedding: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest memory-bank rows of each query, as anomalib's method returns them.

        Patch scores (one neighbour) use the inverted-file index when the model has one (see
        :meth:`build_search_index`); the image-score re-weighting (several neighbours of a few bank
        rows) and small banks use the exact search of :meth:`exact_nearest_neighbors`.

        Args:
            embedding: Query embeddings (N, D).
            n_neighbors: Neighbours to return per query.

        Returns:
            Distances (N,) or (N, k) and memory-bank indices of the same shape.
        """
        if n_neighbors == 1:
            distances, rows = self.bank_tail().nearest(embedding)
            return distances.to(embedding.device), rows.to(embedding.device)
        return self.exact_nearest_neighbors(embedding, n_neighbors)

    def exact_nearest_neighbors(self, embedding: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest memory-bank rows of each query, as anomalib's method returns them.

        anomalib materialises the full query x bank distance matrix and takes its square root
        everywhere; here each block of queries is one ``addmm`` against the bank and its squared norms,
        the minimum is taken on squared distances, and only the winners get the query norm
        and the square root.

        Args:
            embedding: Query embeddings (N, D).
            n_neighbors: Neighbours to return per query.

        Returns:
            Distances (N,) or (N, k) and memory-bank indices of the same shape.
        """
        return exact_nearest(self.memory_bank, embedding, n_neighbors)

    def build_search_index(self, seed: int) -> None:
        """Cluster the memory bank for the inverted-file search (kept in the state dict as centroids).

        The inverted file bounds the patch distances of image scores (:func:`.peaks.peak_maps`) and answers the
        maps of banks of ``EXACT_MAP_ROWS`` rows or more; ``search: exact`` and small banks have none.
        Inside :func:`feature_cache.enabled` a bank clustered before with the same seed gets the same centroids.

        Args:
            seed: Seed of the k-means clustering.
        """
        if self.search == "exact":
            self.search_centroids = torch.empty(0)
            return
        bank = self.memory_bank

        def clustered() -> torch.Tensor:
            found = cluster_bank(bank.detach().float().cpu().numpy(), seed, threads=torch.get_num_threads())
            return torch.from_numpy(found).to(bank.device) if len(found) else torch.empty(0, device=bank.device)

        self.search_centroids = memoised("cluster_bank", [bank], (seed,), clustered)

    def bank_tail(self) -> TorchTail:
        """The scoring after the embedding (:class:`TorchTail`), built again when the bank, centroids or head change.

        Returns:
            The tail.
        """
        tensors = (self.memory_bank, self.search_centroids, self.head_weights, self.head_bias)
        key = tuple((tensor.data_ptr(), tuple(tensor.shape), tensor.device) for tensor in tensors)
        if self._tail is None or self._tail_key != key:
            head = (self.head_weights, self.head_bias) if len(self.head_weights) else None
            kernel = self.anomaly_map_generator.blur.kernel
            tail = TorchTail(
                self.memory_bank, self.search_centroids, kernel, self.spec.input_size, head, self.search == "exact"
            )
            self._tail, self._tail_key = tail, key
        return self._tail

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings of a batch, shape (batch * h * w, dims), as in anomalib's forward.

        Args:
            images: Normalised images (B, 3, H, W).

        Returns:
            The embeddings.
        """
        with torch.inference_mode():
            return self.reshape_embedding(self._embedding_map(images))

    def _embedding_map(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, concatenated layer features of a batch, (B, D, h, w), computed in channels-last.

        The backbone runs as its batch-norm-folded copy (:func:`fold_batch_norms`): same features, less work; inside
        :func:`feature_cache.enabled` its features come from the memo where it holds them.
        """
        images = images.contiguous(memory_format=torch.channels_last)
        layers = [str(layer) for layer in self.feature_extractor.layers]  # anomalib types them str | int
        maps = backbone_features(self.scoring_backbone(), layers, images)
        return self.generate_embedding(
            {layer: self.feature_pooler(feature) for layer, feature in zip(layers, maps, strict=True)}
        )

    def fit_bank(
        self,
        batches: Iterable[torch.Tensor],
        total: int,
        sampling_ratio: float,
        seed: int,
        logger: logging.Logger,
        base: torch.Tensor | None = None,
    ) -> None:
        """Build the memory bank from normal images, holding only one chunk of embeddings at a time.

        Embeddings are cut into chunks of exactly ``CHUNK_PATCHES`` patches (so the bank does not depend
        on the batch size); each chunk is reduced at once by greedy k-center to ``MERGE_FACTOR`` times
        the sampling ratio, and every ``GROUP_ROWS`` rows of those picks are reduced to the sampling ratio
        by one more greedy pass (merge and reduce). Data smaller than one chunk is reduced in one pass.
        Peak memory thus follows the coreset size, not the number of training images, and the work
        grows linearly with the images. Then the bank is clustered for the search
        (:meth:`build_search_index`).

        Args:
            batches: Batches of normalised OK training images.
            total: Number of images (for progress).
            sampling_ratio: Share of patch embeddings kept by the coreset.
            seed: Seed of the coreset selection.
            logger: Progress logger.
            base: A bank these images' picks are added to (:meth:`update`), or None: a new bank.
        """
        self.eval()
        progress = Progress(logger, "feature extraction", total)
        buffer: list[torch.Tensor] = []
        buffered = seen = chunks = 0
        pending: list[torch.Tensor] = []  # chunk picks not yet merged
        parts: list[torch.Tensor] = []  # finished pieces of the bank
        described: list[np.ndarray] = []
        for images in batches:
            embedding = self.embed(images)
            patches = embedding.reshape(len(images), -1, embedding.shape[-1])
            described.append(embedding_descriptors(patches.float().cpu().numpy()))
            buffer.append(embedding)
            buffered += len(embedding)
            seen += len(embedding)
            while buffered >= CHUNK_PATCHES:
                merged = torch.cat(buffer)
                chunk, rest = merged[:CHUNK_PATCHES], merged[CHUNK_PATCHES:].clone()
                buffer, buffered = ([rest] if len(rest) else []), len(rest)
                pending.append(_reduce(chunk, sampling_ratio * MERGE_FACTOR, seed + chunks))
                chunks += 1
                del merged, chunk
                if sum(len(picks) for picks in pending) >= GROUP_ROWS:
                    parts.append(_reduce(torch.cat(pending), 1.0 / MERGE_FACTOR, seed + chunks))
                    pending = []
            progress.update(len(images))
        size = max(1, int(seen * sampling_ratio))
        leftover = torch.cat(buffer) if buffer else None
        buffer = []
        if chunks == 0 and leftover is not None:
            pending, size_left = [leftover], size
        else:
            if leftover is not None:
                pending.append(_reduce(leftover, sampling_ratio * MERGE_FACTOR, seed + chunks))
            size_left = size - sum(len(part) for part in parts)
        if pending:
            union = torch.cat(pending)
            del pending
            size_left = max(1, min(size_left, len(union)))
            logger.info(
                f"coreset: keeping {size} of {seen} patch embeddings ({union.shape[1]} dims, "
                f"{chunks} chunk(s), {len(parts) + 1} merge pass(es))"
            )
            parts.append(union[_select(union, size_left, seed, logger)] if len(union) > size_left else union)
        if base is not None:
            logger.info(f"memory bank: {len(base)} rows kept, {sum(len(part) for part in parts)} added")
            parts.insert(0, base.to(parts[0].device, parts[0].dtype))
        self.memory_bank = torch.cat(parts).contiguous()
        self.fit_descriptors = np.concatenate(described)
        self.build_search_index(seed)


def _reduce(embedding: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Keep the greedy k-center picks of one chunk."""
    size = max(1, min(len(embedding), int(len(embedding) * ratio)))
    return embedding[_select(embedding, size, seed)]


def _select(embedding: torch.Tensor, size: int, seed: int, logger: logging.Logger | None = None) -> torch.Tensor:
    """The greedy k-center picks of ``embedding``.

    Inside :func:`feature_cache.enabled`, those of the same rows, size and seed picked before: trials that differ
    only in scoring settings share their coreset.
    """
    return memoised(
        "k_center_greedy", [embedding], (size, seed), lambda: k_center_greedy(embedding, size, seed=seed, logger=logger)
    )
