"""Nearest memory-bank rows: exact blocked search, and faiss's inverted-file index (plain torch and faiss)."""

from __future__ import annotations

import numpy as np
import torch

QUERY_BLOCK = 2048  # query patches per distance block: 2048 x bank rows x 4 bytes at a time
# Lists visited per query. A fixed count keeps the search cost from growing with the bank: on a 1,024,000-row
# bank (4,096 lists) 16 probes found the exact nearest row for 99.9% of patches and the same image maxima as
# 128 probes (1/32 of the lists), 9x faster; on a 20,480-row bank (512 lists) the recall was 0.992.
IVF_PROBES = 16


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


def _faiss_nearest(faiss: object, index: object, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance and row of each query's nearest neighbour in a faiss index, on torch's thread count."""
    faiss.omp_set_num_threads(torch.get_num_threads())  # type: ignore[attr-defined]
    squared, rows = index.search(np.ascontiguousarray(queries.float().numpy()), 1)  # type: ignore[attr-defined]
    return torch.from_numpy(squared[:, 0]).clamp_min_(0).sqrt_(), torch.from_numpy(rows[:, 0])


class FlatSearch:
    """Exact nearest bank row of each query with faiss's flat index.

    One BLAS product per block of queries with the minimum fused in: about 2.5x faster on this CPU than a
    distance matrix in torch (the same rows, distances within float rounding; tested).
    """

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexFlatL2(bank.shape[1])
        self.index.add(np.ascontiguousarray(bank.float().cpu().numpy()))

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One nearest bank row per query.

        Args:
            queries: Query embeddings (N, D), on the CPU.

        Returns:
            Distances (N,) and bank indices (N,).
        """
        return _faiss_nearest(self.faiss, self.index, queries)


def bank_search(bank: torch.Tensor, centroids: torch.Tensor) -> FlatSearch | IvfSearch:
    """The CPU search of a bank: the inverted-file index when it has centroids, else the exact flat index.

    Args:
        bank: Memory bank (M, D).
        centroids: Its k-means centroids, or an empty tensor.

    Returns:
        The search.
    """
    return IvfSearch(bank, centroids) if centroids.numel() else FlatSearch(bank)


class IvfSearch:
    """faiss's inverted-file index over a bank clustered by ``centroids``.

    A query gets exact distances to the rows of its :data:`IVF_PROBES` nearest lists.
    """

    def __init__(self, bank: torch.Tensor, centroids: torch.Tensor) -> None:
        import faiss  # only models whose bank is large enough to be clustered need it

        self.faiss = faiss
        self.bank = bank
        self.quantizer = faiss.IndexFlatL2(centroids.shape[1])
        self.quantizer.add(np.ascontiguousarray(centroids.float().cpu().numpy()))
        self.index = faiss.IndexIVFFlat(self.quantizer, centroids.shape[1], centroids.shape[0], faiss.METRIC_L2)
        self.index.add(np.ascontiguousarray(bank.float().cpu().numpy()))
        self.index.nprobe = min(IVF_PROBES, centroids.shape[0])

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One nearest bank row per query; a query whose visited lists are all empty is answered exactly.

        Args:
            queries: Query embeddings (N, D), on the CPU.

        Returns:
            Distances (N,) and bank indices (N,).
        """
        distances, indices = _faiss_nearest(self.faiss, self.index, queries)
        missing = indices < 0
        if bool(missing.any()):
            distances[missing], indices[missing] = exact_nearest(self.bank, queries[missing], 1)
        return distances, indices
