"""Experiment tracking in a real local MLflow store (SQLite beside the plan), and the logged pyfunc model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import trained_project, write_plan
from mlflow.tracking import MlflowClient
from PIL import Image

import main
from alo.plan import load_plan
from alo.tracking import settings_of, wait_pending

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not


def _control(plan: dict, **values) -> None:
    """Set control keys (a list of one-key maps, as ALO writes it)."""
    kept = [entry for entry in plan.get("control", []) if not set(entry) & set(values)]
    plan["control"] = [*kept, *({key: value} for key, value in values.items())]


def _store(root) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def _settle(root) -> None:
    """Wait for the background loggers (a one-shot run hands its logging over, see alo/tracking/)."""
    assert wait_pending(settings_of(load_plan(root / "experimental_plan.yaml")), 180), "tracking did not finish"


def _runs(root, pipeline: str) -> list:
    _settle(root)
    client = _store(root)
    experiment = client.get_experiment_by_name("vad")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.pipeline = '{pipeline}'")


def _tracked_train(project) -> tuple[Path, Path]:
    """A tracked train run in the project, logged: the project folder and its plan."""
    root, plan = project["root"], project["plan"]
    _control(plan, tracking=True)
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    _settle(root)
    return root, path


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tracked FastFlow train and inference run, shared by the tests that read it."""
    root = tmp_path_factory.mktemp("tracked")
    plan, path = trained_project(root, "fastflow", tracking=True, max_epochs=3)
    return {"root": root, "plan": plan, "path": path}


def test_a_train_run_logs_params_metrics_steps_artifacts_and_its_model(tracked):
    root = tracked["root"]
    (run,) = _runs(root, "train")
    record = json.loads((root / "train_artifacts/log/experimental_history.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.data.tags["train_id"] == record["id"]
    assert {run.data.tags[k] for k in ("data_id", "param_id", "code_id")} == {
        record["data_id"],
        record["param_id"],
        record["code_id"],
    }
    params = run.data.params
    assert params["train.model_name"] == "fastflow"
    assert params["train.model_parameters.fastflow_backbone"] == "tf_efficientnet_lite0"
    assert params["train.img_size"] == "[64, 64]" and params["readiness.threshold_method"] == "F1"
    score = pd.read_csv(root / "train_artifacts/output/validation_score.csv").iloc[0]
    metrics = run.data.metrics
    assert metrics["valid.auroc"] == pytest.approx(score["auroc"]) and metrics["valid.f1"] == pytest.approx(score["f1"])
    assert metrics["raw_threshold"] == pytest.approx(score["threshold"])
    assert metrics["fit_seconds"] > 0 and metrics["peak_rss_mb"] > 100
    client = _store(root)
    losses = client.get_metric_history(run.info.run_id, "epoch.train_loss")
    assert sorted(m.step for m in losses) == list(range(1, len(losses) + 1)) and len(losses) >= 2
    assert client.get_metric_history(run.info.run_id, "epoch.image_AUROC")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"threshold", "validation", "heatmaps", "plan"} <= names
    inside = {a.path for a in client.list_artifacts(run.info.run_id, "threshold")}
    assert inside == {"threshold/threshold_test_result.png", "threshold/threshold_test_result.csv"}
    assert 1 <= len(client.list_artifacts(run.info.run_id, "heatmaps")) <= 6


def test_the_logged_model_loaded_with_pyfunc_scores_like_the_pipeline(tracked):
    root = tracked["root"]
    (run,) = _runs(root, "train")
    loaded = mlflow.pyfunc.load_model(_logged_model_uri(root, run))
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    files = [str(root / "data" / "inference" / name) for name in output["image_path"]]
    found = loaded.predict(pd.DataFrame({"image": files}))
    assert list(found["pred_label"]) == list(output["pred_label"])
    assert (found["anomaly_score"] - output["anomaly_score"]).abs().max() < 1e-5
    assert (found["ood_score"] - output["ood_score"]).abs().max() < 1e-4
    assert list(found["in_distribution"]) == list(output["in_distribution"])
    outputs = {column.name: column for column in loaded.metadata.get_output_schema().inputs}
    assert outputs["ood_score"].type.name == "double" and not outputs["ood_score"].required
    assert outputs["in_distribution"].type.name == "boolean" and not outputs["in_distribution"].required
    stripes = np.zeros((300, 300), np.uint8)  # rows alternately black and white: nothing like the product
    stripes[::2] = 255
    Image.fromarray(stripes).save(root / "stripes.png")
    foreign = loaded.predict(pd.DataFrame({"image": [str(root / "stripes.png")]})).iloc[0]
    assert not foreign["in_distribution"] and foreign["ood_score"] >= 1.0
    import base64

    encoded = [
        base64.b64encode((root / "data" / "inference" / name).read_bytes()).decode() for name in output["image_path"]
    ]
    again = loaded.predict(pd.DataFrame({"image_base64": encoded}))
    assert list(again["pred_label"]) == list(output["pred_label"])


def _logged_model_uri(root, run) -> str:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    (model,) = [m for m in found if m.source_run_id == run.info.run_id]
    return f"models:/{model.model_id}"


def test_mlflow_models_serve_scores_images_like_the_pipeline(tracked):
    """``mlflow models serve`` (this environment, loopback, a free port): /invocations answers as output.csv."""
    import base64
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from conftest import wait_ready

    from benchmarks.redis_server import free_port

    root = tracked["root"]
    (run,) = _runs(root, "train")
    port = free_port()
    # MLflow starts ``uvicorn`` by name: the venv's bin folder must be on PATH, as an activated venv has it
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", _logged_model_uri(root, run)]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(
        command, cwd=root, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(server, f"http://127.0.0.1:{port}/ping", timeout=120)
        output = pd.read_csv(root / "inference_artifacts/output/output.csv")
        encoded = [base64.b64encode((root / "data/inference" / n).read_bytes()).decode() for n in output["image_path"]]
        body = json.dumps({"dataframe_split": {"columns": ["image_base64"], "data": [[e] for e in encoded]}})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            rows = pd.DataFrame(json.loads(answer.read())["predictions"])
        assert list(rows["pred_label"]) == list(output["pred_label"])
        assert (rows["anomaly_score"] - output["anomaly_score"]).abs().max() < 1e-5
        assert list(rows["is_anomalous"]) == list(output["pred_label"] != "good")
        assert list(rows["in_distribution"]) == list(output["in_distribution"])
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_an_inference_run_logs_counts_and_its_train_id(tracked):
    root = tracked["root"]
    (train,) = _runs(root, "train")
    (run,) = _runs(root, "inference")
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert run.data.tags["train_id"] == train.data.tags["train_id"]
    assert run.data.metrics["n_images"] == len(output)
    counts = output["pred_label"].value_counts()
    for label, count in counts.items():
        assert run.data.metrics[f"pred.{label}"] == count
    assert {a.path for a in _store(root).list_artifacts(run.info.run_id)} >= {"summary", "plan"}


def test_tracking_off_leaves_no_store(project):
    root, plan = project["root"], project["plan"]
    _control(plan, tracking=False)
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    assert not (root / "mlruns").exists()
    assert (root / "train_artifacts/models/train/calibration.json").is_file()


def test_a_failed_run_is_tracked_as_failed_with_its_error(project):
    root, plan = project["root"], project["plan"]
    _control(plan, tracking=True)
    from conftest import set_external

    (root / "data" / "empty").mkdir()
    set_external(plan, "load_inference_data_path", "data/empty")
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) != 0
    (run,) = _runs(root, "inference")
    assert run.info.status == "FAILED" and "no images" in run.data.tags["error"]


def test_a_store_that_cannot_be_written_is_one_warning_and_the_run_succeeds(project, capsys):
    root, plan = project["root"], project["plan"]
    (root / "blocked").write_text("a file where the store's folder would be")
    _control(plan, tracking=True, tracking_uri="blocked/store")
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "alo.tracking" in line]
    assert len(warnings) == 1 and "tracking skipped" in warnings[0] and "WARNING" in warnings[0]
    assert (root / "train_artifacts/models/train/calibration.json").is_file(), "tracking never costs a model"


def test_an_unknown_tracking_key_is_a_plan_error(project, capsys):
    root, plan = project["root"], project["plan"]
    _control(plan, tracking_url="x")
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 2
    assert "tracking_url" in capsys.readouterr().err


def test_the_background_loggers_errors_come_back_as_one_warning_on_the_next_run(project, capsys):
    root, path = _tracked_train(project)
    (root / "mlruns" / "tracking-errors.log").write_text("2026-12-01 run x: OperationalError: database is locked\n")
    capsys.readouterr()
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "alo.tracking" in line]
    assert len(warnings) == 1 and "database is locked" in warnings[0]
    assert len(_runs(root, "train")) == 2


def test_a_run_logs_what_it_reported_even_when_a_later_run_replaced_its_folder(project):
    """The job is a snapshot: a second train run (no backup) deletes the first's folder before anything is logged."""
    from alo.runner import prepare, run_pipeline
    from alo.tracking import run_jobs

    root, plan = project["root"], project["plan"]
    _control(plan, tracking=True, backup_artifacts=False)
    loaded = load_plan(write_plan(root, plan))
    steps = prepare(loaded, "train", "assets")
    jobs: list[Path] = []
    first = run_pipeline(loaded, "train", steps, "assets", tracking_jobs=jobs, reporter=main.REPORTER)
    first_id = json.loads((first / "log" / "experimental_history.json").read_text())["id"]
    run_pipeline(loaded, "train", steps, "assets", tracking_jobs=jobs, reporter=main.REPORTER)
    assert len(jobs) == 2 and not list((root / "history").glob(f"**/{first_id}")), "the first run's folder is gone"
    assert run_jobs(jobs) == 0 and not any(job.exists() for job in jobs)
    runs = {run.data.tags["alo.run_id"]: run for run in _runs(root, "train")}
    assert len(runs) == 2
    client = _store(root)
    for run in runs.values():
        assert {"threshold", "validation", "plan"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    found = mlflow.search_logged_models(experiment_ids=[runs[first_id].info.experiment_id], output_format="list")
    assert runs[first_id].info.run_id in {m.source_run_id for m in found}, "the first run's model is logged"


def test_mode_all_starts_one_logger_for_both_runs(project, monkeypatch):
    import alo.runner

    started: list[list[Path]] = []
    original = alo.runner.start_logger
    monkeypatch.setattr(alo.runner, "start_logger", lambda jobs: (started.append(list(jobs)), original(jobs)))
    root, plan = project["root"], project["plan"]
    _control(plan, tracking=True)
    assert main.main(["--mode", "all", "--config", str(write_plan(root, plan))]) == 0
    assert len(started) == 1 and [job.name.rsplit("-", 1)[1] for job in started[0]] == ["train", "inference"]
    assert len(_runs(root, "train")) == 1 and len(_runs(root, "inference")) == 1


def test_a_store_elsewhere_keeps_its_jobs_beside_the_plan_and_its_errors_come_back(project, capsys):
    """Any tracking URI: jobs and the error log live in mlruns/ beside the plan; a failure is the next run's WARNING."""
    root, plan = project["root"], project["plan"]
    _control(plan, tracking=True, tracking_uri="bogus://nowhere")
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    settings = settings_of(load_plan(path))
    assert settings.jobs == str(root / "mlruns") and wait_pending(settings, 120)
    assert "bogus" in (root / "mlruns" / "tracking-errors.log").read_text()
    capsys.readouterr()
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "could not be tracked" in line]
    assert len(warnings) == 1 and "bogus" in warnings[0]


def test_a_resident_process_logs_in_its_tracking_thread(project, monkeypatch):
    """The edge loop's runs are logged off the request path, by the one ``alo-tracking`` thread."""
    import threading

    import alo.tracking.writer
    from alo.runner import prepare, run_pipeline, train_id_of

    root, path = _tracked_train(project)
    threads: list[str] = []
    original = alo.tracking.writer.log_run

    def recorded(*args):
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(alo.tracking.writer, "log_run", recorded)
    loaded = load_plan(path)
    left: list[Path] = []  # a one-shot run whose logger never started: the resident thread logs it too
    run_pipeline(
        loaded,
        "inference",
        prepare(loaded, "inference", "assets"),
        "assets",
        tracking_jobs=left,
        reporter=main.REPORTER,
    )
    models = root / "train_artifacts" / "models"
    for _ in range(2):
        run_pipeline(
            loaded,
            "inference",
            prepare(loaded, "inference", "assets"),
            "assets",
            resident_model=models,
            reporter=main.REPORTER,
        )
    _settle(root)
    assert threads == ["alo-tracking"] * 3
    runs = _runs(root, "inference")
    assert len(runs) == 3 and {run.data.tags["train_id"] for run in runs} == {train_id_of(models)}
    assert left[0].name.split("-inference")[0] in {run.data.tags["alo.run_id"] for run in runs}


def test_a_job_that_fails_waits_for_a_later_logger_and_is_dropped_after_three_attempts(tmp_path, monkeypatch):
    import alo.tracking.writer
    from alo.tracking import JOB_FILE, MAX_ATTEMPTS, TrackingSettings, log_job

    settings = TrackingSettings(True, "sqlite:///unused.db", None, "vad", str(tmp_path))
    job = tmp_path / ".pending" / "run-train"
    job.mkdir(parents=True)
    (job / JOB_FILE).write_text(json.dumps({"settings": settings.__dict__}))

    def locked(settings):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(alo.tracking.writer, "cached_store", locked)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with pytest.raises(RuntimeError):
            log_job(job)
        assert job.exists() == (attempt < MAX_ATTEMPTS)
    assert log_job(job) is False, "a job gone is another logger's"


def test_a_logger_that_cannot_start_is_one_warning_and_the_job_waits(project, capsys, monkeypatch):
    import alo.tracking.spawn

    def no_process(jobs):
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(alo.tracking.spawn, "_start", no_process)
    root, plan = project["root"], project["plan"]
    _control(plan, tracking=True)
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "alo.tracking" in line]
    assert len(warnings) == 1 and "tracking delayed" in warnings[0]
    assert len(list((root / "mlruns" / ".pending").glob("*/job.json"))) == 1, "the job waits for the next logger"


def test_what_no_logger_would_log_is_swept(tmp_path):
    import os

    from alo.tracking.spool import JOB_FILE, STALE_S, sweep

    pending = tmp_path / ".pending"
    (pending / "dead").mkdir(parents=True)
    (pending / "writing").mkdir()
    (pending / "complete").mkdir()
    (pending / "complete" / JOB_FILE).write_text("{}")
    (pending / "old-format.json").write_text("{}")
    old = (pending / "dead").stat().st_mtime - STALE_S - 60
    os.utime(pending / "dead", (old, old))
    sweep(pending)
    assert sorted(p.name for p in pending.iterdir()) == ["complete", "writing"]
