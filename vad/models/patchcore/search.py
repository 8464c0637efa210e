"""Nearest memory-bank rows in numpy and faiss: exact search, and faiss's inverted file (no torch here).

:class:`BankIndex` holds both for one bank. It is the one search every PatchCore scoring path uses on the CPU:
the model while it validates, the torch scorer of a loaded model and the exported runtime's tail
(:mod:`.tail`). Image scores never depend on the inverted file: it only gives upper bounds of the patch
distances, and :func:`.peaks.peak_maps` searches exactly every patch that could hold the map's peak.
The thresholds below live in :mod:`.settings` and are read when an index is built.
"""

from __future__ import annotations

import numpy as np

from vad.models.patchcore import settings


def cluster_bank(bank: np.ndarray, seed: int, threads: int | None = None) -> np.ndarray:
    """k-means centroids of a bank for its inverted file (about ``ROWS_PER_LIST`` rows per list), or none.

    Args:
        bank: Memory bank (M, D).
        seed: Seed of the clustering.
        threads: faiss's thread count (None: faiss's default).

    Returns:
        Centroids (lists, D), float32; empty (0, D) for banks under ``BOUND_MIN_ROWS`` rows.
    """
    import faiss

    rows, dims = bank.shape
    if rows < settings.BOUND_MIN_ROWS:
        return np.zeros((0, dims), dtype=np.float32)
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    lists = min(settings.MAX_LISTS, rows // settings.ROWS_PER_LIST)
    kmeans = faiss.Kmeans(dims, lists, niter=20, seed=seed, max_points_per_centroid=256)
    kmeans.train(np.ascontiguousarray(bank, dtype=np.float32))
    if kmeans.centroids is None:  # set by train; faiss types it as optional
        msg = "faiss k-means trained without centroids"
        raise RuntimeError(msg)
    return kmeans.centroids.copy()


def query_block(bank_rows: int) -> int:
    """Queries per block of a blocked exact search: ``QUERY_BLOCK``, fewer where the block would pass ``BLOCK_BYTES``.

    Args:
        bank_rows: Rows of the bank searched.

    Returns:
        The block's query count (at least 1).
    """
    return max(1, min(settings.QUERY_BLOCK, settings.BLOCK_BYTES // (4 * max(1, bank_rows))))


class BankIndex:
    """Every search of one memory bank: exact rows, and inverted-file distances (upper bounds) where they pay.

    - Without centroids every search is exact.
    - Exact distances come from faiss's brute-force ``knn`` for ``FAISS_MIN_QUERIES`` queries or more (one BLAS
      product per block with the minimum fused in: 1.6-2.3x faster on this CPU on 4,096 queries), else from a
      blocked product against the bank.
    - Maps of banks under ``EXACT_MAP_ROWS`` rows are exact; of larger banks, inverted-file distances with
      ``IVF_PROBES`` probes. Bounds for image scores use ``BOUND_PROBES``; :meth:`refine` ``REFINE_PROBES``.
    """

    def __init__(self, bank: np.ndarray, centroids: np.ndarray, threads: int | None = None) -> None:
        """Build the indexes, once.

        Args:
            bank: Memory bank (M, D); a float32 C-contiguous array is used as it is (no copy).
            centroids: The inverted file's centroids (lists, D); empty: every search is exact.
            threads: faiss's thread count for each search (None: faiss's default).
        """
        import faiss

        self.faiss = faiss
        self.threads = threads
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.bank_squared = np.einsum("ij,ij->i", self.bank, self.bank)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32).reshape(-1, self.bank.shape[1])
        self.index = None
        if len(self.centroids):
            self.quantizer = faiss.IndexFlatL2(self.centroids.shape[1])  # the index refers to it: kept alive here
            self.quantizer.add(self.centroids)
            self.index = faiss.IndexIVFFlat(self.quantizer, self.centroids.shape[1], len(self.centroids))
            self.index.add(self.bank)
        self.exact_maps = self.index is None or len(self.bank) < settings.EXACT_MAP_ROWS

    def _threads(self) -> None:
        if self.threads is not None:
            self.faiss.omp_set_num_threads(self.threads)

    def exact_rows(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest bank row of each query.

        Args:
            queries: (N, D) float32.

        Returns:
            Distances (N,) float32 and rows (N,) int64.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) >= settings.FAISS_MIN_QUERIES:
            self._threads()
            squared, rows = self.faiss.knn(queries, self.bank, 1)
            return np.sqrt(np.maximum(squared[:, 0], 0.0)), rows[:, 0]
        distances, found = [], []
        step = query_block(len(self.bank))
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            products = (block * np.float32(-2.0)) @ self.bank.T  # the bank transposed in place: no copy of it
            products += self.bank_squared
            rows = products.argmin(axis=1)
            squared = products[np.arange(len(block)), rows] + np.einsum("ij,ij->i", block, block)
            distances.append(np.sqrt(np.maximum(squared, 0.0)))
            found.append(rows)
        if not distances:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(distances).astype(np.float32), np.concatenate(found).astype(np.int64)

    def exact(self, queries: np.ndarray) -> np.ndarray:
        """Exact distance of each query to its nearest bank row.

        Args:
            queries: (N, D) float32.

        Returns:
            Distances (N,).
        """
        return self.exact_rows(queries)[0]

    def _ivf(self, queries: np.ndarray, probes: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest row among each query's ``probes`` nearest lists (a query whose lists are empty: exact)."""
        if self.index is None:
            return self.exact_rows(queries)
        self._threads()
        # faiss's generated stub omits the keyword arguments its Python wrapper accepts
        params = self.faiss.SearchParametersIVF(nprobe=min(probes, len(self.centroids)))  # type: ignore[call-arg]
        squared, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), 1, params=params)
        distances, rows = np.sqrt(np.maximum(squared[:, 0], 0.0)), rows[:, 0]
        missing = rows < 0
        if missing.any():
            distances[missing], rows[missing] = self.exact_rows(queries[missing])
        return distances, rows

    def refine(self, queries: np.ndarray) -> np.ndarray:
        """Tighter upper bounds than :meth:`distances` gives (more lists visited), or exact without an index.

        Args:
            queries: (N, D).

        Returns:
            Distances (N,), never below the exact ones and never above the first bounds.
        """
        if self.index is None:
            return self.exact(queries)
        return self._ivf(queries, settings.REFINE_PROBES)[0]

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest bank row of each query as maps use them (see the class).

        Args:
            queries: (N, D).

        Returns:
            Distances (N,) and rows (N,).
        """
        if self.exact_maps:
            return self.exact_rows(queries)
        return self._ivf(queries, settings.IVF_PROBES)

    def distances(self, queries: np.ndarray, maps: bool) -> tuple[np.ndarray, bool]:
        """Patch distances: exact, or upper bounds from the inverted file.

        Args:
            queries: (N, D).
            maps: Whether the distances make a map (else they only bound the image score).

        Returns:
            Distances (N,) and whether they are exact.
        """
        if self.index is None:
            return self.exact(queries), True
        if maps:
            return self.nearest(queries)[0], self.exact_maps
        return self._ivf(queries, settings.BOUND_PROBES)[0], False
