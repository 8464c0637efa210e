"""The web page in a real headless Chromium, against ``main.py --mode serve`` on a free loopback port.

Screenshots of each page go to ``test-artifacts/screenshots/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    ROOT,
    set_external,
    step_args,
    trained_project,
    wait_ready,
    write_plan,
)
from PIL import Image

import main
from benchmarks.redis_server import free_port

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "test-artifacts" / "screenshots"
XSS_NAME = "<img src=x onerror=alert(1)>.png"
TOKEN = "page-token-7f3a"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained PatchCore model, a batch inference run and a failed run, in one project."""
    root = tmp_path_factory.mktemp("web")
    plan, path = trained_project(root)
    labelled = root / "data" / "labelled"  # an inference run with ground truth, one NG image labelled OK
    labelled.mkdir()
    rows = []
    for name in sorted((root / "data" / "inference").glob("*.png")):
        shutil.copy(name, labelled / name.name)
        rows.append(
            {
                "label": "good" if name.name in ("ng_0.png",) or name.name.startswith("ok") else "bad",
                "image_path": name.name,
            }
        )
    pd.DataFrame(rows).to_csv(labelled / "labels.csv", index=False)
    checked = copy.deepcopy(plan)
    set_external(checked, "load_inference_data_path", "data/labelled")
    assert main.main(["--mode", "inference", "--config", str(write_plan(root, checked, "labelled.yaml"))]) == 0
    labelled_run = json.loads((root / "inference_artifacts/log/experimental_history.json").read_text())["id"]
    assert main.main(["--mode", "inference", "--config", str(path)]) == 0  # the plan's own run is the current one
    broken = copy.deepcopy(plan)
    set_external(broken, "load_inference_data_path", "data/empty")
    (root / "data" / "empty").mkdir()
    assert main.main(["--mode", "inference", "--config", str(write_plan(root, broken, "broken.yaml"))]) != 0
    return {"root": root, "plan": path, "labelled_run": labelled_run}


def _wait_ready(process: subprocess.Popen, base: str) -> None:
    wait_ready(process, f"{base}/readyz")


@pytest.fixture(scope="module")
def server(project):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(project["plan"]), "--port", str(port)]
    command += ["--data-root", str(project["root"] / "data"), "--max-upload-mb", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(process, base)
    yield base
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    context.close()


def shoot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_too_large(server: str, csrf: str, size: int) -> tuple[int, str]:
    """POST an upload over the server's limit on a raw socket: the 413 may come while the body is still sent."""
    host, port = server.removeprefix("http://").split(":")
    body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n' + b"0" * size
    head = (
        f"POST /ui/api/inspect HTTP/1.1\r\nHost: {host}:{port}\r\nX-VAD-CSRF: {csrf}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before reading it all
            connection.sendall(head.encode() + body)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    status_line, _, rest = answer.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), rest


@pytest.mark.slow
def test_first_page_loads_fast_and_needs_nothing_from_the_internet(page, server):
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(server) else outside.append(request.url))
    started = time.perf_counter()
    page.goto(f"{server}/")
    page.wait_for_load_state("load")
    seconds = time.perf_counter() - started
    assert page.url.endswith("/ui/inspect")
    assert seconds < 1.0, f"first page took {seconds:.2f} s"
    assert outside == []
    policy = urllib.request.urlopen(f"{server}/ui/inspect", timeout=10).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_upload_a_defective_image_shows_ng_and_a_full_size_heatmap(page, server, project):
    page.goto(f"{server}/ui/inspect")
    picture = project["root"] / "data" / "train" / "bad" / "b000.png"
    page.set_input_files("#files", str(picture))
    card = page.locator("article.result").first
    card.wait_for()
    assert card.get_attribute("data-verdict") == "NG"
    assert card.locator(".verdict").inner_text() == "bad"
    assert float(card.locator(".score").inner_text()) > 0.5  # the normalised threshold of this model
    page.wait_for_function("() => document.querySelector('.result .heatmap').complete")
    natural = page.evaluate(
        "() => { const i = document.querySelector('.result .heatmap'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert natural == list(Image.open(picture).size)
    assert page.locator("#histogram").get_attribute("data-points") == "1"
    shoot(page, "inspect")


def test_several_images_and_a_rotated_phone_photo(page, server, project, tmp_path):
    """A batch: one card each, the histogram over the validation scores; an EXIF-rotated photo shows upright."""
    wide = Image.open(project["root"] / "data" / "train" / "good" / "g002.png").convert("RGB").resize((80, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show it rotated 90 degrees clockwise
    photo = tmp_path / "phone.jpg"
    wide.save(photo, "JPEG", exif=exif)
    files = [photo, *sorted((project["root"] / "data" / "inference").glob("*.png"))]
    page.goto(f"{server}/ui/inspect")
    page.set_input_files("#files", [str(f) for f in files])
    page.wait_for_function(f"() => document.querySelectorAll('article.result').length === {len(files)}")
    assert page.locator("#histogram").get_attribute("data-points") == str(len(files))
    assert page.locator("#histogram rect").count() > 0, "the validation OK and NG scores are drawn"
    assert page.locator("#histogram line.threshold").count() == 1
    page.wait_for_function("() => document.querySelector('.result .original').complete")
    size = page.evaluate(
        "() => { const i = document.querySelector('.result .original'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [48, 80], "upright: taller than wide"
    assert f"{len(files)} image(s)" in page.locator("#summary").inner_text()
    shoot(page, "inspect-batch")


def stripes_png() -> bytes:
    """A 300 x 300 picture of rows alternately black and white: nothing like the textures the model learned."""
    import io

    import numpy as np

    stripes = np.zeros((300, 300), np.uint8)
    stripes[::2] = 255
    buffer = io.BytesIO()
    Image.fromarray(stripes).save(buffer, "PNG")
    return buffer.getvalue()


def upload_foreign_and_normal(page, base: str, project) -> tuple:
    """Upload the striped picture and a normal image on the Inspect page: their two cards, once shown."""
    normal = (project["root"] / "data" / "inference" / "ok_0.png").read_bytes()
    page.goto(f"{base}/ui/inspect")
    page.set_input_files(
        "#files",
        files=[
            {"name": "stripes.png", "mimeType": "image/png", "buffer": stripes_png()},
            {"name": "ok_0.png", "mimeType": "image/png", "buffer": normal},
        ],
    )
    page.wait_for_function("() => document.querySelectorAll('article.result').length === 2")
    cards = page.locator("article.result")
    return cards.nth(0), cards.nth(1)


def test_an_out_of_distribution_image_shows_a_clear_warning_and_a_normal_one_none(page, server, project):
    foreign, normal = upload_foreign_and_normal(page, server, project)
    warning = foreign.locator(".ood-warning")
    assert warning.is_visible()
    text = warning.inner_text()
    assert text.startswith("Out of distribution: not the kind of image this model was trained on (ood_score ")
    assert float(text.split("ood_score ")[1].split(",")[0]) >= 1.0
    assert "cannot be trusted" in text
    assert foreign.get_attribute("data-in-distribution") == "false"
    assert foreign.get_attribute("data-verdict") in ("OK", "NG")  # flag (the default): the verdict is kept
    assert normal.locator(".ood-warning").is_hidden()
    assert normal.get_attribute("data-in-distribution") == "true" and normal.get_attribute("data-verdict") == "OK"
    message = page.locator("#message")
    assert message.is_visible() and message.inner_text().startswith("1 of 2 image(s) out of distribution")
    assert "1 out of distribution" in page.locator("#summary").inner_text()
    shoot(page, "inspect-out-of-distribution")


@pytest.mark.slow
def test_with_ood_action_reject_the_page_shows_the_verdict_withheld(browser, project):
    plan = yaml.safe_load(project["plan"].read_text())
    step_args(plan, "inference", "inference")["ood_action"] = "reject"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    path = write_plan(project["root"], plan, "reject.yaml")
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(path), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, base)
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        page = context.new_page()
        foreign, normal = upload_foreign_and_normal(page, base, project)
        assert foreign.get_attribute("data-verdict") == "rejected"
        assert foreign.locator(".verdict").inner_text() == "rejected: verdict withheld"
        assert "have a person check this part" in foreign.locator(".ood-warning").inner_text()
        assert normal.get_attribute("data-verdict") == "OK" and normal.locator(".ood-warning").is_hidden()
        assert "rejected:1" in page.locator("#summary").inner_text()
        shoot(page, "inspect-rejected")
        context.close()
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_non_image_gives_one_clear_message_and_the_page_still_works(page, server, project):
    page.goto(f"{server}/ui/inspect")
    page.set_input_files("#files", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"}])
    message = page.locator("#message")
    message.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#message').textContent.includes('notes.png')")
    assert "\n" not in message.inner_text().strip()
    good = project["root"] / "data" / "train" / "good" / "g000.png"
    page.set_input_files("#files", str(good))
    page.locator("article.result").first.wait_for()
    assert page.locator("article.result").first.get_attribute("data-verdict") == "OK"


def test_a_script_in_a_file_name_is_shown_as_text(page, server, project):
    picture = (project["root"] / "data" / "train" / "good" / "g001.png").read_bytes()
    page.goto(f"{server}/ui/inspect")
    page.set_input_files("#files", files=[{"name": XSS_NAME, "mimeType": "image/png", "buffer": picture}])
    page.locator("article.result").first.wait_for()
    assert page.locator("article.result .name").first.inner_text() == XSS_NAME
    assert page.locator("img[src='x']").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_folders_and_files_outside_the_roots_are_refused(server, project):
    page_html = urllib.request.urlopen(f"{server}/ui/inspect", timeout=10).read().decode()
    csrf = page_html.split('name="csrf" content="')[1].split('"')[0]
    headers = {"content-type": "application/json", "x-vad-csrf": csrf}
    status, body = post(f"{server}/ui/api/inspect", json.dumps({"folder": "../.."}).encode(), headers)
    assert status == 403 and "outside" in body["error"]
    status, body = post(f"{server}/ui/api/inspect", json.dumps({"folder": "inference"}).encode(), headers)
    assert status == 200 and len(body["results"]) == 5
    no_csrf = {"content-type": "application/json"}
    status, body = post(f"{server}/ui/api/inspect", json.dumps({"folder": "inference"}).encode(), no_csrf)
    assert status == 403 and "cross-site" in body["error"]
    cross = {**headers, "origin": "http://evil.example"}
    assert post(f"{server}/ui/api/inspect", json.dumps({"folder": "inference"}).encode(), cross)[0] == 403
    status, answer = post_too_large(server, csrf, 3_000_000)
    assert status == 413 and "MB" in answer, answer
    train_id = json.loads((project["root"] / "train_artifacts/models/train_run.json").read_text())["train_id"]
    for relative in ("../../experimental_plan.yaml", "..%2F..%2Fexperimental_plan.yaml", "log/pipeline.log"):
        url = f"{server}/ui/api/runs/train/{train_id}/file/{relative}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 404


def test_runs_page_table_sorts_and_gallery_shows_misclassified_first(page, server, project):
    page.goto(f"{server}/ui/runs")
    page.locator("#runs tbody tr").first.wait_for()
    text = page.locator("#runs").inner_text()
    train_id = json.loads((project["root"] / "train_artifacts/models/train_run.json").read_text())["train_id"]
    assert train_id in text
    failed = page.locator("#runs tbody tr[data-status='error']")
    assert failed.count() == 1 and "data error" in failed.inner_text()
    shoot(page, "runs")
    page.click(f"text={train_id}")
    page.locator("#rows tbody tr").first.wait_for()
    header = page.locator("#rows th[data-column='anomaly_score']")
    output = pd.read_csv(project["root"] / "train_artifacts/output/output.csv")
    column = list(output.columns).index("anomaly_score")

    def first_score() -> float:
        return float(page.locator("#rows tbody tr").first.locator("td").nth(column).inner_text())

    header.click()  # numbers sort from the highest first
    assert first_score() == pytest.approx(output["anomaly_score"].max())
    header.click()
    assert first_score() == pytest.approx(output["anomaly_score"].min())
    page.fill("#filter", "bad/")
    assert page.locator("#rows tbody tr").count() == int(output["image_path"].str.contains("bad/").sum())
    shown = page.locator("#gallery figure").evaluate_all("figures => figures.map(f => f.dataset.image)")
    pictured = output[output["image_path"].isin(shown)].copy()
    pictured["miss"] = pictured["label"] != pictured["pred_label"]
    expected = pictured.sort_values(["miss", "anomaly_score"], ascending=[False, False])["image_path"].tolist()
    assert shown == expected and shown, "misclassified first, then by score"
    loaded = "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
    page.wait_for_function(loaded)
    log = page.locator("#log").inner_text()
    assert "process.log" in log and "train pipeline" in log and "trained in" in log
    shoot(page, "run")


def test_gallery_of_a_run_with_ground_truth_shows_the_misclassified_image_first(page, server, project):
    run = project["labelled_run"]
    page.goto(f"{server}/ui/runs/inference/{run}")
    page.locator("#gallery figure").first.wait_for()
    figures = page.locator("#gallery figure")
    assert figures.count() == 5
    assert figures.first.get_attribute("class") == "miss" and figures.first.get_attribute("data-image") == "ng_0.png"
    assert "misclassified" in figures.first.inner_text()
    assert page.locator("#gallery figure.miss").count() == 1
    shoot(page, "run-inference")


def test_threshold_slider_shows_the_sweep_and_the_plan_copy_gives_that_f1(page, server, project):
    root = project["root"]
    sweep = pd.read_csv(root / "train_artifacts/extra_output/train/threshold_test_result.csv")
    page.goto(f"{server}/ui/threshold")
    page.locator("#f1").wait_for()
    page.wait_for_function("() => document.querySelector('#f1').textContent !== ''")
    calibration = json.loads((root / "train_artifacts/models/train/calibration.json").read_text())
    inside = [
        i
        for i, t in enumerate(sweep["threshold"])
        if 0 <= (t - calibration["threshold"]) / (calibration["high"] - calibration["low"]) + 0.5 <= 1
    ]
    chosen = next(i for i in inside if sweep["f1"][i] < sweep["f1"].max())  # a threshold other than the best
    page.eval_on_selector("#slider", "(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }", str(chosen))
    assert float(page.locator("#f1").inner_text()) == pytest.approx(sweep["f1"][chosen], abs=1e-4)
    assert int(page.locator("#tp").inner_text()) == sweep["tp"][chosen]
    page.click("#use")
    page.locator("#diff").wait_for(state="visible")
    assert "inference_threshold" in page.locator("#diff").inner_text()
    written = page.evaluate("document.body.dataset.written")
    copy_path = root / written
    assert copy_path.is_file() and copy_path != project["plan"]
    assert project["plan"].read_text() == write_plan_text(project), "the user's plan is never edited"
    shoot(page, "threshold")
    # the copy's threshold, run through inference on the validation images, gives the F1 the page showed
    valid = pd.read_csv(root / "data/train/train.csv").query("split == 'valid'")
    folder = root / "data" / "valid-check"
    folder.mkdir(exist_ok=True)
    for name in valid["image_path"]:
        (folder / Path(name).name).write_bytes((root / "data/train" / name).read_bytes())
    plan = yaml.safe_load(copy_path.read_text())
    set_external(plan, "load_inference_data_path", "data/valid-check")
    assert main.main(["--mode", "inference", "--config", str(write_plan(root, plan, "check.yaml"))]) == 0
    rows = pd.read_csv(root / "inference_artifacts/output/output.csv")
    truth = {Path(n).name: label == "bad" for n, label in zip(valid["image_path"], valid["label"], strict=True)}
    predicted = rows["pred_label"] != "good"
    actual = rows["image_path"].map(lambda p: truth[Path(p).name])
    tp, fp = int((predicted & actual).sum()), int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(sweep["f1"][chosen])


def write_plan_text(project) -> str:
    """The user's plan as the fixture wrote it."""
    return project["plan"].read_text()


def _models_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "train_artifacts" / "models").rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_train_from_the_page_shows_progress_and_cancel_keeps_the_previous_model(page, server, project):
    root = project["root"]
    before = _models_digest(root)
    page.goto(f"{server}/ui/train")
    page.wait_for_function("() => document.querySelectorAll('#train-folder option').length > 0")
    page.select_option("#train-folder", "train")
    page.select_option("#train-model", "fastflow")
    page.fill("#train-epochs", "1000")  # long enough to cancel mid-run
    page.click("#train-start")
    page.wait_for_function("() => document.querySelector('#train-log').textContent.includes('step')")
    assert page.locator("#train-state").inner_text() == "running"
    started = "() => document.querySelector('#train-log').textContent.includes(\"step 'train' started\")"
    page.wait_for_function(started, timeout=60_000)
    shoot(page, "train")
    page.click("#train-cancel")
    page.wait_for_function("() => document.querySelector('#train-state').textContent === 'cancelled'", timeout=90_000)
    assert _models_digest(root) == before, "the previous model is unchanged"
    history = [p for p in (root / "history" / "train").iterdir() if p.name.endswith("-error")]
    assert history, "the cancelled run is kept as a failed run"
    page.reload()
    page.wait_for_function("() => document.querySelector('#train-state').textContent === 'cancelled'")
    assert not (root / ".alo" / "staging").exists() or not any((root / ".alo" / "staging").iterdir())


def test_a_second_train_run_while_one_runs_is_refused(server, project):
    page_html = urllib.request.urlopen(f"{server}/ui/train", timeout=10).read().decode()
    csrf = page_html.split('name="csrf" content="')[1].split('"')[0]
    headers = {"content-type": "application/json", "x-vad-csrf": csrf}
    body = json.dumps({"folder": "train", "model": "fastflow", "max_epochs": 1000, "batch_size": 8}).encode()
    status, first = post(f"{server}/ui/api/train", body, headers)
    assert status == 200 and first["state"] == "running"
    status, second = post(f"{server}/ui/api/train", body, headers)
    assert status == 409 and "running" in second["error"]
    status, _ = post(f"{server}/ui/api/train/cancel", b"{}", headers)
    assert status == 200
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server}/ui/api/train", timeout=10) as answer:
            if json.loads(answer.read())["state"] == "cancelled":
                break
        time.sleep(0.5)
    else:
        pytest.fail("the run was not cancelled")


def test_with_a_token_every_page_and_route_needs_it(browser, project):
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}, "VAD_API_TOKEN": TOKEN}
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(project["plan"]), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, base)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/ui/api/runs", timeout=10)
        assert refused.value.code == 401
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{base}/ui/runs")
        assert page.url.endswith("/ui/login")
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        assert "wrong token" in page.content()
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/ui/inspect")
        page.goto(f"{base}/ui/runs")
        page.locator("#runs tbody tr").first.wait_for()
        cookie = next(c for c in context.cookies() if c["name"] == "vad_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        context.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
