"""Plan loading and validation: good plan, unknown keys, wrong types, aliases, bad YAML."""

from __future__ import annotations

import copy

import pytest
from conftest import DEFAULT_PLAN, load_default_plan, step_args, write_plan

from alo.errors import PlanError
from alo.plan import load_plan
from alo.runner import prepare


def prepared_args(tmp_path, plan: dict, pipeline: str = "train", step: str = "train"):
    loaded = load_plan(write_plan(tmp_path, plan))
    steps = {s.name: s.args for s in prepare(loaded, pipeline, "assets")}
    return steps[step]


def test_default_plan_is_valid_with_defaults():
    plan = load_plan(DEFAULT_PLAN)
    assert plan.name == "vad"
    assert [s.name for s in plan.pipelines["train"]] == ["input", "readiness", "train"]
    assert [s.name for s in plan.pipelines["inference"]] == ["input", "readiness", "inference", "output"]
    train = {s.name: s for s in prepare(plan, "train", "assets")}["train"].args
    assert train.model_name == "patchcore"
    assert train.img_size is None and train.input_size() == 320  # the bundled plan trains PatchCore
    assert train.model_parameters.patchcore_coreset_sampling_ratio == 0.1
    inference = {s.name: s for s in prepare(plan, "inference", "assets")}["inference"].args
    assert inference.inference_threshold == 0.5


def test_omitted_args_take_reference_defaults(tmp_path):
    plan = load_default_plan()
    args = step_args(plan, "train", "train")
    args.clear()
    train = prepared_args(tmp_path, plan)
    assert train.model_name == "fastflow"
    assert (train.batch_size, train.max_epochs, train.experiment_seed, train.percentile) == (4, 15, 42, 0.8)
    assert train.monitor_metric == "image_AUROC" and train.augmentation_choice == 3
    assert train.input_size() == [256, 256], "FastFlow keeps the reference guide's fixed 256x256"
    args["model_name"] = "patchcore"
    assert prepared_args(tmp_path, plan).input_size() == 320
    readiness = prepared_args(tmp_path, plan, step="readiness")
    assert readiness.validation_split_rate == 0.1 and readiness.num_minor_threshold == 5


def test_misspelt_arg_names_the_key_and_suggests(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["model_nam"] = "patchcore"
    with pytest.raises(PlanError) as info:
        prepared_args(tmp_path, plan)
    message = str(info.value)
    assert "user_parameters.train_pipeline.train.args.model_nam" in message
    assert "did you mean 'model_name'" in message
    assert "\n" not in message


def test_wrong_type_names_key_and_value(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["batch_size"] = "eight"
    with pytest.raises(PlanError, match=r"train\.args\.batch_size' is 'eight'"):
        prepared_args(tmp_path, plan)


def test_bad_choice_lists_allowed_values(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["model_name"] = "patchcor"
    with pytest.raises(PlanError) as info:
        prepared_args(tmp_path, plan)
    from vad.models import MODELS

    names = [f"'{name}'" for name in MODELS]  # every registered model, in registry order
    assert f"allowed values: {', '.join(names[:-1])} or {names[-1]}" in str(info.value)
    assert "did you mean 'patchcore'" in str(info.value)


def test_out_of_range_value(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["percentile"] = 80
    with pytest.raises(PlanError, match="percentile' is 80"):
        prepared_args(tmp_path, plan)


def test_img_size_int_or_pair(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["img_size"] = 224
    assert prepared_args(tmp_path, plan).img_size == 224
    assert prepared_args(tmp_path, plan).input_size() == 224, "a plan's img_size wins over the model default"
    step_args(plan, "train", "train")["img_size"] = [224, 224, 3]
    with pytest.raises(PlanError, match="img_size"):
        prepared_args(tmp_path, plan)


def test_backborn_aliases_are_accepted(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["model_parameters"] = {
        "fastflow_backborn": "mobilenetv2_100",
        "patchcore_backborn": "tf_efficientnet_lite1",
    }
    params = prepared_args(tmp_path, plan).model_parameters
    assert params.fastflow_backbone == "mobilenetv2_100"
    assert params.patchcore_backbone == "tf_efficientnet_lite1"


def test_unknown_model_parameter_key(tmp_path):
    plan = load_default_plan()
    step_args(plan, "train", "train")["model_parameters"] = {"patchcore_coreset_ratio": 0.1}
    with pytest.raises(PlanError) as info:
        prepared_args(tmp_path, plan)
    assert "model_parameters.patchcore_coreset_ratio" in str(info.value)
    assert "did you mean 'patchcore_coreset_sampling_ratio'" in str(info.value)


def test_unknown_step_and_top_level_key(tmp_path):
    plan = load_default_plan()
    plan["user_parameters"][0]["train_pipeline"][2]["step"] = "trian"
    with pytest.raises(PlanError, match=r"unknown step 'trian'.*did you mean 'train'"):
        prepared_args(tmp_path, plan)
    plan = load_default_plan()
    plan["contorl"] = []
    with pytest.raises(PlanError, match="did you mean 'control'"):
        load_plan(write_plan(tmp_path, plan))


def test_missing_pipeline_for_mode(tmp_path):
    plan = load_default_plan()
    plan["user_parameters"] = [plan["user_parameters"][0]]
    loaded = load_plan(write_plan(tmp_path, plan))
    with pytest.raises(PlanError, match="no 'inference_pipeline'"):
        prepare(loaded, "inference", "assets")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "is empty"), ("name: [unclosed", "not valid YAML at line"), ("- just\n- a list\n", "must be a YAML map")],
)
def test_unusable_plan_files(tmp_path, text, expected):
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PlanError, match=expected):
        load_plan(path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(path)


def test_plain_maps_accepted_for_alo_lists(tmp_path):
    plan = copy.deepcopy(load_default_plan())
    plan["external_path"] = {"load_train_data_path": "x", "load_inference_data_path": "y"}
    plan["control"] = {"backup_size": 5}
    loaded = load_plan(write_plan(tmp_path, plan))
    assert loaded.control.backup_size == 5
    assert loaded.resolve(loaded.external_path.load_train_data_path) == (tmp_path / "x").resolve()
