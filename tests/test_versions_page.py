"""The Versions page: model updates from the page's verdicts, the kept versions and rollback, through the routes and
in real headless Chromium.

One trained project (``main.py --mode all``, whose inference images are kept for review), one ``main.py --mode
serve`` on a free loopback port, and Debian's chromium driven by Playwright, as tests/test_review_flow.py does.
Verdicts are given through the Review page's route; updates run as the page's ``main.py --mode update`` jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, trained_project, wait_ready

from alo.model_versions import read_index
from benchmarks.redis_server import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained PatchCore model whose `--mode all` run kept the inference folder's 5 images for review."""
    root = tmp_path_factory.mktemp("versions")
    _, path = trained_project(root)
    return {"root": root, "plan": path}


@pytest.fixture(scope="module")
def server(project):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(project["plan"]), "--port", str(port)]
    command += ["--data-root", str(project["root"] / "data")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{base}/readyz")
    html = urllib.request.urlopen(f"{base}/ui/versions", timeout=10).read().decode()
    csrf = html.split('name="csrf" content="')[1].split('"')[0]
    yield {"base": base, "headers": {"content-type": "application/json", "x-vad-csrf": csrf}}
    process.terminate()
    process.wait(timeout=60)


def _post(server: dict, route: str, value: object, csrf: bool = True) -> tuple[int, dict]:
    headers = server["headers"] if csrf else {"content-type": "application/json"}
    request = urllib.request.Request(
        f"{server['base']}{route}", data=json.dumps(value).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _get(server: dict, route: str) -> dict:
    with urllib.request.urlopen(f"{server['base']}{route}", timeout=60) as answer:
        return json.loads(answer.read())


def _give_verdicts(server: dict) -> int:
    """Every kept image marked as its file name says (ok_* OK, ng_* NG) through the Review page's route."""
    batch = _get(server, "/ui/api/review?limit=64")
    verdicts = [
        {"id": i["id"], "verdict": "NG" if Path(i["source"]).name.startswith("ng") else "OK"} for i in batch["items"]
    ]
    status, done = _post(server, "/ui/api/review", {"verdicts": verdicts})
    assert status == 200 and done["written"] == len(verdicts) == 5
    return len(verdicts)


def _wait_job(server: dict, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while (view := _get(server, "/ui/api/versions"))["job"]["state"] == "running":
        assert time.monotonic() < deadline, "the page's job did not end"
        time.sleep(0.5)
    return view


def _scores(server: dict) -> tuple[list[float], int | None]:
    """The inference folder scored on the page (the resident detector): scores by name, and the model version."""
    status, found = _post(server, "/ui/api/inspect", {"folder": "inference"})
    assert status == 200
    return [r["anomaly_score"] for r in sorted(found["results"], key=lambda r: r["name"])], found["model_version"]


def _train_id(root: Path) -> str:
    return json.loads((root / "train_artifacts/models/train_run.json").read_text())["train_id"]


def test_before_any_update_the_list_is_empty_and_the_routes_refuse(server, project):
    view = _get(server, "/ui/api/versions")
    assert view["versions"] == [] and view["active"] is None and view["unkept"] == _train_id(project["root"])
    assert view["waiting"] == 0 and view["serves_active"] is True and view["job"] is None
    assert view["update_blocked"].startswith("no verdicts wait")
    assert _post(server, "/ui/api/versions/update", {}, csrf=False) == (
        403,
        {"error": "cross-site or stale request refused: reload the page and try again"},
    )
    status, answer = _post(server, "/ui/api/versions/update", {})
    assert status == 409 and answer["error"].startswith("no verdicts wait for an update")
    status, answer = _post(server, "/ui/api/versions/7/activate", {})
    assert status == 404 and "there is no model version 7 (versions kept: none yet)" in answer["error"]
    assert _post(server, "/ui/api/versions/1/activate", {}, csrf=False)[0] == 403
    assert not (project["root"] / "model_versions").exists(), "looking and refusing keep nothing"


@pytest.mark.slow
def test_an_update_from_the_route_is_a_new_version_and_rollback_switches_scoring_back(server, project):
    root = project["root"]
    first_train_id = _train_id(root)
    scores_before, version_before = _scores(server)
    assert version_before is None, "the trained model is not kept as a version yet"
    given = _give_verdicts(server)
    assert _get(server, "/ui/api/versions")["waiting"] == given

    status, job = _post(server, "/ui/api/versions/update", {})
    assert status == 200 and (job["kind"], job["state"]) == ("update", "running")
    status, answer = _post(server, "/ui/api/versions/update", {})
    assert status == 409 and "model update 1 is running" in answer["error"]
    status, answer = _post(server, "/ui/api/versions/1/activate", {})
    assert status == 409 and "running" in answer["error"]
    view = _wait_job(server)
    assert view["job"]["state"] == "succeeded", "\n".join(view["job"]["lines"][-30:])
    assert any("model version 2 is active" in line for line in view["job"]["lines"])

    assert [v["number"] for v in view["versions"]] == [2, 1] and view["active"] == 2 and view["unkept"] is None
    second, first = view["versions"]
    assert (second["made_by"], second["based_on"], second["active"]) == ("update", 1, True)
    assert second["data_added"] == {"ok": 3, "ng": 2} and first["train_id"] == first_train_id
    assert second["validation_before"] == first["validation"] and {"auroc", "f1"} <= set(second["validation"])
    assert (first["made_by"], first["active"]) == ("train", False)
    assert view["waiting"] == 0 and view["update_blocked"].startswith("no verdicts wait")
    scores_updated, version_updated = _scores(server)
    assert version_updated == 2 and scores_updated != scores_before, "the service reloaded the updated model"

    status, done = _post(server, "/ui/api/versions/1/activate", {})
    assert status == 200 and done["active"] == 1 and done["version"]["train_id"] == first_train_id
    assert json.loads((root / "model_versions/versions.json").read_text())["active"] == 1
    assert _train_id(root) == first_train_id and read_index(root).active == 1
    assert _scores(server) == (scores_before, 1), "version 1's scores, exactly, from the next request on"
    view = _get(server, "/ui/api/versions")
    assert view["active"] == 1 and view["waiting"] == given, "version 1 learnt none of the verdicts"


@pytest.mark.slow
def test_make_active_and_update_are_refused_while_a_train_run_runs(server, project):
    body = {"folder": "train", "model": "fastflow", "max_epochs": 1000, "batch_size": 8}
    status, job = _post(server, "/ui/api/train", body)
    assert status == 200 and job["kind"] == "train"
    try:
        status, answer = _post(server, "/ui/api/versions/1/activate", {})
        assert status == 409 and f"train run {job['job']} is running" in answer["error"]
        assert _post(server, "/ui/api/versions/update", {})[0] == 409
        assert _get(server, "/ui/api/versions")["update_blocked"] == "a train run is running"
    finally:
        assert _post(server, "/ui/api/train/cancel", {})[0] == 200
    assert _wait_job(server, 120)["job"]["state"] == "cancelled"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)")
def test_update_and_make_active_from_the_page(server, project):
    playwright_api = pytest.importorskip("playwright.sync_api")
    root = project["root"]
    if not read_index(root).versions:  # run alone: verdicts given here
        _give_verdicts(server)
    before = read_index(root)
    base = before.active
    new = max(v.number for v in before.versions) + 1 if before.versions else 2
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(30_000)
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        page.goto(f"{server['base']}/ui/versions")
        button = page.locator("#versions-update")
        page.wait_for_function("() => !document.querySelector('#versions-update').disabled")
        waiting = page.locator("#versions-status").get_attribute("data-waiting")
        assert button.inner_text() == f"Update the model from {waiting} verdict(s)" and int(waiting or 0) > 0
        button.click()
        page.wait_for_function("() => document.querySelector('#versions-job-state').textContent === 'running'")
        assert button.is_disabled() and "an update is running" in page.locator("#versions-reason").inner_text()
        page.wait_for_function(
            "() => document.querySelector('#versions-job-state').textContent === 'succeeded'", timeout=600_000
        )
        row = page.locator(f"#versions tr[data-version='{new}']")
        assert row.get_attribute("data-active") == "true" and "(active)" in row.inner_text()
        assert "update" in row.inner_text() and "3 OK, 2 NG" in row.inner_text()
        assert f"model version {new} is active" in page.locator("#versions-log").inner_text()
        assert button.is_disabled() and page.locator("#versions-reason").inner_text().startswith("no verdicts wait")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "versions.png"), full_page=True)

        page.locator("#versions tr[data-version='1'] button.make-active").click()
        page.wait_for_function(
            "() => document.querySelector(\"#versions tr[data-version='1']\").dataset.active === 'true'"
        )
        (asked,) = dialogs
        assert asked.startswith("Make version 1 the active model? Scoring switches to it at once")
        assert page.locator("#versions-status").get_attribute("data-active") == "1"
        assert page.locator(f"#versions tr[data-version='{new}']").get_attribute("data-active") == "false"
        page.goto(f"{server['base']}/ui/inspect")  # the next images are scored by version 1
        page.locator("#folder option[value='inference']").wait_for(state="attached")
        page.select_option("#folder", "inference")
        page.click("#score-folder")
        page.wait_for_function("() => document.querySelector('#model-version').dataset.version === '1'")
        assert page.locator("#model-version").inner_text() == "scored by model version 1"
        browser.close()
    after = read_index(root)
    assert after.active == 1 and after.get(new).based_on == (base or 1)
    assert _train_id(root) == after.get(1).train_id
