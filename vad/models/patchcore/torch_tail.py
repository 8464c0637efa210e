"""PatchCore's scoring after the embedding for the torch callers (the model and the loaded model's scorer).

On the CPU they hand the embeddings to :class:`~.tail.PatchcoreTail`, the code the exported runtime runs, so
every runtime scores with one definition. Off the CPU (a GPU) the bank is searched exactly in torch, every patch
(no inverted file there, so no bounds and no peak search): the same map, the same upsample-and-blur matrices
and the same head.
"""

from __future__ import annotations

import numpy as np
import torch

from vad.models.maps import UpsampleBlur
from vad.models.patchcore import settings
from vad.models.patchcore.peaks import GridBlur
from vad.models.patchcore.search import BankIndex, cluster_bank, query_block
from vad.models.patchcore.tail import PatchcoreTail


def exact_nearest(bank: torch.Tensor, queries: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest bank rows of each query in torch (any device), as anomalib's ``nearest_neighbors`` returns them.

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
    for block in queries.split(query_block(len(bank))):
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


def search_centroids(bank: torch.Tensor, centroids: torch.Tensor, exact_only: bool) -> np.ndarray:
    """The centroids a bank is searched with: none for ``search: exact`` and small banks, else the saved ones.

    A large bank saved without centroids (models from before the bounds) is clustered here, seed 0.

    Args:
        bank: Memory bank (M, D).
        centroids: Its saved centroids (empty: none saved).
        exact_only: ``search: exact``.

    Returns:
        Centroids (lists, D), float32; empty for an exact search.
    """
    dims = bank.shape[1]
    if exact_only or len(bank) < settings.BOUND_MIN_ROWS:
        return np.zeros((0, dims), dtype=np.float32)
    if centroids.numel():
        return centroids.detach().float().cpu().numpy().reshape(-1, dims)
    return cluster_bank(bank.detach().float().cpu().numpy(), seed=0, threads=torch.get_num_threads())


class TorchTail:
    """One memory bank's scoring for torch callers: :class:`PatchcoreTail` on the CPU, exact torch elsewhere."""

    def __init__(
        self,
        bank: torch.Tensor,
        centroids: torch.Tensor,
        kernel: torch.Tensor,
        size: tuple[int, int],
        head: tuple[torch.Tensor, torch.Tensor] | None,
        exact_only: bool,
    ) -> None:
        """Keep what the tail is built from (built on the first batch: its grid gives the blur matrices).

        Args:
            bank: Memory bank (M, D).
            centroids: Its saved k-means centroids (empty: none).
            kernel: anomalib's blur kernel buffer.
            size: The map size (H, W): the model's input size.
            head: The supervised head's weights and bias, or None (empty tensors: none too).
            exact_only: ``search: exact``.
        """
        self.bank = bank
        self.centroids = search_centroids(bank, centroids, exact_only)
        self.kernel = kernel.detach().cpu()
        self.size = (int(size[0]), int(size[1]))
        weights, bias = head if head is not None else (torch.empty(0), torch.empty(0))
        self.head_weights = weights.detach().float().cpu().numpy().reshape(-1)
        self.head_bias = float(bias.reshape(-1)[0]) if bias.numel() else 0.0
        self._index: BankIndex | None = None
        self._banks: dict[torch.device, torch.Tensor] = {}  # float32 copies of the bank on other devices
        self._tail: PatchcoreTail | None = None

    @property
    def index(self) -> BankIndex:
        """The bank's searches (numpy and faiss, on a view of a float32 CPU bank), built once."""
        if self._index is None:
            bank = self.bank.detach().float().cpu().numpy()
            self._index = BankIndex(bank, self.centroids, threads=torch.get_num_threads())
        return self._index

    def tail(self, grid: tuple[int, int]) -> PatchcoreTail:
        """The numpy tail of a patch grid (h, w), built once.

        Args:
            grid: (h, w).

        Returns:
            The tail.
        """
        grid = (int(grid[0]), int(grid[1]))  # a trace gives sizes as tensors
        if (
            self._tail is None
            or self._tail.blur.rows.shape[1] != grid[0]
            or self._tail.blur.columns_t.shape[0] != grid[1]
        ):
            blur = UpsampleBlur(grid, self.size, self.kernel)
            grid_blur = GridBlur(blur.rows.numpy(), blur.columns_t.numpy())
            self._tail = PatchcoreTail(self.index, grid_blur, self.head_weights, self.head_bias)
        return self._tail

    def _bank_on(self, device: torch.device) -> torch.Tensor:
        """The bank in float32 on a device, copied there once."""
        if device not in self._banks:
            self._banks[device] = self.bank.detach().to(device=device, dtype=torch.float32)
        return self._banks[device]

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest bank row of each query as maps use them (the inverted file for large banks on the CPU).

        Args:
            queries: (N, D).

        Returns:
            Distances (N,) and bank rows (N,).
        """
        if queries.device.type != "cpu":
            return exact_nearest(self._bank_on(queries.device), queries.float(), 1)
        distances, rows = self.index.nearest(queries.detach().float().numpy())
        return torch.from_numpy(distances), torch.from_numpy(rows)

    def __call__(self, embedding: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image scores (B,) and, on request, anomaly maps (B, 1, H, W) of patch embeddings (B, h, w, D).

        Args:
            embedding: The embeddings.
            maps: Compute the maps (else None, and only the patches that can hold each peak are searched exactly).

        Returns:
            Scores and maps, on the embedding's device.
        """
        if embedding.device.type != "cpu":
            return self.exact_in_torch(embedding, maps)
        tail = self.tail((embedding.shape[1], embedding.shape[2]))
        found_scores, found_maps = tail(embedding.detach().float().numpy(), maps)
        cpu_maps = torch.from_numpy(found_maps).unsqueeze(1) if found_maps is not None else None
        return torch.from_numpy(found_scores), cpu_maps

    def exact_in_torch(self, embedding: torch.Tensor, maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every patch searched exactly in torch, on the embedding's device (how a GPU scores).

        The same map as the tail's exact search (the same blur matrices, the same head), without the inverted
        file's bounds: a GPU searches a whole batch's patches in one product.

        Args:
            embedding: Patch embeddings (B, h, w, D).
            maps: Return the maps.

        Returns:
            Scores (B,) and maps (B, 1, H, W) or None, on the embedding's device.
        """
        batch, height, width, dims = embedding.shape
        tail = self.tail((height, width))
        device = embedding.device
        queries = embedding.reshape(-1, dims).float()
        distances = exact_nearest(self._bank_on(device), queries, 1)[0].reshape(batch, height, width)
        rows, columns_t = (torch.from_numpy(matrix).to(device) for matrix in (tail.blur.rows, tail.blur.columns_t))
        anomaly_maps = rows @ distances @ columns_t
        scores = anomaly_maps.amax(dim=(1, 2))
        if len(tail.head_weights):
            offsets = tail.head(embedding.detach().float().cpu().numpy())
            scores = scores + torch.from_numpy(offsets).to(device).to(scores.dtype)
        return scores, anomaly_maps.unsqueeze(1) if maps else None
