"""Every registry backbone trains, saves, reloads and scores with both models (tiny images)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from anomalib.models.image.fastflow.loss import FastflowLoss
from conftest import defect, texture
from safetensors.torch import load_file

from vad.backbones import BACKBONES, default_layers
from vad.calibration import Calibration
from vad.models import ModelSpec, entry
from vad.models.factory import build_model, load, save
from vad.models.fastflow.model import fit_fastflow

OFFLINE = {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenetv2_100"}
LOGGER = logging.getLogger("assets.test")
CALIBRATION = Calibration(0.0, -1.0, 1.0, "good", "bad", "F1", 0.8)


def make_spec(model_name, backbone, layers, size=(64, 64), **params):
    values = {"backbone": backbone, "layers": list(layers), **params}
    return ModelSpec(model_name, tuple(size), (0.5,) * 3, (0.5,) * 3, entry(model_name).params(**values))


def write_format_1(folder, spec):
    """Rewrite a saved model's config in the layout of models saved before format 2 (flat spec, no image_score)."""
    flat = {"model_name": spec.model_name, "backbone": spec.backbone, "layers": spec.layers}
    flat |= {"input_size": list(spec.input_size), "mean": list(spec.mean), "std": list(spec.std), "extra": {}}
    flat |= {"coreset_sampling_ratio": 0.1, "num_neighbors": 9, "search": "auto", "flow_steps": 8}
    flat |= {"hidden_ratio": 1.0, "conv3x3_only": False}
    scoring = {"threshold": 0.0, "min": -1.0, "max": 1.0, "ok_class": "good", "ng_name": "bad"}
    scoring |= {"threshold_method": "F1", "percentile": 0.8, "weights_source": "x", "fit_seconds": 1.5}
    (folder / "train_config.json").write_text(json.dumps({"model": flat, "scoring": scoring}), encoding="utf-8")
    (folder / "calibration.json").unlink()


def predict(model, images):
    return model.score(images)


def batch(rng: np.random.Generator, count: int, bad: bool = False) -> torch.Tensor:
    images = [defect(rng, texture(rng)) if bad else texture(rng) for _ in range(count)]
    array = np.stack(images).astype(np.float32) / 255.0
    return torch.from_numpy((array - 0.5).transpose(0, 3, 1, 2) / 0.5)


@pytest.mark.parametrize("model_name", ["patchcore", "fastflow"])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.slow
def test_backbone_trains_saves_and_scores(tmp_path, backbone, model_name):
    extra = {"flow_steps": 2} if model_name == "fastflow" else {}
    spec = make_spec(model_name, backbone, default_layers(backbone), **extra)
    model = build_model(spec, pretrained=backbone in OFFLINE)
    assert model.weights_source.startswith("package") == (backbone in OFFLINE)
    rng = np.random.default_rng(0)
    train = [batch(rng, 4) for _ in range(3)]
    if model_name == "patchcore":
        model.fit_bank(iter(train), 12, 0.1, 0, LOGGER)
        assert len(model.memory_bank) == int(12 * (64 // 8) ** 2 * 0.1)  # stride-8 patches
    else:
        features = [model.extract(images) for images in train]
        criterion = FastflowLoss()

        def evaluate(current):
            current.train()
            with torch.no_grad():
                loss = float(criterion(*current.flow(features[0])))
            current.eval()
            return {"loss": loss}

        fit_fastflow(model, lambda: features, evaluate, 2, "loss", 1, LOGGER)
    good, bad = batch(rng, 3), batch(rng, 3, bad=True)
    scores, maps = predict(model, torch.cat([good, bad]))
    assert maps.shape == (6, 64, 64) and np.isfinite(scores).all()
    save(model, CALIBRATION, {}, tmp_path)
    loaded = load(tmp_path)
    again, loaded_spec = loaded.model, loaded.spec
    assert loaded_spec == spec and loaded.calibration == CALIBRATION
    assert np.allclose(predict(again, torch.cat([good, bad]))[0], scores, atol=1e-5)


@pytest.mark.parametrize("k", [1, 9])
def test_blocked_nearest_neighbours_match_anomalib(k, monkeypatch):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from vad.models.patchcore import settings

    monkeypatch.setattr(settings, "QUERY_BLOCK", 100)  # several blocks, the last one partial
    generator = torch.Generator().manual_seed(0)
    model = build_model(make_spec("patchcore", "resnet18", ["layer2"]), False)
    model.memory_bank = torch.randn(700, 32, generator=generator) * 3 + 1
    queries = torch.randn(450, 32, generator=generator) * 3 + 1
    ours = model.nearest_neighbors(queries, k)
    theirs = PatchcoreModel.nearest_neighbors(model, queries, k)
    assert torch.equal(ours[1], theirs[1])
    assert torch.allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-4)
    model.memory_bank = model.memory_bank[:300] * 2  # a new bank must not reuse the cached norms
    assert torch.allclose(
        model.nearest_neighbors(queries, k)[0],
        PatchcoreModel.nearest_neighbors(model, queries, k)[0],
        rtol=1e-4,
        atol=1e-4,
    )


def _patchcore(search: str = "auto"):
    spec = make_spec("patchcore", "resnet18", ["layer2"], search=search)
    return spec, build_model(spec, False)


@pytest.mark.slow
def test_coreset_bank_does_not_depend_on_batch_size_and_merges_in_groups(monkeypatch):
    from vad.models.patchcore import model as patchcore

    monkeypatch.setattr(patchcore, "CHUNK_PATCHES", 200)  # 64 patches per image: chunks cut across batches
    monkeypatch.setattr(patchcore, "GROUP_ROWS", 100)  # several merge passes
    rng = np.random.default_rng(1)
    images = batch(rng, 15)
    banks = []
    _, model = _patchcore()  # random backbone weights: one model for all three fits
    for size in (1, 4, 15):
        model.fit_bank(iter(images.split(size)), 15, 0.25, 0, LOGGER)
        banks.append(model.memory_bank)
    assert len(banks[0]) == int(15 * 64 * 0.25)
    assert torch.equal(banks[0], banks[1]) and torch.equal(banks[0], banks[2])
    assert len(torch.unique(banks[0], dim=0)) == len(banks[0])  # no patch picked twice


@pytest.mark.slow
def test_inverted_file_search_is_close_to_exact_and_survives_save_and_load(tmp_path, monkeypatch):
    from vad.models.patchcore import settings

    monkeypatch.setattr(settings, "EXACT_MAP_ROWS", 512)  # a 4,000-row bank then gets inverted-file maps
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 16, generator=generator) * 4
    bank = centres[torch.randint(40, (4000,), generator=generator)] + torch.randn(4000, 16, generator=generator)
    queries = centres[torch.randint(40, (2000,), generator=generator)] + torch.randn(2000, 16, generator=generator)
    _, model = _patchcore()
    model.memory_bank = bank
    model.build_search_index(seed=0)
    assert model.search_centroids.shape == (4000 // settings.ROWS_PER_LIST, 16)
    approx, approx_index = model.nearest_neighbors(queries, 1)
    exact, exact_index = model.exact_nearest_neighbors(queries, 1)
    assert float((approx_index == exact_index).float().mean()) > 0.9  # recall of the true nearest row
    assert bool((approx >= exact - 1e-4).all())  # a missed neighbour can only be farther
    assert torch.allclose(approx[approx_index == exact_index], exact[approx_index == exact_index], atol=1e-4)
    assert float(((approx - exact) / exact).mean()) < 0.01
    save(model, CALIBRATION, {}, tmp_path)
    again = load(tmp_path).model  # the plain-torch scorer, built from the saved bank and centroids
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["search_centroids"], model.search_centroids)
    assert torch.equal(again.bank_tail.nearest(queries)[0], approx)
    _, exact_model = _patchcore(search="exact")
    exact_model.memory_bank = bank
    exact_model.build_search_index(seed=0)
    assert exact_model.search_centroids.numel() == 0
    assert torch.equal(exact_model.nearest_neighbors(queries, 1)[1], exact_index)


def test_separable_blur_gives_anomalibs_anomaly_map():
    from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator

    _, model = _patchcore()
    reference = AnomalyMapGenerator()
    assert torch.equal(model.anomaly_map_generator.blur.kernel, reference.blur.kernel)  # same state dict
    patch_scores = torch.rand(3, 1, 40, 32, generator=torch.Generator().manual_seed(0)) * 5
    ours = model.anomaly_map_generator(patch_scores, (320, 256))
    theirs = reference(patch_scores, (320, 256))
    assert ours.shape == theirs.shape == (3, 1, 320, 256)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_channels_last_embedding_matches_anomalibs_nchw_forward():
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    spec = make_spec("patchcore", "mobilenetv2_100", ["blocks.2", "blocks.4"])
    ours = build_model(spec, pretrained=True)
    reference = PatchcoreModel(layers=spec.layers, backbone=spec.backbone, pre_trained=False).eval()
    reference.load_state_dict(ours.state_dict(), strict=False)
    images = batch(np.random.default_rng(3), 2)
    reference.train()
    expected = reference(images)
    assert torch.allclose(ours.embed(images), expected, atol=1e-4, rtol=1e-4)


def test_image_score_is_the_peak_of_the_map_or_anomalibs_reweighted_score(tmp_path):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    rng = np.random.default_rng(4)
    spec = make_spec("patchcore", "resnet18", ["layer2"], image_score="map_max")
    model = build_model(spec, False)
    model.fit_bank(iter([batch(rng, 4)]), 4, 0.5, 0, LOGGER)
    images = torch.cat([batch(rng, 2), batch(rng, 2, bad=True)])
    scores, maps = predict(model, images)
    assert np.allclose(scores, maps.reshape(4, -1).max(axis=1))
    model.image_score = "reweighted"
    reference = PatchcoreModel(layers=spec.layers, backbone=spec.backbone, pre_trained=False).eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    reweighted, reweighted_maps = predict(model, images)
    with torch.no_grad():
        expected = reference(images)
    assert np.allclose(reweighted, expected.pred_score.reshape(-1).numpy(), atol=1e-4)
    # the option changes the image score only (map_max's features come from the batch-norm-folded backbone)
    assert np.allclose(reweighted_maps, maps, rtol=1e-4, atol=0)
    assert not np.allclose(reweighted, scores)
    save(model, CALIBRATION, {}, tmp_path)
    write_format_1(tmp_path, spec)  # as models were saved before the option (and before format 2)
    old = load(tmp_path)  # a model saved before the option keeps anomalib's score
    assert old.spec.params.image_score == "reweighted"
    assert old.calibration == CALIBRATION and old.training == {"weights_source": "x", "fit_seconds": 1.5}
    assert np.allclose(predict(old.model, images)[0], reweighted, atol=1e-5)


def test_fastflow_validation_pass_scores_like_inference():
    spec = make_spec("fastflow", "resnet18", ["layer1", "layer2"], flow_steps=2)
    model = build_model(spec, pretrained=False)
    for parameter in model.fast_flow_blocks.parameters():  # move the flows away from the identity
        parameter.data.add_(torch.randn_like(parameter) * 0.05)
    features = model.extract(batch(np.random.default_rng(5), 3))
    model.eval()
    with torch.no_grad():
        expected = model.flow(features)
        model.train()
        hidden, _ = model.flow(features)
        scores = model.image_scores(model.anomaly_map_generator(hidden))
    assert torch.allclose(scores, expected.pred_score, atol=1e-6)
    assert len(torch.unique(scores)) == 3


class _StubFlow(torch.nn.Module):
    """One trainable weight: its value after each epoch identifies which epoch's state was kept."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def flow(self, features):
        return [features[0] * self.weight], [torch.zeros(len(features[0]))]


def _fit_with(metrics_by_epoch, monitor, patience=3):
    model = _StubFlow()
    features = [[torch.ones(2, 1, 2, 2)]]
    weights = []

    def evaluate(current):
        weights.append(float(current.weight))
        return {"image_AUROC": float("nan"), "image_F1Score": float("nan"), "loss": float("nan")} | {
            monitor: metrics_by_epoch[len(weights) - 1]
        }

    kept = fit_fastflow(model, lambda: features, evaluate, len(metrics_by_epoch), monitor, patience, LOGGER)
    return kept, weights, float(model.weight)


def test_fastflow_keeps_latest_epoch_within_tolerance_and_stops_on_real_drops():
    auroc = [0.70, 0.86, 0.92, 0.91, 0.905, 0.93, 0.925, 0.85, 0.84, 0.83, 0.99, 0.99]
    kept, weights, final = _fit_with(auroc, "image_AUROC")
    assert len(weights) == 10, "three epochs more than 0.02 below the best (0.93) stop training"
    assert kept["epoch"] == 7 and kept["image_AUROC"] == 0.925, "0.925 is within noise of 0.93 and more trained"
    assert kept["epoch_seconds"] > 0
    assert final == weights[6], "the model holds the kept epoch's weights"


def test_fastflow_plateau_with_noise_does_not_stop_early():
    auroc = [0.71, 0.86, 0.92, 0.905, 0.90 + 0.005, 0.91, 0.915, 0.91, 0.92, 0.918]
    kept, weights, _ = _fit_with(auroc, "image_AUROC")
    assert len(weights) == 10 and kept["epoch"] == 10


def test_fastflow_loss_monitor_keeps_the_lowest_loss():
    kept, weights, final = _fit_with([5.0, 3.0, 4.0, 2.0, 2.5, 2.6, 2.7], "loss", patience=3)
    assert len(weights) == 7 and kept["epoch"] == 4 and final == weights[3]


@pytest.mark.parametrize("block_bytes", [None, 4 * 3000 * 7])  # the default, then 7 queries a block (a big bank)
@pytest.mark.parametrize("queries", [700, 3000])  # the blocked product, then faiss's brute force
def test_bank_index_finds_the_exact_nearest_rows(queries, block_bytes, monkeypatch):
    from vad.models.patchcore import settings
    from vad.models.patchcore.search import BankIndex, query_block
    from vad.models.patchcore.torch_tail import exact_nearest

    if block_bytes is not None:
        monkeypatch.setattr(settings, "BLOCK_BYTES", block_bytes)
        assert query_block(3000) == 7

    generator = torch.Generator().manual_seed(2)
    bank, found = torch.randn(3000, 40, generator=generator), torch.randn(queries, 40, generator=generator)
    distances, indices = BankIndex(bank.numpy(), np.zeros((0, 40), np.float32)).exact_rows(found.numpy())
    expected_distances, expected_indices = exact_nearest(bank, found, 1)
    assert np.array_equal(indices, expected_indices.numpy())
    np.testing.assert_allclose(distances, expected_distances.numpy(), rtol=1e-4, atol=1e-4)


def test_image_scores_are_exact_with_inverted_file_bounds_and_need_few_exact_patches(tmp_path, monkeypatch):
    from vad.models.patchcore import settings

    monkeypatch.setattr(settings, "BOUND_MIN_ROWS", 100)  # the small test bank gets an inverted file
    rng = np.random.default_rng(7)
    _, model = _patchcore()
    model.fit_bank(iter([batch(rng, 8)]), 8, 0.5, 0, LOGGER)
    assert len(model.memory_bank) >= 100 and model.search_centroids.numel()
    images = torch.cat([batch(rng, 3), batch(rng, 3, bad=True)])
    exact_scores, exact_maps = model.score(images)  # a small bank's maps are searched exactly
    searched = []
    index = model.bank_tail().index
    exact = index.exact
    monkeypatch.setattr(index, "exact", lambda queries: (searched.append(len(queries)), exact(queries))[1])
    bounded_scores, no_maps = model.score(images, maps=False)
    assert no_maps is None
    np.testing.assert_allclose(bounded_scores, exact_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bounded_scores, exact_maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    patches = 6 * 8 * 8  # resnet18 layer2 at 64 px: 8 x 8 patches per image
    assert 0 < sum(searched) < patches  # the bounds spared part of the exact search
    save(model, CALIBRATION, {}, tmp_path)
    scorer = load(tmp_path).model
    np.testing.assert_allclose(scorer.score(images, maps=False)[0], exact_scores, rtol=1e-4, atol=1e-4)
