"""The trials' shared memo of backbone features (and coreset picks): exact, bounded, keyed by weights, opt-in."""

from __future__ import annotations

import copy
import functools
import logging

import numpy as np
import pytest
import torch
from conftest import make_dataset

from vad.models import ModelSpec, entry, feature_cache
from vad.models.base import FitData, FitOptions
from vad.models.factory import build_model
from vad.models.feature_cache import ByteBoundedMemo, backbone_features, fingerprint
from vad.models.patchcore import model as patchcore_model
from vad.models.patchcore import settings

LOGGER = logging.getLogger("assets.test")
SIZE = 32  # 4 x 4 patches at resnet18's layer2
LAYERS = {
    "patchcore": ["layer2", "layer3"],
    "padim": ["layer1", "layer2"],
    "fastflow": ["layer1", "layer2"],
    "supersimplenet": ["layer2", "layer3"],
}
PARAMS = {
    "patchcore": {"coreset_sampling_ratio": 0.5},
    "padim": {"n_features": 20},
    "fastflow": {"flow_steps": 2},
    "supersimplenet": {},
}


class CountingBackbone(torch.nn.Module):
    """Runs a backbone and counts the images it is given."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.images += len(images)
        return self.inner(images)


class ListOut(torch.nn.Module):
    """A one-layer backbone: a list of one feature map, as timm's feature extractors return them."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.inner(images)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = make_dataset(tmp_path_factory.mktemp("data"), n_train=12, n_valid_ok=2, n_valid_ng=2, size=SIZE)
    good = sorted(str(p) for p in (folder / "good").glob("*.png"))
    valid = FitData(good[12:] + sorted(str(p) for p in (folder / "bad").glob("*.png")), np.array([0, 0, 1, 1], bool))
    return FitData(good[:12]), valid


@functools.cache
def _built(model_name: str, seed: int, params: tuple):
    values = {"backbone": "resnet18", "layers": LAYERS[model_name], **PARAMS[model_name], **dict(params)}
    spec = ModelSpec(model_name, (SIZE, SIZE), (0.5,) * 3, (0.5,) * 3, entry(model_name).params(**values))
    torch.manual_seed(seed)
    return build_model(spec, pretrained=False)


def build(model_name: str, seed: int = 0, **params):
    """A resnet18 model with seeded random weights (the same seed, the same weights), counting its backbone's images."""
    model = copy.deepcopy(_built(model_name, seed, tuple(sorted(params.items()))))
    counting = CountingBackbone(model.scoring_backbone())
    model.scoring_backbone = lambda: counting  # the model runs its backbone through the counter
    return model, counting


def fitted(model_name: str, train, valid, seed: int = 0, **params):
    model, counting = build(model_name, seed, **params)
    torch.manual_seed(1)
    model.fit(train, valid, FitOptions(batch_size=4, max_epochs=1, seed=0, monitor="image_AUROC"), LOGGER)
    return model, counting


def test_the_memo_is_off_by_default_and_off_again_after_its_block():
    assert feature_cache.active() is None
    with feature_cache.enabled(max_bytes=1024) as cache:
        assert feature_cache.active() is cache
        with feature_cache.suspended():
            assert feature_cache.active() is None
        assert feature_cache.active() is cache
    assert feature_cache.active() is None
    net = CountingBackbone(ListOut(torch.nn.Conv2d(3, 2, 3)))
    backbone_features(net, ["conv"], torch.ones(2, 3, 8, 8))
    backbone_features(net, ["conv"], torch.ones(2, 3, 8, 8))
    assert net.images == 4, "outside the block every call runs the backbone"


@pytest.mark.parametrize("model_name", ["patchcore", "padim", "fastflow", "supersimplenet"])
def test_cached_fits_and_scores_are_bit_identical_and_a_second_fit_runs_no_backbone(images, model_name, monkeypatch):
    train, valid = images
    monkeypatch.setattr(patchcore_model, "CHUNK_PATCHES", 64)  # chunks of the streamed coreset, with tiny images
    monkeypatch.setattr(settings, "BOUND_MIN_ROWS", 64)  # and a bank large enough to be clustered
    probe = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    alone, _ = fitted(model_name, train, valid)
    expected_scores, expected_maps = alone.score(probe)
    with feature_cache.enabled() as cache:
        cold, cold_counter = fitted(model_name, train, valid)
        warm, warm_counter = fitted(model_name, train, valid)
        assert cold_counter.images > 0 and warm_counter.images == 0, "the second fit reads every feature from the memo"
        scores, maps = warm.score(probe)
        epochs_chosen = model_name in ("fastflow", "supersimplenet")  # they pick their epoch on validation
        validated = len(valid.files) if epochs_chosen else 0
        assert cache.stats.entries == len(train.files) + validated + len(probe)
    for model in (cold, warm):
        state, reference = model.state_dict(), alone.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[key], reference[key]) for key in state), model_name
    assert np.array_equal(scores, expected_scores) and np.array_equal(maps, expected_maps)
    if model_name == "patchcore":
        assert alone.search_centroids.numel() > 0, "the bank is large enough to be clustered"
        assert cache.results.stats.hits > 0, "the second fit reuses the coreset picks and the centroids"


def test_a_patchcore_fit_that_differs_only_in_scoring_reuses_the_coreset(images):
    train, valid = images
    with feature_cache.enabled() as cache:
        first, _ = fitted("patchcore", train, valid, image_score="map_max", num_neighbors=9)
        picks = cache.results.stats.misses
        second, counter = fitted("patchcore", train, valid, image_score="reweighted", num_neighbors=3)
        assert cache.results.stats.misses == picks and cache.results.stats.hits == picks
        third, _ = fitted("patchcore", train, valid, coreset_sampling_ratio=0.25)
        assert cache.results.stats.misses > picks, "another ratio is another selection"
    assert counter.images == 0
    assert torch.equal(first.memory_bank, second.memory_bank)
    assert not torch.equal(first.memory_bank, third.memory_bank)


@pytest.mark.slow
def test_different_weights_or_layers_never_share_features(images):
    train, valid = images
    with feature_cache.enabled() as cache:
        fitted("padim", train, valid, seed=0)
        other, counter = fitted("padim", train, valid, seed=1)  # other random weights
        assert counter.images == len(train.files), "no feature of other weights is served"
        assert cache.stats.entries == 2 * len(train.files)
    alone, _ = fitted("padim", train, valid, seed=1)
    assert torch.equal(other.gaussian.mean, alone.gaussian.mean)
    net = torch.nn.Conv2d(3, 2, 3)
    assert fingerprint(net, ["a"]) != fingerprint(net, ["b"])
    changed = torch.nn.Conv2d(3, 2, 3)
    changed.load_state_dict(net.state_dict())
    assert fingerprint(changed, ["a"]) == fingerprint(net, ["a"])
    with torch.no_grad():
        changed.weight[0, 0, 0, 0] += 1e-6
    assert fingerprint(changed, ["a"]) != fingerprint(net, ["a"])


def test_pretrained_and_random_weights_of_one_backbone_have_other_fingerprints():
    spec = ModelSpec(
        "patchcore",
        (64, 64),
        (0.5,) * 3,
        (0.5,) * 3,
        entry("patchcore").params(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"]),
    )
    pretrained, random = build_model(spec, pretrained=True), build_model(spec, pretrained=False)
    layers = spec.layers
    assert fingerprint(pretrained.scoring_backbone(), layers) != fingerprint(random.scoring_backbone(), layers)
    with feature_cache.enabled() as cache:
        image = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        first = pretrained._embedding_map(image)
        second = random._embedding_map(image)
        assert cache.stats.hits == 0 and cache.stats.misses == 4
    assert not torch.equal(first, second)


def test_a_weight_changed_in_place_gets_a_new_fingerprint():
    net = ListOut(torch.nn.Conv2d(3, 2, 3))
    image = torch.randn(1, 3, 8, 8)
    with feature_cache.enabled() as cache:
        before = backbone_features(net, ["conv"], image)[0]
        with torch.no_grad():
            net.inner.weight.add_(1.0)
        after = backbone_features(net, ["conv"], image)[0]
        assert cache.stats.misses == 2
    assert not torch.equal(before, after)


def test_a_batch_of_other_images_but_the_same_size_hits_and_keeps_the_layout():
    net = ListOut(torch.nn.Conv2d(3, 4, 3)).eval()
    images = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with feature_cache.enabled() as cache:
        backbone_features(net, ["0"], images[:3])
        backbone_features(net, ["0"], images[3:])
        (mixed,) = backbone_features(net, ["0"], images[[4, 0, 2]])
        assert cache.stats.hits == 3
        backbone_features(net, ["0"], images[:2])  # another batch size: computed, not served
        assert cache.stats.hits == 3
    (expected,) = backbone_features(net, ["0"], images[[4, 0, 2]])
    assert torch.equal(mixed, expected)
    assert mixed.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
        memory_format=torch.channels_last
    )


def test_the_memo_drops_the_least_recently_used_values_beyond_its_bytes():
    memo = ByteBoundedMemo(max_bytes=3 * 400)
    for key in "abc":
        memo.put(key, (torch.zeros(100),))  # 400 bytes each
    assert memo.get("a") is not None  # now the most recently used
    memo.put("d", (torch.zeros(100),))
    assert memo.get("b") is None and memo.get("a") is not None and memo.get("d") is not None
    assert memo.stats.bytes == 1200 and memo.stats.entries == 3 and memo.stats.evictions == 1
    memo.put("huge", (torch.zeros(1000),))
    assert memo.get("huge") is None and memo.stats.bytes == 1200, "a value over the whole budget is not kept"
    net = ListOut(torch.nn.Conv2d(3, 2, 3))  # 2 x 6 x 6 floats = 288 bytes per image
    with feature_cache.enabled(max_bytes=16 * 40) as cache:  # 600 bytes of features: two images
        for seed in range(5):
            backbone_features(net, ["conv"], torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))
        assert cache.stats.bytes <= cache.max_bytes and (cache.stats.entries, cache.stats.evictions) == (2, 3)
