"""Nearest memory-bank rows: exact blocked search, and faiss's inverted-file index (plain torch and faiss).

:class:`BankSearch` holds both for one bank. Image scores never depend on the inverted file: it only gives
upper bounds of the patch distances, and :func:`vad.models.patchcore.peaks.peak_scores` searches
exactly every patch that could hold the map's peak.
"""

from __future__ import annotations

import numpy as np
import torch

from vad.models.patchcore.settings import (
    BOUND_MIN_ROWS,
    BOUND_PROBES,
    EXACT_MAP_ROWS,
    FAISS_MIN_QUERIES,
    IVF_PROBES,
    MAX_LISTS,
    QUERY_BLOCK,
    REFINE_PROBES,
    ROWS_PER_LIST,
)


def exact_nearest(bank: torch.Tensor, queries: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest bank rows of each query, as anomalib's ``nearest_neighbors`` returns them.

    anomalib materialises the full query x bank distance matrix and takes its square root
    everywhere; here each block of queries is one ``addmm`` against the bank and its squared norms,
    the minimum is taken on squared distances, and only the winners get the query norm and the
    square root.

    Args:
        bank: Memory bank (M, D).
        queries: Query embeddings (N, D).
        n_neighbors: Neighbours to return per query.

    Returns:
        Distances (N,) or (N, k) and bank indices of the same shape.
    """
    bank_squared = (bank * bank).sum(dim=1)  # ~D x bank rows: nothing beside the addmm's N x that
    distances, indices = [], []
    for block in queries.split(QUERY_BLOCK):
        squared = torch.addmm(bank_squared.unsqueeze(0), block, bank.T, beta=1.0, alpha=-2.0)
        if n_neighbors == 1:
            value, index = squared.min(dim=1)
            value = value + (block * block).sum(dim=1)
        else:
            value, index = squared.topk(k=n_neighbors, largest=False, dim=1)
            value = value + (block * block).sum(dim=1, keepdim=True)
        distances.append(value.clamp_min_(0).sqrt_())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def _faiss_nearest(
    faiss: object, index: object, queries: torch.Tensor, params: object = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance and row of each query's nearest neighbour in a faiss index, on torch's thread count."""
    faiss.omp_set_num_threads(torch.get_num_threads())  # type: ignore[attr-defined]
    matrix = np.ascontiguousarray(queries.float().numpy())
    squared, rows = index.search(matrix, 1, params=params)  # type: ignore[attr-defined]
    return torch.from_numpy(squared[:, 0]).clamp_min_(0).sqrt_(), torch.from_numpy(rows[:, 0])


class FlatSearch:
    """Exact nearest bank row of each query with faiss's brute-force ``knn`` on the bank's own memory (no copy).

    One BLAS product per block of queries with the minimum fused in: 1.6-2.3x faster on this CPU than the
    blocked product of :func:`exact_nearest` in torch on 4,096 queries, slower on a few hundred (the same rows,
    distances within float rounding; tested).
    """

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        self.faiss = faiss
        self.bank = np.ascontiguousarray(bank.detach().float().cpu().numpy())  # a view of a float32 CPU bank

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One nearest bank row per query.

        Args:
            queries: Query embeddings (N, D), on the CPU.

        Returns:
            Distances (N,) and bank indices (N,).
        """
        self.faiss.omp_set_num_threads(torch.get_num_threads())
        squared, rows = self.faiss.knn(np.ascontiguousarray(queries.float().numpy()), self.bank, 1)
        return torch.from_numpy(squared[:, 0]).clamp_min_(0).sqrt_(), torch.from_numpy(rows[:, 0])


def cluster_bank(bank: torch.Tensor, seed: int) -> torch.Tensor:
    """k-means centroids of a bank for its inverted file (about ``ROWS_PER_LIST`` rows per list), or none.

    Args:
        bank: Memory bank (M, D).
        seed: Seed of the clustering.

    Returns:
        Centroids (lists, D) on the bank's device; empty for banks under ``BOUND_MIN_ROWS`` rows.
    """
    import faiss

    rows, dims = bank.shape
    if rows < BOUND_MIN_ROWS:
        return torch.empty(0, device=bank.device)
    faiss.omp_set_num_threads(torch.get_num_threads())
    kmeans = faiss.Kmeans(dims, min(MAX_LISTS, rows // ROWS_PER_LIST), niter=20, seed=seed, max_points_per_centroid=256)
    kmeans.train(np.ascontiguousarray(bank.float().cpu().numpy()))
    return torch.from_numpy(kmeans.centroids.copy()).to(bank.device)


class IvfSearch:
    """faiss's inverted-file index over a bank clustered by ``centroids``.

    A query gets exact distances to the rows of its ``probes`` nearest lists: its distance to the nearest of
    those rows, never less than its distance to the nearest bank row.
    """

    def __init__(self, bank: torch.Tensor, centroids: torch.Tensor) -> None:
        import faiss  # only models whose bank is large enough to be clustered need it

        self.faiss = faiss
        self.bank = bank
        self.quantizer = faiss.IndexFlatL2(centroids.shape[1])
        self.quantizer.add(np.ascontiguousarray(centroids.float().cpu().numpy()))
        self.index = faiss.IndexIVFFlat(self.quantizer, centroids.shape[1], centroids.shape[0], faiss.METRIC_L2)
        self.index.add(np.ascontiguousarray(bank.float().cpu().numpy()))
        self.lists = centroids.shape[0]
        self.centroids = centroids  # what an export rebuilds the same index from

    def nearest(self, queries: torch.Tensor, probes: int = IVF_PROBES) -> tuple[torch.Tensor, torch.Tensor]:
        """One nearest bank row per query among its visited lists (all lists empty: answered exactly).

        Args:
            queries: Query embeddings (N, D), on the CPU.
            probes: Lists visited per query.

        Returns:
            Distances (N,) and bank indices (N,).
        """
        params = self.faiss.SearchParametersIVF(nprobe=min(probes, self.lists))
        distances, indices = _faiss_nearest(self.faiss, self.index, queries, params)
        missing = indices < 0
        if bool(missing.any()):
            distances[missing], indices[missing] = exact_nearest(self.bank, queries[missing], 1)
        return distances, indices


class BankSearch:
    """Every search of one memory bank: exact rows, and inverted-file distances (upper bounds) where they pay.

    - Banks under ``BOUND_MIN_ROWS`` rows, ``exact_only`` models and banks off the CPU: always exact.
    - Exact distances come from :class:`FlatSearch` for ``FAISS_MIN_QUERIES`` queries or more on the CPU,
      else from the blocked product of :func:`exact_nearest`.
    - Maps of banks under ``EXACT_MAP_ROWS`` rows are exact; of larger banks, inverted-file distances with
      ``IVF_PROBES`` probes. Bounds for image scores use ``BOUND_PROBES``.
    """

    def __init__(self, bank: torch.Tensor, centroids: torch.Tensor, exact_only: bool = False) -> None:
        """Prepare the searches (the flat and inverted-file indexes are built here, once).

        Args:
            bank: Memory bank (M, D).
            centroids: Its k-means centroids (:func:`cluster_bank`); empty: clustered here when the bank is
                large enough (models saved before the bounds).
            exact_only: Never use the inverted file (``search: exact``).
        """
        self.bank = bank
        rows = len(bank)
        on_cpu = bank.device.type == "cpu"
        self.flat = FlatSearch(bank) if on_cpu else None
        self.ivf: IvfSearch | None = None
        if on_cpu and not exact_only and rows >= BOUND_MIN_ROWS:
            self.ivf = IvfSearch(bank, centroids if centroids.numel() else cluster_bank(bank, seed=0))
        self.exact_maps = self.ivf is None or rows < EXACT_MAP_ROWS

    def exact(self, queries: torch.Tensor) -> torch.Tensor:
        """Exact distance of each query to its nearest bank row.

        Args:
            queries: Query embeddings (N, D).

        Returns:
            Distances (N,).
        """
        return self._exact_rows(queries)[0]

    def refine(self, queries: torch.Tensor) -> torch.Tensor:
        """Tighter upper bounds of the patch distances than :meth:`distances` gives: more lists visited.

        Args:
            queries: Query embeddings (N, D), on the CPU (only banks with an inverted file are refined).

        Returns:
            Distances (N,), never below the exact ones and never above the first bounds.
        """
        if self.ivf is None:
            return self.exact(queries)
        return self.ivf.nearest(queries, REFINE_PROBES)[0]

    def _exact_rows(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest rows: faiss's brute force for many queries on the CPU, else the blocked product."""
        if self.flat is not None and queries.device.type == "cpu" and len(queries) >= FAISS_MIN_QUERIES:
            return self.flat.nearest(queries)
        return exact_nearest(self.bank.to(queries.device), queries, 1)

    def maps_are_exact(self, queries: torch.Tensor) -> bool:
        """Whether :meth:`nearest` searches these queries exactly.

        Args:
            queries: Query embeddings (N, D).

        Returns:
            True unless the inverted file answers them.
        """
        return self.exact_maps or queries.device.type != "cpu"

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest bank row of each query as maps use them (see the class).

        Args:
            queries: Query embeddings (N, D).

        Returns:
            Distances (N,) and bank indices (N,).
        """
        if not self.maps_are_exact(queries):
            return self.ivf.nearest(queries, IVF_PROBES)  # type: ignore[union-attr]
        return self._exact_rows(queries)

    def distances(self, queries: torch.Tensor, maps: bool) -> tuple[torch.Tensor, bool]:
        """Patch distances: exact, or upper bounds from the inverted file.

        Args:
            queries: Query embeddings (N, D).
            maps: Whether the distances make a map (else they only bound the image score).

        Returns:
            Distances (N,) and whether they are exact.
        """
        if maps or self.ivf is None or queries.device.type != "cpu":
            return self.nearest(queries)[0], self.maps_are_exact(queries)
        return self.ivf.nearest(queries, BOUND_PROBES)[0], False
