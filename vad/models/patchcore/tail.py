"""PatchCore's scoring after the backbone in numpy and faiss, for the exported runtime (no torch).

The exported graph gives each patch's embedding; this tail searches the memory bank as the torch scorer does
(:mod:`.search` and :mod:`.peaks`): faiss's inverted file bounds the patch distances, only the patches that
could hold each map's peak are searched exactly, and the map is the patch grid upsampled and blurred by two
fixed matrices. The index is rebuilt from the same bank and centroids, so the searches are the torch
scorer's; the export's parity gate compares the two on the validation images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vad.models.patchcore import settings

TAIL_FILE = "patchcore_tail.npz"


def single_threaded_numpy_blas() -> None:
    """Run numpy's own OpenBLAS on one thread from now on, in this process.

    Its threads wait spinning after each product, on the cores the graph runtime's and faiss's threads need next:
    on this 2-core machine the exported PatchCore scored 24.8 images/s with them and 37.0 without (torch: 37.3;
    the exact search, now single-threaded, was no slower). faiss's and the runtimes' own thread pools are left as
    they are. Without threadpoolctl, or with another BLAS in numpy, nothing changes.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    ThreadpoolController().select(prefix="libscipy_openblas").limit(limits=1)


class NumpyBankSearch:
    """The searches of :class:`~vad.models.patchcore.search.BankSearch`, on numpy arrays."""

    def __init__(self, bank: np.ndarray, centroids: np.ndarray) -> None:
        """Build the indexes.

        Args:
            bank: Memory bank (M, D), float32.
            centroids: The inverted file's centroids (lists, D); empty: every search is exact.
        """
        import faiss

        self.faiss = faiss
        single_threaded_numpy_blas()
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.bank_squared = (self.bank * self.bank).sum(axis=1)
        self.bank_scaled_t = np.ascontiguousarray(-2.0 * self.bank.T)  # (D, M): one product, then in place
        self.index = None
        if len(centroids):
            quantizer = faiss.IndexFlatL2(centroids.shape[1])
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            self.index = faiss.IndexIVFFlat(quantizer, centroids.shape[1], centroids.shape[0], faiss.METRIC_L2)
            self.index.add(self.bank)
            self.quantizer = quantizer  # the index refers to it: kept alive here
            self.lists = centroids.shape[0]
        self.exact_maps = self.index is None or len(self.bank) < settings.EXACT_MAP_ROWS

    def exact(self, queries: np.ndarray) -> np.ndarray:
        """Exact distance of each query to its nearest bank row (faiss's brute force for many queries).

        Args:
            queries: (N, D) float32.

        Returns:
            Distances (N,).
        """
        if len(queries) >= settings.FAISS_MIN_QUERIES:
            squared, _ = self.faiss.knn(np.ascontiguousarray(queries), self.bank, 1)
            return np.sqrt(np.maximum(squared[:, 0], 0.0))
        found = []
        for start in range(0, len(queries), settings.QUERY_BLOCK):
            block = queries[start : start + settings.QUERY_BLOCK]
            products = block @ self.bank_scaled_t
            products += self.bank_squared
            squared = products.min(axis=1) + (block * block).sum(1)
            found.append(np.sqrt(np.maximum(squared, 0.0)))
        return np.concatenate(found) if found else np.zeros(0, dtype=np.float32)

    def _ivf(self, queries: np.ndarray, probes: int) -> np.ndarray:
        params = self.faiss.SearchParametersIVF(nprobe=min(probes, self.lists))
        squared, rows = self.index.search(np.ascontiguousarray(queries), 1, params=params)  # type: ignore[union-attr]
        distances = np.sqrt(np.maximum(squared[:, 0], 0.0))
        missing = rows[:, 0] < 0
        if missing.any():
            distances[missing] = self.exact(queries[missing])
        return distances

    def refine(self, queries: np.ndarray) -> np.ndarray:
        """Tighter upper bounds for a few patches (as ``BankSearch.refine``).

        Args:
            queries: (N, D).

        Returns:
            Distances (N,).
        """
        if self.index is None:
            return self.exact(queries)
        return self._ivf(queries, settings.REFINE_PROBES)

    def distances(self, queries: np.ndarray, maps: bool) -> tuple[np.ndarray, bool]:
        """Patch distances: exact, or upper bounds from the inverted file (as ``BankSearch.distances``).

        Args:
            queries: (N, D).
            maps: Whether the distances make a map.

        Returns:
            Distances (N,) and whether they are exact.
        """
        if self.index is None:
            return self.exact(queries), True
        if maps:
            if self.exact_maps:
                return self.exact(queries), True
            return self._ivf(queries, settings.IVF_PROBES), False
        return self._ivf(queries, settings.BOUND_PROBES), False


class PatchcoreTail:
    """Embeddings (B, h, w, D) to raw image scores and maps, as the torch scorer computes them."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        """Build from the exported arrays.

        Args:
            arrays: ``bank``, ``centroids``, ``rows`` (H x h) and ``columns_t`` (w x W); ``head_weights`` and
                ``head_bias`` where the model has a supervised head.
        """
        self.search = NumpyBankSearch(arrays["bank"], arrays["centroids"])
        self.rows = arrays["rows"].astype(np.float32)
        self.columns_t = arrays["columns_t"].astype(np.float32)
        self.rows_reach = (self.rows > 0).astype(np.float32)
        self.columns_reach_t = (self.columns_t > 0).astype(np.float32)
        # the supervised mode's head (absent or empty: none): descriptors as :mod:`.head` computes them
        self.head_weights = arrays.get("head_weights", np.zeros(0, dtype=np.float32)).astype(np.float64)
        self.head_bias = float(arrays["head_bias"][0]) if len(self.head_weights) else 0.0

    @staticmethod
    def save(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
        """Write the tail's arrays into ``models/export`` (``np.savez``: plain arrays, read back without pickles).

        Args:
            folder: ``models/export``.
            arrays: As :class:`PatchcoreTail` takes them.

        Returns:
            The file written.
        """
        path = folder / TAIL_FILE
        np.savez(path, **{name: np.ascontiguousarray(value) for name, value in arrays.items()})
        return path

    @classmethod
    def load(cls, folder: Path) -> PatchcoreTail:
        """Read ``patchcore_tail.npz`` (plain arrays, no pickles).

        Args:
            folder: ``models/export``.

        Returns:
            The tail.
        """
        with np.load(folder / TAIL_FILE, allow_pickle=False) as saved:
            return cls({name: saved[name] for name in saved.files})

    def _blur(self, grids: np.ndarray) -> np.ndarray:
        return self.rows @ grids @ self.columns_t

    def _patches_of(self, pixels: np.ndarray) -> np.ndarray:
        return (self.rows_reach.T @ pixels.astype(np.float32) @ self.columns_reach_t.T) > 0

    def _pixels_of(self, patches: np.ndarray) -> np.ndarray:
        return (self.rows_reach @ patches.astype(np.float32) @ self.columns_reach_t) > 0

    def _exact_peaks(self, queries: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """The maps of bounded patch distances made exact where the peak can be (:func:`.peaks.peak_scores`)."""
        level = np.zeros(patches.shape, dtype=np.int8)  # 0 bounded, 1 refined, 2 exact
        bounded = self._blur(patches)
        maps = bounded.copy()
        active = np.arange(len(patches))
        region = self._patches_of(bounded == bounded.max(axis=(1, 2), keepdims=True))
        while len(active):
            coarse = region & (level[active] == 0)
            step, todo = (1, coarse) if coarse.any() else (2, region & (level[active] == 1))
            sub, level_sub = patches[active], level[active]
            wanted = queries[active][todo]
            sub[todo] = self.search.refine(wanted) if step == 1 else self.search.exact(wanted)
            level_sub[todo] = step
            patches[active], level[active] = sub, level_sub
            bounded = self._blur(sub)
            maps[active] = bounded
            unsettled = self._pixels_of(level_sub != 2)
            floor = np.where(unsettled, -np.inf, bounded).max(axis=(1, 2), keepdims=True)
            top = bounded == bounded.max(axis=(1, 2), keepdims=True)
            candidates = np.where(np.isinf(floor), top, bounded > floor)
            region = self._patches_of(candidates) & (level_sub != 2)
            still = region.reshape(len(region), -1).any(axis=1)
            active, region = active[still], region[still]
        return maps

    def __call__(self, embedding: np.ndarray, maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (B,) and maps (B, H, W) or None (the exact peak; maps as the torch scorer's).

        Args:
            embedding: (B, h, w, D) float32.
            maps: Return the maps.

        Returns:
            Scores and maps.
        """
        batch, height, width, dims = embedding.shape
        queries = np.ascontiguousarray(embedding.reshape(-1, dims), dtype=np.float32)
        distances, exact = self.search.distances(queries, maps)
        patches = distances.reshape(batch, height, width).astype(np.float32)
        bounded = self._blur(patches)
        if not exact:
            bounded = self._exact_peaks(queries.reshape(batch, height, width, dims), patches)
        scores = bounded.max(axis=(1, 2)).astype(np.float32)
        if len(self.head_weights):
            scores = (scores + self._head_offsets(queries.reshape(batch, height * width, dims))).astype(np.float32)
        return scores, bounded.astype(np.float32) if maps else None

    def _head_offsets(self, patches: np.ndarray) -> np.ndarray:
        """The head's score offsets of a batch's patch embeddings (B, h * w, D)."""
        patches = patches.astype(np.float64)
        descriptors = np.concatenate([patches.mean(axis=1), patches.std(axis=1)], axis=1)
        return descriptors @ self.head_weights + self.head_bias
