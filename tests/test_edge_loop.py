"""The resident edge loop against a real redis-server: answers, failures, outages and crashes."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, load_default_plan, make_dataset, make_inference_folder, set_external, step_args, write_plan

import main
from benchmarks.redis_server import RedisServer

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not

ANSWER_TIMEOUT = 120  # seconds to wait for one answer (a loop boot included)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with a PatchCore model trained on tiny images, and a few images to send."""
    root = tmp_path_factory.mktemp("edge")
    make_dataset(root / "data" / "train")
    make_inference_folder(root / "data" / "inference")
    make_inference_folder(root / "data" / "many", n_ok=120, n_ng=40, seed=5)  # a request that takes a while
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/inference")
    step_args(plan, "train", "train").update({"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore"})
    step_args(plan, "inference", "inference")["save_anomaly_maps"] = False
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    corrupt = root / "data" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a picture")
    return {"root": root, "plan": path, "raw_plan": plan}


@pytest.fixture
def server(tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    yield redis_server
    redis_server.stop()


def request(image: Path, request_id: str | None = None, **entry) -> str:
    message: dict = {"solution_metadata": {"pipeline": [{"type": "inference", "dataset_uri": str(image), **entry}]}}
    if request_id is not None:
        message["request_id"] = request_id
    return json.dumps(message)


def start_loop(trained, server: RedisServer, **metadata) -> subprocess.Popen:
    system = json.dumps({"edgeapp_interface": {"redis_server_uri": server.uri}, **metadata})
    command = [sys.executable, "main.py", "--mode", "inference", "--loop", "--config", str(trained["plan"])]
    return subprocess.Popen(
        [*command, "--system", system], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def answers(server: RedisServer, count: int, key: str = "inference_summary") -> list[dict]:
    client, found = server.client(), []
    deadline = time.monotonic() + ANSWER_TIMEOUT * count
    while len(found) < count and time.monotonic() < deadline:
        try:
            item = client.blpop([key], timeout=1)
        except Exception:  # the server may be restarting
            time.sleep(0.2)
            continue
        if item is not None:
            found.append(json.loads(item[1]))
    assert len(found) == count, f"{len(found)} of {count} answers on {key}"
    return found


def stop(loop: subprocess.Popen) -> tuple[int, str]:
    loop.send_signal(signal.SIGTERM)
    output, _ = loop.communicate(timeout=60)
    return loop.returncode, output


def test_a_request_is_answered_with_the_summary_of_a_batch_run(trained, server, tmp_path):
    image = sorted((trained["root"] / "data" / "inference").glob("ng_*.png"))[0]
    batch_plan = copy.deepcopy(trained["raw_plan"])
    set_external(batch_plan, "load_inference_data_path", str(image))
    batch_root = trained["root"]
    path = write_plan(batch_root, batch_plan, "batch_plan.yaml")
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0
    batch = yaml.safe_load((batch_root / "inference_artifacts/score/inference_summary.yaml").read_text())
    artifacts = tmp_path / "out"
    loop = start_loop(trained, server, metadata_version="2.5")
    client = server.client()
    pubsub = client.pubsub()
    pubsub.subscribe("alo_status")
    client.rpush("request_inference", request(image, "first", artifact_uri=str(artifacts)))
    answer = answers(server, 1)[0]
    archived = answers(server, 1, "inference_artifacts")[0]
    code, output = stop(loop)
    assert code == 0, output[-2000:]
    assert answer["status"] == "success" and answer["request_id"] == "first"
    assert archived == answer and (artifacts / "inference_artifacts.tar.gz").is_file()
    with tarfile.open(artifacts / "inference_artifacts.tar.gz") as tar:  # the request's picture, as sent
        picture = tar.extractfile(f"output/{image.name}")
        assert picture is not None and picture.read() == image.read_bytes()
    summary = answer["message"]
    assert summary.pop("version") == "2.5"  # metadata_version
    assert {k: v for k, v in summary.items() if k != "date"} == {
        k: v for k, v in batch.items() if k not in ("date", "version")
    }
    assert summary["result"] == "bad"
    statuses = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            statuses.append(message["data"])
    assert statuses[-2:] == ["run", "waiting"] and "waiting" in statuses[:-2]
    assert client.llen("request_inference:processing") == 0
    assert "Traceback" not in output


def test_bad_requests_fail_with_one_line_and_the_loop_serves_the_next(trained, server):
    root = trained["root"]
    good = sorted((root / "data" / "inference").glob("ok_*.png"))[0]
    client = server.client()
    client.rpush("request_inference", request(root / "data" / "corrupt.png", "corrupt"))
    client.rpush("request_inference", request(root / "data" / "missing.png", "missing"))
    client.rpush("request_inference", "{not json")
    client.rpush("request_inference", json.dumps({"solution_metadata": {"pipeline": [{"dataset_uri": ["a", "b"]}]}}))
    client.rpush("request_inference", request(good, "good"))
    typo = {"selected_user_parameters": [{"step": "inference", "args": [{"inference_treshold": 0.9}]}]}
    client.rpush("request_inference", request(good, "typo", parameters=typo))
    strict = {"selected_user_parameters": [{"step": "inference", "args": {"inference_threshold": 0.0}}]}
    client.rpush("request_inference", request(good, "strict", parameters=strict))
    client.rpush("request_inference", request(good, "good-again"))  # the plan's own threshold again
    failing = client.pubsub()
    failing.subscribe("alo_fail")
    loop = start_loop(trained, server)
    found = answers(server, 8)
    code, output = stop(loop)
    assert code == 0, output[-2000:]
    assert [a["status"] for a in found] == ["fail"] * 4 + ["success", "fail", "success", "success"]
    assert found[0]["request_id"] == "corrupt" and "corrupt.png" in found[0]["message"]
    assert found[1]["request_id"] == "missing" and "missing.png" in found[1]["message"]
    assert "not JSON" in found[2]["message"] and found[2]["request_id"]  # an id even without a message to read it
    assert "dataset_uri" in found[3]["message"]
    assert all("\n" not in a["message"] and "Traceback" not in a["message"] for a in found[:4])
    assert [a["error_code"] for a in found[:4] + found[5:6]] == ["E141", "E141", "E111", "E111", "E112"]
    assert found[4]["message"]["result"] == "good"
    assert "inference_treshold" in found[5]["message"] and "inference_threshold" in found[5]["message"]
    assert found[6]["message"]["result"] == "bad"  # the request's threshold 0.0 makes every image NG
    assert found[7]["message"]["result"] == "good"  # steps validated per set of arguments, not reused across sets
    failed = answers(server, 5, "inference_artifacts")  # fail answers go to both lists
    assert [a["request_id"] for a in failed] == [a["request_id"] for a in found[:4]] + ["typo"]
    codes = []
    while (message := failing.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            codes.append(json.loads(message["data"]))
    assert [code["ERROR_CODE"] for code in codes] == ["E141", "E141", "E111", "E111", "E112"]
    assert codes[0]["ERROR_NAME"] == "PipelineDataLoadError" and "corrupt.png" in codes[0]["COMMENT"]
    history = list((root / "history" / "inference").glob("*-error"))
    assert len(history) >= 2  # the failed pipeline runs are kept


def test_every_request_is_answered_when_redis_restarts_mid_stream(trained, server):
    many = trained["root"] / "data" / "many"  # requests of 160 images: the stop falls in the middle of the stream
    client = server.client()
    ids = [f"r{i}" for i in range(4)]
    for request_id in ids:
        client.rpush("request_inference", request(many, request_id))
    loop = start_loop(trained, server)
    first = answers(server, 1)
    assert client.llen("request_inference") + client.llen("request_inference:processing") >= 2
    server.stop()  # the queue and the answers so far are in the append-only file
    time.sleep(1.5)
    server.start()
    rest = []
    deadline = time.monotonic() + ANSWER_TIMEOUT * 2
    while {a["request_id"] for a in first + rest} != set(ids) and time.monotonic() < deadline:
        rest += answers(server, 1)
    code, output = stop(loop)
    assert code == 0, output[-2000:]
    got = first + rest
    assert {a["request_id"] for a in got} == set(ids)
    assert all(a["status"] == "success" for a in got)
    by_id: dict[str, list[dict]] = {}
    for a in got:
        by_id.setdefault(a["request_id"], []).append(a["message"]["file_path"])
    assert all(len(set(paths)) == 1 for paths in by_id.values())  # a duplicate is the same request's answer
    assert output.count("unreachable") == 1  # logged once, not per retry
    assert client.llen("request_inference:processing") == 0


def test_a_request_in_flight_when_the_loop_is_killed_is_answered_after_a_restart(trained, server, tmp_path):
    many = make_inference_folder(tmp_path / "slow", n_ok=700, n_ng=100, seed=9)  # a few seconds to score
    client = server.client()
    status = client.pubsub()
    status.subscribe("alo_status")
    loop = start_loop(trained, server)
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while time.monotonic() < deadline:  # the warm-up run ends with "waiting"
        message = status.get_message(timeout=1)
        if message and message["data"] == "waiting":
            break
    client.rpush("request_inference", request(many, "slow"))
    while time.monotonic() < deadline:
        message = status.get_message(timeout=1)
        if message and message["data"] == "run":
            break
    time.sleep(0.3)
    loop.send_signal(signal.SIGKILL)
    loop.communicate(timeout=30)
    assert client.llen("inference_summary") == 0
    assert [json.loads(raw)["request_id"] for raw in client.lrange("request_inference:processing", 0, -1)] == ["slow"]
    again = start_loop(trained, server)
    answer = answers(server, 1)[0]
    code, output = stop(again)
    assert code == 0, output[-2000:]
    assert answer["request_id"] == "slow" and answer["status"] == "success"
    assert answer["message"]["file_path"] == str(many) and "800 image(s)" in answer["message"]["note"]
    assert "left unanswered" in output


def test_a_request_without_an_id_keeps_the_id_it_was_given(trained, server):
    image = sorted((trained["root"] / "data" / "inference").glob("ok_*.png"))[0]
    client = server.client()
    client.rpush("request_inference", request(image))
    loop = start_loop(trained, server)
    answer = answers(server, 1)[0]
    stop(loop)
    assert len(answer["request_id"]) == 32 and answer["status"] == "success"


def test_solution_metadata_errors_are_one_line(tmp_path):
    from alo.errors import PlanError
    from alo.solution_metadata import parse_metadata

    with pytest.raises(PlanError, match="redis_server_uri"):
        parse_metadata({"edgeapp_interface": {"redis_server_uri": "localhost"}})
    with pytest.raises(PlanError, match="not a local path"):
        parse_metadata({"pipeline": [{"type": "inference", "dataset_uri": "s3://bucket/data"}]})
    with pytest.raises(PlanError, match="neither a file nor a JSON"):
        parse_metadata(str(tmp_path / "missing.yaml"))
    metadata = tmp_path / "meta.yaml"
    metadata.write_text("metadata_version: 3\nunused_alo_key: 1\npipeline:\n- type: inference\n  dataset_uri: x\n")
    parsed = parse_metadata(str(metadata))
    assert parsed.metadata_version == 3 and parsed.inference().dataset_uri == "x"


def test_the_summary_is_answered_before_the_artifacts_and_an_archive_failure_fails_only_them(trained, server):
    root = trained["root"]
    image = sorted((root / "data" / "inference").glob("ng_*.png"))[0]
    blocker = root / "data" / "a-file-not-a-folder"
    blocker.write_text("the archive cannot go inside a file")
    heatmaps = {"selected_user_parameters": [{"step": "inference", "args": {"save_anomaly_maps": True}}]}
    client = server.client()
    client.rpush("request_inference", request(image, "blocked", artifact_uri=str(blocker), parameters=heatmaps))
    client.rpush("request_inference", request(image, "saved", artifact_uri=str(root / "out"), parameters=heatmaps))
    failing = client.pubsub()
    failing.subscribe("alo_fail")
    loop = start_loop(trained, server)
    summaries = answers(server, 2)
    artifacts = answers(server, 2, "inference_artifacts")
    code, output = stop(loop)
    assert code == 0, output[-2000:]
    assert [a["status"] for a in summaries] == ["success", "success"]  # the verdict was out before the archive
    assert artifacts[0]["status"] == "fail" and artifacts[0]["error_code"] == "E162"
    assert artifacts[0]["request_id"] == "blocked" and "\n" not in artifacts[0]["message"]
    assert artifacts[1] == summaries[1]  # the same message once the archive is written
    codes = []
    while (message := failing.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            codes.append(json.loads(message["data"]))
    assert [c["ERROR_CODE"] for c in codes] == ["E162"]
    assert codes[0]["ERROR_NAME"] == "InferenceArtifactsCreationFailure"
    assert (root / "out" / "inference_artifacts.tar.gz").is_file()
    assert len(list((root / "inference_artifacts" / "extra_output" / "inference" / "images").glob("*.png"))) == 1
    assert client.llen("request_inference:processing") == 0


def test_run_pipeline_answers_before_deferred_writes_and_promotion(trained):
    from alo.plan import load_plan
    from alo.runner import prepare, run_pipeline

    root = trained["root"]
    plan = copy.deepcopy(trained["raw_plan"])
    step_args(plan, "inference", "inference")["save_anomaly_maps"] = True
    path = write_plan(root, plan, "heatmaps.yaml")
    loaded = load_plan(path)
    seen: dict = {}

    def answer(staging: Path) -> None:
        seen["summary"] = (staging / "score" / "inference_summary.yaml").is_file()
        seen["pictures"] = list(staging.rglob("*.png"))
        log = root / "inference_artifacts" / "log" / "process.log"
        seen["promoted"] = log.is_file() and staging.name.removeprefix("inference-") in log.read_text()

    final = run_pipeline(loaded, "inference", prepare(loaded, "inference", "assets"), "assets", answer=answer)
    assert seen == {"summary": True, "pictures": [], "promoted": False}
    pictures = list((final / "extra_output" / "inference" / "images").glob("*.png"))
    assert len(pictures) == len(list((root / "data" / "inference").glob("*.png")))  # written before promotion


def test_a_run_keeps_the_plan_as_the_request_changed_it(trained):
    from alo.plan import load_plan
    from alo.runner import prepare, run_pipeline
    from alo.solution_metadata import parse_metadata

    root = trained["root"]
    image = sorted((root / "data" / "inference").glob("ok_*.png"))[0]
    loaded = load_plan(trained["plan"])
    parameters = {"selected_user_parameters": [{"step": "inference", "args": {"inference_threshold": 0.7}}]}
    entry = {"type": "inference", "dataset_uri": str(image), "parameters": parameters}
    metadata = parse_metadata({"pipeline": [entry]})
    plan = metadata.apply(loaded)
    final = run_pipeline(plan, "inference", prepare(plan, "inference", "assets"), "assets")
    kept = final / "log" / "experimental_plan.yaml"
    assert kept.read_text().startswith(f"# {trained['plan']} as this run used it: solution metadata applied")
    again = load_plan(kept)  # a valid plan
    assert again.external_path.load_inference_data_path == str(image)
    assert {s.name: s.args for s in again.pipelines["inference"]}["inference"]["inference_threshold"] == 0.7
    assert again.pipelines["train"] == loaded.pipelines["train"] and again.name == loaded.name
    unchanged = run_pipeline(loaded, "inference", prepare(loaded, "inference", "assets"), "assets")
    assert (unchanged / "log" / "experimental_plan.yaml").read_bytes() == trained["plan"].read_bytes()


def test_a_resident_run_is_promoted_without_waiting_for_its_pictures(trained, tmp_path):
    import threading
    from pathlib import PurePosixPath

    from alo.asset import DeferredFile
    from alo.background import BackgroundFiles
    from alo.plan import load_plan
    from alo.runner import ResidentRun, prepare, run_pipeline

    root = trained["root"]
    plan = copy.deepcopy(trained["raw_plan"])
    step_args(plan, "inference", "inference")["save_anomaly_maps"] = True
    loaded = load_plan(write_plan(root, plan, "pictures.yaml"))
    files = BackgroundFiles(nice=0)
    busy, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        busy.set()
        release.wait(60)
        return b""

    files.submit(tmp_path, [(PurePosixPath("busy"), DeferredFile(tmp_path, slow, ()))])
    assert busy.wait(30)  # the background thread is held: nothing of this run can be written by it yet
    resident = ResidentRun(tracked=False, history_keep=5, background=files)
    models = root / "train_artifacts" / "models"
    final = run_pipeline(
        loaded, "inference", prepare(loaded, "inference", "assets"), "assets", resident_model=models, resident=resident
    )
    folder = final / "extra_output" / "inference" / "images"
    assert (final / "score" / "inference_summary.yaml").is_file() and not list(folder.glob("*.png"))
    release.set()
    assert files.drain(60)
    files.close(5)
    assert len(list(folder.glob("*.png"))) == len(list((root / "data" / "inference").glob("*.png")))
    assert files.failed == 0 and files.dropped == 0


def test_a_loop_session_is_one_mlflow_run_with_figures_over_time_and_history_capped_by_count(trained, server, tmp_path):
    from mlflow.tracking import MlflowClient

    from alo.plan import load_plan
    from alo.tracking import settings_of
    from vad.heatmaps import heatmap_name

    root = tmp_path / "line"
    root.mkdir()
    shutil.copytree(trained["root"] / "train_artifacts", root / "train_artifacts")
    plan = copy.deepcopy(trained["raw_plan"])
    for key in ("load_train_data_path", "load_inference_data_path"):
        set_external(plan, key, str(trained["root"] / "data" / ("train" if "train" in key else "inference")))
    step_args(plan, "inference", "inference")["save_anomaly_maps"] = True
    plan["control"] = [
        *[entry for entry in plan["control"] if "tracking" not in entry],
        {"tracking": True},
        {"loop_metrics_every": 2},
        {"loop_history_keep": 3},
    ]
    path = write_plan(root, plan)
    images = sorted((trained["root"] / "data" / "inference").glob("*.png"))
    client = server.client()
    for i, image in enumerate(images):
        client.rpush("request_inference", request(image, f"part-{i}"))
    loop = start_loop({**trained, "plan": path}, server)
    got = answers(server, len(images))
    code, output = stop(loop)
    assert code == 0, output[-2000:]
    assert [a["status"] for a in got] == ["success"] * len(images)
    settings = settings_of(load_plan(path))
    store = MlflowClient(settings.uri)
    experiment = store.get_experiment_by_name(settings.experiment)
    runs = store.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [run.data.tags.get("mlflow.runName") for run in runs]  # no run per request
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["alo.session"] == "loop" and run.data.tags["train_id"]
    assert run.data.params["inference.save_anomaly_maps"] == "True"
    served = store.get_metric_history(run.info.run_id, "requests")
    assert [(m.step, m.value) for m in served] == [(2, 2), (4, 4), (5, 5)]  # every 2 requests, and at the end
    for name in ("latency_p50_ms", "latency_p95_ms", "score_p50", "score_p95", "ng_rate", "pictures_written"):
        assert [m.step for m in store.get_metric_history(run.info.run_id, name)] == [2, 4, 5], name
    figures = run.data.metrics
    assert figures["failures"] == 0 and 0 <= figures["ng_images"] <= figures["images"] == len(images)
    # the warm-up's and each request's pictures, written after the answers; the newest is never dropped
    made = figures["pictures_written"], figures["pictures_dropped"], figures["pictures_failed"]
    assert sum(made) == 2 * len(images) and made[0] >= 1, made  # dropped: pruned, or queued beyond the capacity
    history = list((root / "history" / "inference").iterdir())
    assert len(history) == 3  # 6 runs (the warm-up and 5 requests) replaced 5: the 3 newest kept
    latest = root / "inference_artifacts" / "extra_output" / "inference" / "images"
    assert [p.name for p in latest.glob("*.png")] == [heatmap_name("unknown", got[-1]["message"]["result"], images[-1])]
    assert not list(root.rglob("*.part")) and not list((root / "mlruns" / ".pending").glob("*/job.json"))
    assert not list((root / ".alo" / "trash").iterdir())  # the pruned runs, deleted by the background thread
