"""Drift over time: the reference, the rolling KS monitor with its hysteresis, the watch and the plan keys."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import load_default_plan, write_plan

from alo.errors import PlanError
from alo.plan import load_plan
from vad.calibration import Scored
from vad.drift import DriftMonitor, DriftReference, DriftSettings, DriftWatch, save_drift_reference
from vad.drift.monitor import MIN_REFERENCE

SETTINGS = DriftSettings(window=200, limit=0.3, min_window=50)


def reference(seed: int = 0, size: int = 100) -> DriftReference:
    rng = np.random.default_rng(seed)
    return DriftReference({"anomaly_score": rng.normal(0.3, 0.05, size), "ood_score": rng.normal(0.5, 0.1, size)})


def feed(monitor: DriftMonitor, values: np.ndarray, measure: str = "anomaly_score", batch: int = 5) -> list:
    changes = []
    for start in range(0, len(values), batch):
        changes += monitor.observe({measure: list(values[start : start + batch])})
    return changes


def test_samples_of_the_reference_distribution_never_cross_the_limit():
    monitor = DriftMonitor(reference(), SETTINGS)
    rng = np.random.default_rng(1)
    assert feed(monitor, rng.normal(0.3, 0.05, 1000)) == []
    reading = monitor.readings["anomaly_score"]
    assert reading.images == 200 and not reading.crossed
    assert reading.statistic is not None and reading.statistic < 0.2


def test_shifted_samples_cross_once_recover_once_and_cross_again():
    monitor = DriftMonitor(reference(), SETTINGS)
    rng = np.random.default_rng(2)
    assert feed(monitor, rng.normal(0.3, 0.05, 200)) == []
    shifted = feed(monitor, rng.normal(0.45, 0.05, 400))  # the line keeps drifting: one crossing, not one a batch
    assert [(c.measure, c.reading.crossed) for c in shifted] == [("anomaly_score", True)]
    assert shifted[0].reading.statistic >= 0.3 and shifted[0].reading.p_value <= 0.001
    back = feed(monitor, rng.normal(0.3, 0.05, 400))
    assert [(c.measure, c.reading.crossed) for c in back] == [("anomaly_score", False)]
    again = feed(monitor, rng.normal(0.45, 0.05, 200))
    assert [c.reading.crossed for c in again] == [True]


def test_a_measure_is_judged_only_once_its_window_holds_the_minimum():
    monitor = DriftMonitor(reference(), SETTINGS)
    far = np.full(49, 5.0)
    assert monitor.observe({"ood_score": list(far)}) == []
    assert monitor.readings["ood_score"].statistic is None and monitor.readings["ood_score"].images == 49
    changes = monitor.observe({"ood_score": [5.0, None, float("nan")]})  # an image without the value is skipped
    assert [(c.measure, c.reading.images, c.reading.statistic) for c in changes] == [("ood_score", 50, 1.0)]


def test_a_reference_too_small_to_compare_with_is_left_out():
    rng = np.random.default_rng(3)
    small = DriftReference({"anomaly_score": rng.random(MIN_REFERENCE - 1), "ood_score": rng.random(MIN_REFERENCE)})
    assert DriftMonitor(small, SETTINGS).measures == ("ood_score",)


def test_the_reference_keeps_the_validation_ok_images_only(tmp_path):
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8])
    scored = Scored({"anomaly_score": scores}, scores >= 0.5)
    path = save_drift_reference(tmp_path, scored, np.array([False, False, True, False, True]), None)
    assert json.loads(path.read_text())["measures"] == {"anomaly_score": [0.1, 0.2, 0.3]}
    loaded = DriftReference.load(tmp_path)
    assert loaded is not None and list(loaded.values) == ["anomaly_score"]  # no OOD check: no ood_score
    assert DriftReference.load(tmp_path / "none") is None
    path.write_text('{"format": 9}')
    with pytest.raises(ValueError, match="format 9"):
        DriftReference.load(tmp_path)


def models_folder(tmp_path, values: DriftReference | None, train_id: str = "t1"):
    folder = tmp_path / "models"
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "train_run.json").write_text(json.dumps({"train_id": train_id}))
    if values is not None:
        values.save(folder / "train")
    return folder


def test_the_watch_alerts_once_per_crossing_with_the_message_to_publish(tmp_path):
    models = models_folder(tmp_path, reference())
    watch = DriftWatch(DriftSettings(window=60, limit=0.3, min_window=50), clock=lambda: 1_800_000_000.0)
    assert watch.observe(models, {"anomaly_score": [0.3] * 10}) == []
    alerts = [alert for _ in range(20) for alert in watch.observe(models, {"ood_score": [3.0] * 5})]
    assert len(alerts) == 1
    payload = json.loads(alerts[0].text)
    assert payload["measure"] == "ood_score" and payload["statistic"] == 1.0
    assert (payload["limit"], payload["window"], payload["reference"]) == (0.3, 50, 100)
    assert payload["time"] == "2027-01-15T08:00:00Z" and payload["message"].startswith("ood_score has drifted")
    snapshot = watch.snapshot()
    assert snapshot["available"] and snapshot["crossed"] and snapshot["measures"]["ood_score"]["crossed"]
    assert snapshot["history"][-1] == {"time": "2027-01-15T08:00:00Z", "ood_score": 1.0}
    assert watch.figures() == {"drift_ood_score": 1.0, "drift_window": 60, "drift_crossed": 1.0}


def test_a_model_without_a_reference_has_no_drift_and_a_new_model_starts_again(tmp_path):
    models = models_folder(tmp_path, None)
    watch = DriftWatch(SETTINGS)
    assert watch.observe(models, {"ood_score": [3.0] * 100}) == []
    snapshot = watch.snapshot()
    assert not snapshot["available"] and "no drift_reference.json" in snapshot["reason"]
    assert watch.figures() == {}
    models_folder(tmp_path, reference(), "t2")  # trained again into the same folder
    path = models / "train" / "drift_reference.json"
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    watch.observe(models, {"ood_score": [0.5] * 10})
    snapshot = watch.snapshot()
    assert snapshot["available"] and snapshot["train_id"] == "t2"
    assert snapshot["measures"]["ood_score"]["images"] == 10  # what the old model scored is not counted


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"drift_window": 5}, r"^plan error: 'control.drift_window' is 5: .*greater than or equal to 10$"),
        ({"drift_limit": 1.5}, r"^plan error: 'control.drift_limit' is 1.5: .*less than or equal to 1$"),
        ({"drift_limit": 0}, r"^plan error: 'control.drift_limit' is 0: .*greater than 0$"),
    ],
)
def test_the_drift_keys_are_checked_with_one_line(tmp_path, entry, expected):
    plan = load_default_plan()
    plan["control"] = [*plan["control"], entry]
    with pytest.raises(PlanError, match=expected):
        load_plan(write_plan(tmp_path, plan))


def test_the_drift_keys_default_and_take_the_plans_values(tmp_path):
    plan = load_default_plan()
    control = load_plan(write_plan(tmp_path, plan)).control
    assert (control.drift_window, control.drift_limit) == (200, 0.3)
    plan["control"] = [*plan["control"], {"drift_window": 20}, {"drift_limit": 1}]
    control = load_plan(write_plan(tmp_path, plan)).control
    assert (control.drift_window, control.drift_limit) == (20, 1.0)
    assert DriftSettings.of(control.drift_window, control.drift_limit).min_window == 20


def test_without_scipy_the_loop_watches_no_drift_and_says_so(tmp_path, monkeypatch, caplog):
    import sys

    import assets

    for name in [name for name in sys.modules if name.startswith("vad.drift")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the slim edge install has no SciPy
    plan = load_plan(write_plan(tmp_path, load_default_plan()))
    with caplog.at_level("WARNING", logger="vad.drift"):
        assert assets.score_watch(plan) is None
    assert "drift not watched" in caplog.text and "install scipy" in caplog.text


def test_the_page_route_and_metrics_need_the_token_and_show_the_watch(tmp_path):
    from conftest import asgi_get

    from apps.http import api
    from apps.http.drift import ServedDrift
    from apps.web.app import UiContext, add_ui

    models = models_folder(tmp_path, reference())
    watch = DriftWatch(DriftSettings(window=60, limit=0.3, min_window=50))
    app = api.create_app(lambda: None, api.ServeSettings(token="t", drift=ServedDrift(watch, models)))
    inner = app.app.app  # the FastAPI app inside the body limit and the metrics
    add_ui(inner, inner.state.batcher, UiContext(tmp_path, tmp_path / "plan.yaml", models, None), "t", 4, "1")
    assert asgi_get(app, "/ui/api/drift")[0] == 401
    assert asgi_get(app, "/ui/monitoring")[1]["location"] == "/ui/login"
    assert asgi_get(app, "/metrics")[0] == 401
    state = json.loads(asgi_get(app, "/ui/api/drift", "t")[2])
    assert not state["available"] and state["reason"] == "no image scored yet"
    assert "vad_drift_available 0.0" in asgi_get(app, "/metrics", "t")[2].decode()
    watch.observe(models, {"ood_score": [3.0] * 50, "anomaly_score": [0.3] * 10})
    metrics = asgi_get(app, "/metrics", "t")[2].decode()
    for line in (
        "vad_drift_available 1.0",
        "vad_drift_limit 0.3",
        'vad_drift_statistic{measure="ood_score"} 1.0',
        'vad_drift_window_images{measure="ood_score"} 50.0',
        'vad_drift_window_images{measure="anomaly_score"} 10.0',
        'vad_drift_crossed{measure="ood_score"} 1.0',
        'vad_drift_crossed{measure="anomaly_score"} 0.0',
    ):
        assert line in metrics.splitlines(), line
    assert 'vad_drift_statistic{measure="anomaly_score"}' not in metrics  # not judged yet: no value
    state = json.loads(asgi_get(app, "/ui/api/drift", "t")[2])
    assert state["crossed"] and state["measures"]["ood_score"]["crossed"]
    status, _, page = asgi_get(app, "/ui/monitoring", "t")
    assert status == 200 and b'<svg id="drift-chart"' in page and b"/ui/static/monitoring.js" in page
