"""Property-based tests: whatever a plan, a CSV or a score holds, the answer is a result or one clear error."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from conftest import load_default_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alo.errors import AloError, DataError, PlanError
from alo.plan import load_plan, parse_plan
from alo.runner import prepare
from alo.summary import MAX_NOTE, MAX_RESULT, SummaryContractError, build_summary, validate_summary
from assets.input import read_csv
from vad.batch_summary import summarize

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every (path, container) in a nested plan, to pick a place to mutate."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key), node
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index), node
            yield from _paths(value, (*prefix, index))


@FUZZ
@given(raw=values)
def test_any_yaml_value_is_a_plan_or_a_plan_error(raw):
    try:
        parse_plan(raw, Path("/nowhere/plan.yaml"))
    except PlanError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("plan error:")


@FUZZ
@given(data=st.data())
def test_mutated_default_plan_is_valid_or_one_plan_error(data):
    plan = copy.deepcopy(load_default_plan())
    places = list(_paths(plan))
    path, container = data.draw(st.sampled_from(places))
    if data.draw(st.booleans()):
        container[path[-1]] = data.draw(values)
    elif isinstance(container, dict):
        container[data.draw(st.text(min_size=1, max_size=10))] = container.pop(path[-1])
    try:
        parsed = parse_plan(plan, Path("/nowhere/plan.yaml"))
        for pipeline in parsed.pipelines:
            prepare(parsed, pipeline, "assets")
    except PlanError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("plan error:")


@FUZZ
@given(text=st.text(max_size=200))
def test_any_plan_text_loads_or_fails_with_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_plan(path)
    except PlanError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(content=st.binary(max_size=300), encoding=st.sampled_from(["utf-8", "cp949", "latin-1", "no-such-codec"]))
def test_any_csv_bytes_read_or_fail_with_one_data_error(tmp_path_factory, content, encoding):
    path = tmp_path_factory.mktemp("csv") / "train.csv"
    path.write_bytes(content)
    try:
        table = read_csv(path, encoding)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(table, pd.DataFrame)


labels = st.text(min_size=1, max_size=40)


@FUZZ
@given(
    scores=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
    ok_name=labels,
    ng_name=labels,
    note=st.text(max_size=300),
)
def test_summaries_of_any_scores_keep_the_contract(scores, ok_name, ng_name, note):
    from vad.thresholds import certainty

    if ok_name == ng_name:
        ng_name = ng_name + "_"
    array = np.asarray(scores)
    predictions = pd.DataFrame(
        {"anomaly_score": array, "certainty": certainty(array), "pred_label": np.where(array >= 0.5, ng_name, ok_name)}
    )
    result, score, probability = summarize(
        predictions, (predictions["pred_label"] == ng_name).to_numpy(), ok_name, ng_name
    )
    summary = build_summary(
        result=result[:MAX_RESULT], score=score, probability=probability, note=note, file_path="x", version="1"
    )
    validate_summary(summary)
    assert len(summary["note"]) <= MAX_NOTE and 0.0 <= summary["score"] <= 1.0
    assert math.isclose(sum(summary["probability"].values()), 1.0)
    assert yaml.safe_load(yaml.safe_dump(summary)) == summary


@FUZZ
@given(
    result=st.text(max_size=50),
    score=st.floats(allow_nan=True, allow_infinity=True),
    probability=st.dictionaries(st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True), max_size=3),
)
def test_broken_summaries_are_refused_not_written(result, score, probability):
    try:
        summary = build_summary(
            result=result, score=score, probability=probability, note="", file_path="x", version="1"
        )
    except (SummaryContractError, ValueError, OverflowError):
        return
    validate_summary(summary)


def test_error_classes_share_the_exit_code():
    assert all(issubclass(cls, AloError) for cls in (PlanError, DataError))
