"""Drift over time in the resident modes: the reference saved at training, the edge loop's one message on
``alo_drift`` (a real redis-server), ``/metrics`` and the Monitoring page (real uvicorn, headless Chromium)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import (
    ROOT,
    make_dataset,
    make_inference_folder,
    step_args,
    tiny_plan,
    wait_ready,
    write_plan,
)
from PIL import Image
from test_edge_loop import answers, request, start_loop, stop

import main
from benchmarks.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "test-artifacts" / "screenshots"
WINDOW = 20  # control.drift_window: one request of a folder of 25 images fills it


def odd_images(folder, count: int, seed: int):
    """Striped and noise cards: not the product the model was trained on (out of distribution)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        picture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        if i % 2:
            picture[::2] = 255
        Image.fromarray(picture).save(folder / f"odd_{i}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PatchCore model with 12 OK validation images, 25 images of its kind and two folders of odd ones."""
    root = tmp_path_factory.mktemp("drift")
    make_dataset(root / "data" / "train", n_valid_ok=12)
    make_inference_folder(root / "data" / "inference", n_ok=3, n_ng=0, seed=6)
    normal = make_inference_folder(root / "data" / "normal", n_ok=25, n_ng=0, seed=7)
    plan = tiny_plan(export=[])
    plan["control"] = [*plan["control"], {"drift_window": WINDOW}]
    step_args(plan, "inference", "inference").update({"save_anomaly_maps": False, "save_output_images": 0})
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    odd = [odd_images(root / "data" / f"odd{i}", 25, seed=i) for i in (1, 2)]
    return {"root": root, "plan": path, "raw_plan": plan, "normal": normal, "odd": odd}


def test_training_saves_the_validation_ok_scores_as_the_drift_reference(trained):
    saved = json.loads((trained["root"] / "train_artifacts/models/train/drift_reference.json").read_text())
    assert saved["format"] == 1
    anomaly, ood = saved["measures"]["anomaly_score"], saved["measures"]["ood_score"]
    assert len(anomaly) == len(ood) == 12  # the OK validation images, no NG one
    assert all(0.0 <= value <= 1.0 for value in anomaly) and max(ood) < 1.0


def test_the_loop_publishes_one_drift_message_per_measure_after_a_shifted_stream_and_none_before(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    from alo.plan import load_plan
    from alo.tracking import settings_of

    plan = copy.deepcopy(trained["raw_plan"])
    plan["control"] = [
        *[e for e in plan["control"] if "tracking" not in e],
        {"tracking": True},
        {"loop_metrics_every": 1},
    ]
    tracked = write_plan(trained["root"], plan, "tracked.yaml")
    server = RedisServer(tmp_path / "redis").start()
    try:
        listener = server.client().pubsub(ignore_subscribe_messages=True)
        listener.subscribe("alo_drift")
        loop = start_loop({**trained, "plan": tracked}, server)
        client = server.client()
        client.rpush("request_inference", request(trained["normal"], "normal"))
        [normal] = answers(server, 1)
        quiet = drift_messages(listener, 1.0)
        for i, folder in enumerate(trained["odd"]):  # the line keeps drifting: still one message a measure
            client.rpush("request_inference", request(folder, f"odd{i}"))
        shifted = answers(server, 2)
        published = drift_messages(listener, 3.0)
        code, output = stop(loop)
    finally:
        server.stop()
    assert code == 0, output[-3000:]
    assert normal["status"] == "success" and quiet == []
    assert [answer["status"] for answer in shifted] == ["success", "success"]
    assert sorted(message["measure"] for message in published) == ["anomaly_score", "ood_score"]
    train_id = json.loads((trained["root"] / "train_artifacts/models/train_run.json").read_text())["train_id"]
    for message in published:
        assert message["statistic"] >= message["limit"] == 0.3
        assert (message["window"], message["reference"], message["train_id"]) == (WINDOW, 12, train_id)
        logged = [line for line in output.splitlines() if f"alo_drift {json.dumps(message)}" in line]
        assert len(logged) == 1 and "WARNING" in logged[0]  # the same message in the log
    assert output.count("alo_drift {") == 2
    settings = settings_of(load_plan(tracked))
    store = MlflowClient(settings.uri)
    [run] = store.search_runs([store.get_experiment_by_name(settings.experiment).experiment_id])
    history = {
        name: [(m.step, m.value) for m in store.get_metric_history(run.info.run_id, name)]
        for name in ("drift_ood_score", "drift_window", "drift_crossed")
    }
    assert history["drift_window"] == [(1, WINDOW), (2, WINDOW), (3, WINDOW)]  # a step a request (every 1)
    assert history["drift_crossed"] == [(1, 0.0), (2, 1.0), (3, 1.0)]
    assert [step for step, _ in history["drift_ood_score"]] == [1, 2, 3] and history["drift_ood_score"][-1][1] == 1.0


def drift_messages(listener, seconds: float) -> list[dict]:
    """The messages published on ``alo_drift`` within a few seconds."""
    found, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=0.2)
        if message is not None:
            found.append(json.loads(message["data"]))
    return found


@pytest.fixture(scope="module")
def served(trained):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(trained["plan"]), "--port", str(port)]
    command += ["--data-root", str(trained["root"] / "data")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{base}/readyz")
    yield base, process
    process.terminate()
    process.wait(timeout=60)


def predict(base: str, folder, names: list[str]) -> None:
    paths = [str((folder / name).relative_to(folder.parent.parent / "data")) for name in names]
    body = json.dumps({"paths": paths}).encode()
    sent = urllib.request.Request(f"{base}/v1/predict", body, {"content-type": "application/json"})
    with urllib.request.urlopen(sent, timeout=60) as answer:
        assert answer.status == 200


def gauges(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vad_drift")
    }


def drift_state(base: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{base}/ui/api/drift", timeout=10).read())


def wait_for(check, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_metrics_export_the_drift_gauges_and_the_page_shows_the_chart_and_the_banner(served, trained):
    base, _ = served
    normal = sorted(path.name for path in trained["normal"].glob("*.png"))
    predict(base, trained["normal"], normal[:12])
    predict(base, trained["normal"], normal[12:])
    assert wait_for(lambda: drift_state(base)["measures"]["ood_score"]["images"] == WINDOW)
    figures = gauges(base)
    assert figures["vad_drift_available"] == 1.0 and figures["vad_drift_limit"] == 0.3
    assert figures['vad_drift_window_images{measure="ood_score"}'] == WINDOW
    assert figures['vad_drift_crossed{measure="ood_score"}'] == 0.0
    assert 0.0 <= figures['vad_drift_statistic{measure="ood_score"}'] < 0.6  # 12 reference images: noisy, not drift
    assert shot(base, "monitoring-in-line", banner=False) == 2  # one judgement: a dot for each measure

    odd = sorted(path.name for path in trained["odd"][0].glob("*.png"))
    predict(base, trained["odd"][0], odd[:12])
    predict(base, trained["odd"][0], odd[12:])
    assert wait_for(lambda: drift_state(base)["crossed"])
    figures = gauges(base)
    assert figures['vad_drift_crossed{measure="ood_score"}'] == 1.0
    assert figures['vad_drift_statistic{measure="ood_score"}'] == 1.0
    assert shot(base, "monitoring-drifted", banner=True) == 2  # three judgements: a line for each measure


def shot(base: str, name: str, banner: bool) -> int:
    """Open the Monitoring page in Chromium; check its banner; the number of series drawn (a screenshot kept)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make system-deps)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 860})
            page.goto(f"{base}/ui/monitoring")
            page.wait_for_selector("#drift-measures tbody tr")
            lines = page.locator("#drift-chart polyline.drift-line, #drift-chart circle.drift-dot").count()
            assert page.locator("#drift-chart line.drift-limit").count() == 1
            text = page.locator("#drift-banner").inner_text() if banner else ""
            assert page.locator("#drift-banner").is_visible() is banner
            if banner:
                assert text.startswith("Drift: ") and "ood_score has drifted from the validation OK images" in text
                assert (
                    page.locator('#drift-measures tr[data-measure="ood_score"]').get_attribute("data-crossed") == "true"
                )
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    return lines
