"""The out-of-distribution check: its statistics, the flag and reject actions, and every runtime through main.py."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import load_default_plan, make_dataset, make_inference_folder, set_external, step_args, write_plan
from PIL import Image

import main
from alo.args import validate_args
from alo.errors import PlanError
from assets.inference import InferenceArgs
from vad.batch_summary import summarize
from vad.calibration import Calibration
from vad.ood import OOD_FILE, OodCheck
from vad.ood.check import MIN_IMAGES
from vad.ood.descriptor import descriptor_tap, global_descriptor, tap
from vad.ood.verdict import REJECTED_LABEL, apply_ood

CALIBRATION = Calibration(1.0, 0.0, 2.0, "good", "bad", "F1", 0.8)


def _descriptors(count: int, seed: int, shift: float = 0.0, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = np.linspace(0.1, 3.0, width)
    return rng.normal(5.0, 1.0, (count, width)) * spread + shift * spread


def test_held_out_ok_images_stay_inside_and_a_shifted_kind_falls_outside():
    check = OodCheck.fit(_descriptors(200, 0), _descriptors(20, 1))
    assert check is not None and check.images == {"train": 200, "held_out": 220}
    own = check.scores(_descriptors(500, 2))
    assert np.mean(own >= 1.0) <= 0.01, "held-out images of the trained kind"
    assert (check.scores(_descriptors(100, 3, shift=2.0)) >= 1.0).all(), "two spreads away on every dimension"
    assert own.dtype == np.float32 and (own > 0).all()


def test_a_constant_channel_does_not_divide_by_zero_and_too_few_images_give_no_check():
    train = _descriptors(30, 0)
    train[:, 3] = 0.0  # a channel the backbone never fires on these images
    check = OodCheck.fit(train)
    assert check is not None and np.isfinite(check.scale).all() and (check.scale > 0).all()
    probe = _descriptors(5, 1)
    probe[:, 3] = 0.0
    assert np.isfinite(check.scores(probe)).all()
    assert OodCheck.fit(_descriptors(MIN_IMAGES - 1, 0)) is None
    with pytest.raises(ValueError, match="32-value descriptors"):
        check.scores(np.zeros((2, 31)))


def test_the_saved_check_scores_exactly_as_the_fitted_one_and_a_damaged_file_is_refused(tmp_path):
    check = OodCheck.fit(_descriptors(40, 0), _descriptors(8, 1), seed=3)
    assert check is not None
    check.save(tmp_path)
    loaded = OodCheck.load(tmp_path)
    assert loaded is not None
    probe = _descriptors(10, 4, shift=0.5)
    assert np.array_equal(loaded.scores(probe), check.scores(probe))
    assert OodCheck.load(tmp_path / "elsewhere") is None, "a model trained before the check: none"
    values = json.loads((tmp_path / OOD_FILE).read_text())
    values["scale"][0] = 0.0
    (tmp_path / OOD_FILE).write_text(json.dumps(values))
    with pytest.raises(ValueError, match="inconsistent"):
        OodCheck.load(tmp_path)
    values["format"] = 99
    (tmp_path / OOD_FILE).write_text(json.dumps(values))
    with pytest.raises(ValueError, match="format 99"):
        OodCheck.load(tmp_path)


def test_the_same_fit_is_reproducible_and_the_seed_only_moves_the_folds():
    train = _descriptors(60, 0)
    first, again, other = OodCheck.fit(train, seed=1), OodCheck.fit(train, seed=1), OodCheck.fit(train, seed=2)
    assert first is not None and again is not None and other is not None
    assert first.threshold == again.threshold
    assert np.array_equal(first.center, other.center) and np.array_equal(first.scale, other.scale)


def test_the_descriptor_is_each_channels_mean_and_spread_and_a_tap_sees_only_its_own_thread():
    maps = [torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5), torch.ones(2, 1, 2, 2)]
    found = global_descriptor(maps).numpy()
    first = maps[0].numpy().reshape(2, 3, -1)
    expected = np.concatenate([first.mean(2), first.std(2), np.ones((2, 1)), np.zeros((2, 1))], axis=1)
    assert found.shape == (2, 8) and np.allclose(found, expected, atol=1e-5)
    tap(maps)  # no tap open: nothing kept anywhere
    seen_elsewhere: list[int] = []
    with descriptor_tap() as tapped:
        worker = threading.Thread(target=lambda: (tap(maps), seen_elsewhere.append(0)))
        worker.start()
        worker.join()
        tap(maps)
        with descriptor_tap() as inner:
            tap(maps)
        assert len(inner) == 1
    assert len(tapped) == 1 and seen_elsewhere == [0], "another thread's features are not this thread's"


def test_flag_keeps_every_verdict_and_reject_withholds_the_verdict_of_images_outside():
    scored = CALIBRATION.apply(np.array([0.2, 1.8, 0.4, 1.9]))
    ood = np.array([0.3, 0.5, 4.0, np.nan])
    flagged = apply_ood(scored, ood, "flag")
    assert list(flagged.columns["in_distribution"]) == [True, True, False, False], "NaN counts as outside"
    assert list(flagged.columns["pred_label"]) == ["good", "bad", "good", "bad"]
    assert list(flagged.is_anomalous) == [False, True, False, True]
    rejected = apply_ood(scored, ood, "reject")
    assert list(rejected.columns["pred_label"]) == ["good", "bad", REJECTED_LABEL, REJECTED_LABEL]
    assert list(rejected.columns["certainty"][2:]) == [0.0, 0.0]
    assert list(rejected.is_anomalous) == [False, True, True, True], "never passed as OK"
    assert apply_ood(scored, None, "reject") is scored, "no check: no columns, no change"
    frame = pd.DataFrame(rejected.columns)
    result, _, _ = summarize(frame, rejected.is_anomalous, "good", "bad")
    assert result == f"good:1,bad:1,{REJECTED_LABEL}:2"


@pytest.mark.parametrize("value", ["ignore", "", None, 1])
def test_a_bad_ood_action_is_one_plan_line(value):
    where = "user_parameters.inference_pipeline.inference.args"
    with pytest.raises(PlanError) as info:
        validate_args(InferenceArgs, {"ood_action": value}, where)
    assert "ood_action" in str(info.value) and "\n" not in str(info.value)
    assert validate_args(InferenceArgs, {}, where).ood_action == "flag"


def _foreign(folder, count: int = 3) -> list[str]:
    """Pictures of something else entirely: stripes, a flat grey card, noise."""
    rng = np.random.default_rng(7)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::2] = 255
    pictures = [stripes, np.full((64, 64, 3), 128, np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    names = []
    for i, array in enumerate(pictures[:count]):
        Image.fromarray(array).save(folder / f"zz_foreign_{i}.png")
        names.append(f"zz_foreign_{i}.png")
    return names


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A PatchCore model on tiny textures, exported to ONNX and OpenVINO; a folder of its kind plus foreign ones."""
    root = tmp_path_factory.mktemp("ood")
    make_dataset(root / "data" / "train")
    folder = make_inference_folder(root / "data" / "mixed", n_ok=4, n_ng=2, seed=5)
    foreign = _foreign(folder)
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/mixed")
    step_args(plan, "train", "train").update(
        {"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore", "save_validation_heatmap": False}
    )
    step_args(plan, "inference", "inference").update({"save_anomaly_maps": False, "save_output_images": 0})
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    return {"root": root, "plan": plan, "foreign": foreign}


def _infer(line, **inference) -> tuple[pd.DataFrame, dict]:
    plan = copy.deepcopy(line["plan"])
    step_args(plan, "inference", "inference").update(inference)
    assert main.main(["--mode", "inference", "--config", str(write_plan(line["root"], plan))]) == 0
    artifacts = line["root"] / "inference_artifacts"
    summary = yaml.safe_load((artifacts / "score/inference_summary.yaml").read_text())
    return pd.read_csv(artifacts / "output/output.csv"), summary


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_foreign_images_are_flagged_in_every_runtime(line, runtime):
    output, summary = _infer(line, runtime=runtime)
    foreign = output["image_path"].isin(line["foreign"])
    ok = output["image_path"].str.startswith("ok_")
    assert (~output.loc[foreign, "in_distribution"]).all(), output[["image_path", "ood_score"]]
    assert (output.loc[foreign, "ood_score"] >= 1.0).all()
    assert output.loc[ok, "in_distribution"].all(), "OK images of the trained kind are in distribution"
    # NG: a 12-pixel black square on a 64-pixel image is an eighth of the backbone's 8 x 8 map, which moves these
    # tiny images' statistics; on real-size products defects stay inside (BENCHMARKS.md), here only below foreign
    assert output.loc[~foreign, "ood_score"].max() < output.loc[foreign, "ood_score"].min()
    assert set(output["pred_label"]) <= {"good", "bad"}, "flag keeps every verdict"
    outside = int((~output["in_distribution"]).sum())
    assert summary["note"].endswith(f", {outside} out of distribution")
    manifest = json.loads((line["root"] / "train_artifacts/models/export/parity.json").read_text())
    assert all(figures["ood_flags_identical"] for figures in manifest.values())


@pytest.mark.slow
def test_reject_withholds_the_verdict_of_foreign_images_only(line):
    flagged, _ = _infer(line, runtime="torch")
    output, summary = _infer(line, runtime="torch", ood_action="reject")
    foreign = output["image_path"].isin(line["foreign"])
    assert (output.loc[foreign, "pred_label"] == REJECTED_LABEL).all()
    assert (output.loc[foreign, "certainty"] == 0.0).all()
    kept = ["pred_label", "anomaly_score", "raw_score", "certainty", "ood_score"]
    inside = output["in_distribution"]
    pd.testing.assert_frame_equal(output.loc[inside, kept], flagged.loc[inside, kept])
    outside = ~output["in_distribution"]
    assert (output.loc[outside, "pred_label"] == REJECTED_LABEL).all()
    assert summary["result"].endswith(f",{REJECTED_LABEL}:{int(outside.sum())}")
