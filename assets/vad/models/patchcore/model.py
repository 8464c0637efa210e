"""PatchCore on anomalib's ``PatchcoreModel``, with offline weights, a streamed coreset and a fast search."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

from alo.logs import Progress
from assets.vad.anomalib_api import InferenceBatch, PatchcoreModel
from assets.vad.backbones import load_pretrained_weights
from assets.vad.batches import loader
from assets.vad.coreset import k_center_greedy
from assets.vad.models.base import FitData, FitOptions, VadModel, example_image, training_passes
from assets.vad.models.blur import SeparableGaussianBlur2d
from assets.vad.models.patchcore import PatchcoreParams
from assets.vad.models.patchcore.search import FlatSearch, IvfSearch, bank_search, exact_nearest
from assets.vad.models.spec import ModelSpec
from assets.vad.models.weight_cache import WeightKeyedCache

CHUNK_PATCHES = 16384  # patches per coreset chunk; chunks close at this count whatever the batch size
MERGE_FACTOR = 2.0  # each chunk keeps this many times the sampling ratio before the merge pass
GROUP_ROWS = 65536  # chunk picks merged and reduced together: bounds memory and each greedy pass
SEARCH_MODES = ("auto", "exact")
IMAGE_SCORES = ("map_max", "reweighted")
IVF_MIN_ROWS = 8192  # banks from this size are searched through the inverted-file index
# Banks from this size up to IVF_MIN_ROWS get the index only if the validation images confirm it: every image score
# within IVF_TOLERANCE of the validation scores' range of the exact search's (else they are searched exactly).
IVF_CHECKED_ROWS = 2048
IVF_TOLERANCE = 0.01
IVF_ROWS_PER_LIST = 40  # about 40 bank rows per inverted list (faiss wants >= 39 k-means points per centroid)
IVF_MAX_LISTS = 4096


class OfflinePatchcore(VadModel, PatchcoreModel):
    """anomalib's PatchCore whose backbone weights come from offline sources.

    The state dict (``feature_extractor.*``, ``memory_bank``) is anomalib's own.
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        num_neighbors: int,
        pretrained: bool,
        weights_path: str | Path | None,
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
        self._index: FlatSearch | IvfSearch | None = None
        self._index_key: tuple | None = None
        self.weights_source = "random initialisation (pretrained: false)"
        if pretrained:
            self.weights_source = load_pretrained_weights(
                self.feature_extractor.feature_extractor, backbone, weights_path
            )
        # NHWC convolutions: oneDNN runs MobileNetV2 at 256 px 1.6x faster than in NCHW on this CPU.
        self.feature_extractor.to(memory_format=torch.channels_last)
        self.folded_backbone: WeightKeyedCache[torch.nn.Module] = WeightKeyedCache()  # batch-norm-folded copy
        self.eval()

    @classmethod
    def build(
        cls, spec: ModelSpec, pretrained: bool = True, weights_path: str | Path | None = None
    ) -> OfflinePatchcore:
        """PatchCore as a spec describes it (see :meth:`VadModel.build`).

        Args:
            spec: The model description (``PatchcoreParams``).
            pretrained: Load ImageNet weights into the backbone.
            weights_path: A user weights file for the backbone.

        Returns:
            The model, in eval mode.
        """
        params: PatchcoreParams = spec.params  # type: ignore[assignment]
        model = cls(
            spec.backbone,
            spec.layers,
            params.num_neighbors,
            pretrained,
            weights_path,
            params.search,
            params.image_score,
        )
        model.spec = spec
        return model

    def fit(self, train: FitData, valid: FitData, options: FitOptions, logger: logging.Logger) -> dict[str, float]:
        """Build the memory bank from the training images (and one augmented pass of them when augmenting).

        Args:
            train: OK training images.
            valid: Validation images (they confirm the search of a mid-size bank, :meth:`confirm_search`).
            options: Batch size, seed, augmentation.
            logger: Progress logger.

        Returns:
            No fit metrics.
        """
        batches, total = training_passes(train, self.spec, options)
        params: PatchcoreParams = self.spec.params  # type: ignore[assignment]
        self.fit_bank(
            (images.to(self.device) for images in batches), total, params.coreset_sampling_ratio, options.seed, logger
        )
        self.confirm_search(valid, options.batch_size, logger)
        return {}

    def frozen_backbone(self) -> torch.nn.Module:
        """The frozen feature network (see :meth:`VadModel.frozen_backbone`).

        Returns:
            The module.
        """
        return self.feature_extractor.feature_extractor

    def prepare(self) -> None:
        """Fold the backbone and build the search index now (see :meth:`VadModel.prepare`)."""
        self.eval()
        self._embedding_map(example_image(self.spec.input_size, self.device))
        if self.memory_bank.device.type == "cpu":
            self._search_index()

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
        if self.memory_bank.size(0) == 0:
            msg = "memory bank is empty: fit the model before scoring"
            raise ValueError(msg)
        with torch.no_grad():
            embedding = self._embedding_map(input_tensor.type(self.memory_bank.dtype))
            batch, _, height, width = embedding.shape
            patch_scores, _ = self.nearest_neighbors(self.reshape_embedding(embedding), n_neighbors=1)
            patch_scores = patch_scores.reshape(batch, 1, height, width)
            anomaly_map = self.anomaly_map_generator(patch_scores, input_tensor.shape[-2:])
            pred_score = torch.amax(anomaly_map, dim=(-2, -1)).reshape(batch)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

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
        if n_neighbors == 1 and embedding.device.type == "cpu":
            return self._search_index().nearest(embedding)
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

        A query then visits only the bank rows of its ``IVF_PROBES`` nearest lists, with exact distances
        to those rows. Banks under ``IVF_CHECKED_ROWS`` rows, and ``search: exact``, keep the exact search;
        banks under ``IVF_MIN_ROWS`` keep the index only if :meth:`confirm_search` does.

        Args:
            seed: Seed of the k-means clustering.
        """
        rows, dims = self.memory_bank.shape
        self._index, self._index_key = None, None
        if self.search == "exact" or rows < IVF_CHECKED_ROWS:
            self.search_centroids = torch.empty(0)
            return
        lists = min(IVF_MAX_LISTS, rows // IVF_ROWS_PER_LIST)
        faiss.omp_set_num_threads(torch.get_num_threads())
        kmeans = faiss.Kmeans(dims, lists, niter=20, seed=seed, max_points_per_centroid=256)
        kmeans.train(np.ascontiguousarray(self.memory_bank.float().cpu().numpy()))
        self.search_centroids = torch.from_numpy(kmeans.centroids.copy()).to(self.memory_bank.device)

    def _search_index(self) -> FlatSearch | IvfSearch:
        """The CPU search of the bank (inverted file or exact), built again only when the bank or centroids change."""
        bank, centroids = self.memory_bank, self.search_centroids
        key = (bank.data_ptr(), tuple(bank.shape), centroids.data_ptr(), tuple(centroids.shape))
        if self._index is None or self._index_key != key:
            self._index, self._index_key = bank_search(bank, centroids), key
        return self._index

    def confirm_search(self, valid: FitData, batch_size: int, logger: logging.Logger) -> None:
        """Keep the inverted-file index of a mid-size bank only if the validation images cannot tell it from exact.

        Banks of ``IVF_CHECKED_ROWS`` to ``IVF_MIN_ROWS`` rows: the validation images are embedded once and
        their anomaly maps' peaks computed with both searches; if any moves by more than ``IVF_TOLERANCE`` of
        the exact peaks' range, the centroids are dropped and the bank is searched exactly.

        Args:
            valid: Validation images.
            batch_size: Images per batch.
            logger: Where the decision is logged.
        """
        rows = len(self.memory_bank)
        if not self.search_centroids.numel() or rows >= IVF_MIN_ROWS or not valid.files:
            return
        searches = (IvfSearch(self.memory_bank, self.search_centroids), FlatSearch(self.memory_bank))
        peaks: tuple[list, list] = ([], [])
        with torch.no_grad():
            for images, _ in loader(valid.files, self.spec, batch_size):  # each batch embedded once, searched twice
                embedding = self._embedding_map(images.to(self.device))
                batch, _, height, width = embedding.shape
                queries = self.reshape_embedding(embedding)
                for search, found in zip(searches, peaks, strict=True):
                    patch_scores = search.nearest(queries)[0].reshape(batch, 1, height, width)
                    maps = self.anomaly_map_generator(patch_scores, images.shape[-2:])
                    found.append(torch.amax(maps, dim=(-2, -1)).reshape(-1).numpy())
        approximate, exact = np.concatenate(peaks[0]), np.concatenate(peaks[1])
        change = float(np.abs(approximate - exact).max() / max(float(np.ptp(exact)), 1e-12))
        if change > IVF_TOLERANCE:
            self.search_centroids = torch.empty(0)
        logger.info(
            f"search: inverted-file index {'kept' if change <= IVF_TOLERANCE else 'dropped'} for the {rows}-row bank: "
            f"on {len(exact)} validation images the image scores moved by at most {change:.2%} of their range "
            f"(tolerance {IVF_TOLERANCE:.0%})"
        )

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

        The backbone runs as its batch-norm-folded copy (:func:`fold_batch_norms`): same features, less work.
        """
        images = images.contiguous(memory_format=torch.channels_last)
        extractor = self.feature_extractor
        backbone = self.scoring_backbone()
        with torch.no_grad():
            features = dict(zip(extractor.layers, backbone(images), strict=True))
        features = {layer: self.feature_pooler(feature) for layer, feature in features.items()}
        return self.generate_embedding(features)

    def fit_bank(
        self,
        batches: Iterable[torch.Tensor],
        total: int,
        sampling_ratio: float,
        seed: int,
        logger: logging.Logger,
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
        """
        self.eval()
        progress = Progress(logger, "feature extraction", total)
        buffer: list[torch.Tensor] = []
        buffered = seen = chunks = 0
        pending: list[torch.Tensor] = []  # chunk picks not yet merged
        parts: list[torch.Tensor] = []  # finished pieces of the bank
        for images in batches:
            embedding = self.embed(images)
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
            parts.append(
                union[k_center_greedy(union, size_left, seed=seed, logger=logger)] if len(union) > size_left else union
            )
        self.memory_bank = torch.cat(parts).contiguous()
        self.build_search_index(seed)


def _reduce(embedding: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Keep the greedy k-center picks of one chunk."""
    size = max(1, min(len(embedding), int(len(embedding) * ratio)))
    return embedding[k_center_greedy(embedding, size, seed=seed)]
