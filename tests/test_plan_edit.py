"""Plan copies with values changed in the text: comments and layout kept, every YAML layout of the old value."""

from __future__ import annotations

import pytest
import yaml

from alo.errors import PlanError
from vad.plan_edit import Change, apply_changes

PLAN = """\
# the user's plan
user_parameters:
  - train_pipeline:
      - step: train
        args:
          - model_name: patchcore   # a comment that must stay
            img_size:
            - 256
            - 256
            batch_size: 8
            empty:
            model_parameters:
              patchcore_backbone: mobilenetv2_100
              patchcore_layers:
                - blocks.2
                - blocks.4
"""


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("train", "train", "img_size"), [320, 320]),  # a block list, then another key
        (("train", "train", "img_size"), 224),  # a block list becomes a scalar
        (("train", "train", "batch_size"), 16),
        (("train", "train", "empty"), 0.5),  # ``key:`` with nothing after it
        (("train", "train", "model_parameters", "patchcore_layers"), ["blocks.3"]),  # a block list at the very end
        (("train", "train", "model_parameters", "patchcore_backbone"), "tf_efficientnet_lite1"),
        (("train", "train", "model_name"), "fastflow"),
    ],
)
def test_one_value_changes_and_everything_else_stays(where, value):
    text = apply_changes(PLAN, [Change(where, value)])
    loaded, expected = yaml.safe_load(text), yaml.safe_load(PLAN)
    args = expected["user_parameters"][0]["train_pipeline"][0]["args"][0]
    target = args
    for key in where[2:-1]:
        target = target[key]
    target[where[-1]] = value
    assert loaded == expected
    assert "# the user's plan" in text and "# a comment that must stay" in text
    changed = [line for line in text.splitlines() if line not in PLAN.splitlines()]
    assert len(changed) == 1, changed  # one line written, the old value's lines gone


def test_several_changes_and_a_new_key_at_the_mappings_column():
    changes = [
        Change(("train", "train", "img_size"), [288, 288]),
        Change(("train", "train", "max_epochs"), 3),
        Change(("train", "train", "model_parameters", "patchcore_layers"), ["blocks.2"]),
    ]
    loaded = yaml.safe_load(apply_changes(PLAN, changes))
    args = loaded["user_parameters"][0]["train_pipeline"][0]["args"][0]
    assert args["img_size"] == [288, 288] and args["max_epochs"] == 3 and args["batch_size"] == 8
    assert args["model_parameters"] == {"patchcore_backbone": "mobilenetv2_100", "patchcore_layers": ["blocks.2"]}


def test_a_value_with_no_place_in_the_plan_is_one_plan_error():
    with pytest.raises(PlanError, match="no 'export' step"):
        apply_changes(PLAN, [Change(("train", "export", "x"), 1)])
