"""Greedy k-center coreset selection: each pick is the row farthest from the rows picked before it."""

from __future__ import annotations

import torch

from vad.coreset import k_center_greedy


def _reference(features: torch.Tensor, size: int, first: int) -> list[int]:
    """The textbook greedy k-center in float64, on the same (projected) features and first centre."""
    features = features.double()
    chosen = [first]
    nearest = ((features - features[first]) ** 2).sum(dim=1)
    for _ in range(size - 1):
        nearest[chosen] = -1.0
        index = int(torch.argmax(nearest))
        chosen.append(index)
        nearest = torch.minimum(nearest, ((features - features[index]) ** 2).sum(dim=1))
    return chosen


def test_each_pick_is_the_row_farthest_from_the_picks_before_it():
    generator = torch.Generator().manual_seed(5)
    embedding = torch.randn(400, 24, generator=generator) * torch.rand(24, generator=generator) * 3
    picks = k_center_greedy(embedding, 60, seed=3)  # 24 dims <= 64: no projection, the rows themselves
    assert picks.dtype == torch.long and len(set(picks.tolist())) == 60
    assert picks.tolist() == _reference(embedding, 60, int(picks[0]))
    assert torch.equal(picks, k_center_greedy(embedding, 60, seed=3)), "deterministic for a seed"
    assert sorted(k_center_greedy(embedding, 1000).tolist()) == list(range(400)), "a size over N keeps every row"
