"""Images kept for review by batch inference, the HTTP API, and marked OK or NG on the page in real Chromium.

One trained project (``main.py --mode all``), one ``main.py --mode serve`` on a free loopback port, and
Debian's chromium driven by Playwright, as tests/test_web_page.py does.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, set_external, trained_project, wait_ready, write_plan

import main
from alo.errors import PlanError
from alo.plan import load_plan, parse_plan
from alo.runner import prepare, run_pipeline
from alo.solution_metadata import parse_metadata
from benchmarks.redis_server import free_port
from vad.review.entries import read_index
from vad.review.feedback import COLUMNS, read_feedback

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "test-artifacts" / "screenshots"


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained PatchCore model whose `--mode all` run scored the inference folder; a labelled run besides."""
    root = tmp_path_factory.mktemp("review")
    plan, path = trained_project(root)
    labelled = root / "data" / "labelled"  # two defective training images labelled OK: the model disagrees
    labelled.mkdir()
    for name in ("b000.png", "b001.png"):
        shutil.copy(root / "data" / "train" / "bad" / name, labelled / name)
    pd.DataFrame({"label": ["good", "good"], "image_path": ["b000.png", "b001.png"]}).to_csv(
        labelled / "labels.csv", index=False
    )
    checked = copy.deepcopy(plan)
    set_external(checked, "load_inference_data_path", "data/labelled")
    assert main.main(["--mode", "inference", "--config", str(write_plan(root, checked, "labelled.yaml"))]) == 0
    return {"root": root, "plan": path, "plan_dict": plan, "train_digest": _digest(root / "data" / "train")}


def _train_id(root: Path) -> str:
    return json.loads((root / "train_artifacts/models/train_run.json").read_text())["train_id"]


def test_batch_inference_keeps_its_scored_images_for_review(project):
    root = project["root"]
    entries = read_index(root / "review")
    from_inference = [e for e in entries if Path(e.source).parent.name == "inference"]
    assert sorted(Path(e.source).name for e in from_inference) == [
        "ng_0.png",
        "ng_1.png",
        "ok_0.png",
        "ok_1.png",
        "ok_2.png",
    ]
    assert {e.origin for e in entries} == {"inference"} and {e.train_id for e in entries} == {_train_id(root)}
    for entry in from_inference:
        assert (root / "review" / entry.image).read_bytes() == Path(entry.source).read_bytes()
        assert entry.label is None and entry.ood_score is not None
        assert entry.in_distribution is (entry.ood_score < 1.0), "the run's own out-of-distribution columns"
    labelled = {Path(e.source).name: e for e in entries if Path(e.source).parent.name == "labelled"}
    assert set(labelled) == {"b000.png", "b001.png"} and {e.label for e in labelled.values()} == {"good"}
    rows = pd.read_csv(root / "inference_artifacts/output/output.csv")  # the labelled run is the last one
    for _, row in rows.iterrows():
        entry = labelled[row["image_path"]]
        assert (entry.pred_label, entry.anomaly_score) == (row["pred_label"], pytest.approx(row["anomaly_score"]))
    log = (root / "inference_artifacts/log/pipeline.log").read_text()
    assert "2 of 2 scored image(s) kept for review" in log


def test_a_second_run_keeps_no_copy_and_a_cap_of_zero_keeps_nothing(project, tmp_path):
    root = project["root"]
    before = len(read_index(root / "review"))
    assert main.main(["--mode", "inference", "--config", str(project["plan"])]) == 0
    assert len(read_index(root / "review")) == before, "the same pictures are kept once"
    fresh = root / "data" / "fresh"
    fresh.mkdir(exist_ok=True)
    shutil.copy(root / "data" / "train" / "good" / "g030.png", fresh / "g030.png")
    plan = copy.deepcopy(project["plan_dict"])
    plan["control"] = [*plan["control"], {"review_size_mb": 0}]
    set_external(plan, "load_inference_data_path", "data/fresh")
    assert main.main(["--mode", "inference", "--config", str(write_plan(root, plan, "nokeep.yaml"))]) == 0
    assert len(read_index(root / "review")) == before
    with pytest.raises(PlanError, match=r"^plan error: 'control.review_size_mb' is -1: .*greater than or equal to 0$"):
        parse_plan({**plan, "control": [{"review_size_mb": -1}]}, tmp_path / "plan.yaml")


def test_a_request_of_the_edge_loop_keeps_its_image_as_loop(project):
    """A loop request's run: the plan as the request's solution metadata changed it, with the resident model."""
    root = project["root"]
    request = root / "data" / "request-1"
    request.mkdir()
    shutil.copy(root / "data" / "train" / "good" / "g031.png", request / "shot.png")
    metadata = parse_metadata({"pipeline": [{"type": "inference", "dataset_uri": str(request)}]})
    plan = metadata.apply(load_plan(project["plan"]))
    models = root / "train_artifacts" / "models"
    run_pipeline(plan, "inference", prepare(plan, "inference", "assets"), "assets", resident_model=models)
    (entry,) = [e for e in read_index(root / "review") if e.source == str(request / "shot.png")]
    assert entry.origin == "loop" and entry.train_id == _train_id(root)
    assert (root / "review" / entry.image).read_bytes() == (request / "shot.png").read_bytes()


@pytest.fixture(scope="module")
def server(project):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(project["plan"]), "--port", str(port)]
    command += ["--data-root", str(project["root"] / "data")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{base}/readyz")
    yield base
    process.terminate()
    process.wait(timeout=60)


def _stripes_png() -> bytes:
    """Black and white rows: nothing like the textures the model learned (out of distribution)."""
    import io

    import numpy as np
    from PIL import Image

    stripes = np.zeros((96, 96), np.uint8)
    stripes[::2] = 255
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, "PNG")
    return buffer.getvalue()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_http_api_keeps_what_it_scored_after_answering(server, project):
    root = project["root"]
    picture = _stripes_png()
    boundary = uuid.uuid4().hex
    name = "../../<b>cam 7</b>.png"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + picture
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = _post(f"{server}/v1/predict", body, {"content-type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and answer["results"][0]["in_distribution"] is False
    deadline = time.monotonic() + 30
    while not (found := [e for e in read_index(root / "review") if e.origin == "http"]):
        assert time.monotonic() < deadline, "the upload was not kept"
        time.sleep(0.2)
    (entry,) = found
    assert entry.source == name, "the upload's name is recorded as text"
    assert entry.image == f"images/{entry.id}.png" and (root / "review" / entry.image).read_bytes() == picture
    assert entry.in_distribution is False and entry.train_id == _train_id(root)
    assert entry.anomaly_score == pytest.approx(answer["results"][0]["anomaly_score"])


def _csrf(server: str) -> str:
    html = urllib.request.urlopen(f"{server}/ui/review", timeout=10).read().decode()
    return html.split('name="csrf" content="')[1].split('"')[0]


def test_verdicts_need_the_csrf_value_and_a_kept_image(server):
    body = json.dumps({"verdicts": [{"id": "20260101T000000-00000000", "verdict": "OK"}]}).encode()
    status, answer = _post(f"{server}/ui/api/review", body, {"content-type": "application/json"})
    assert status == 403 and "cross-site" in answer["error"]
    headers = {"content-type": "application/json", "x-vad-csrf": _csrf(server)}
    status, answer = _post(f"{server}/ui/api/review", body, headers)
    assert status == 404 and "reload the queue" in answer["error"]
    bad = json.dumps({"verdicts": [{"id": "x", "verdict": "maybe"}]}).encode()
    assert _post(f"{server}/ui/api/review", bad, headers)[0] == 422
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}/ui/api/review/image/..%2F..%2Fexperimental_plan.yaml", timeout=10)
    assert refused.value.code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)")
def test_marking_images_with_the_keys_writes_the_feedback_csv(server, project):
    playwright_api = pytest.importorskip("playwright.sync_api")
    root = project["root"]
    queued = len(read_index(root / "review")) - len(read_feedback(root / "review"))
    started = datetime.now(UTC) - timedelta(seconds=1)
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(f"{server}/ui/review")
        page.wait_for_function("() => document.querySelectorAll('article.review-card').length > 3")
        status = page.locator("#review-status")
        assert status.get_attribute("data-queued") == str(queued) and status.get_attribute("data-waiting") == "0"
        cards = page.locator("article.review-card")
        assert [cards.nth(i).get_attribute("data-tier") for i in range(3)] == ["0", "0", "1"], (
            "the two disagreements, then the image out of distribution"
        )
        assert "labelled good but predicted" in cards.first.locator(".reason").inner_text()
        assert cards.nth(2).locator(".ood-warning").is_visible()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.review-image')].every(i => i.complete && i.naturalWidth > 0)"
        )
        ids = [cards.nth(i).get_attribute("data-id") for i in range(3)]
        page.keyboard.press("n")  # the first: NG, as the model said
        page.keyboard.press("o")  # the second: OK (its label)
        page.keyboard.press("s")  # the third: skipped
        assert [cards.nth(i).get_attribute("data-verdict") for i in range(3)] == ["NG", "OK", "skip"]
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("n")  # changed its mind: the second is NG after all
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "review.png"), full_page=True)
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.body.dataset.written === '2'")
        page.wait_for_function(f"() => document.querySelector('#review-status').dataset.queued === '{queued - 2}'")
        assert status.get_attribute("data-waiting") == "2"
        shown = page.locator("article.review-card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        assert ids[0] not in shown and ids[1] not in shown and ids[2] not in shown, "marked gone, skipped set aside"
        browser.close()
    feedback = pd.read_csv(root / "review" / "feedback.csv")
    assert tuple(feedback.columns) == COLUMNS
    assert list(feedback["review_id"]) == ids[:2] and list(feedback["label"]) == ["bad", "bad"]
    entries = {e.id: e for e in read_index(root / "review")}
    for _, row in feedback.iterrows():
        assert row["image_path"] == entries[row["review_id"]].image and (root / "review" / row["image_path"]).is_file()
        assert started <= datetime.fromisoformat(row["verdict_time"]) <= datetime.now(UTC)
        assert row["pred_label"] == entries[row["review_id"]].pred_label
    assert _digest(root / "data" / "train") == project["train_digest"], "the user's train data is never edited"
