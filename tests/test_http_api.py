"""The HTTP scoring API, served by a real uvicorn process on a free loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pandas as pd
import pytest
import yaml
from conftest import (
    ROOT,
    asgi_get,
    step_args,
    trained_project,
    wait_ready,
    write_plan,
)

import main
from benchmarks.redis_server import free_port

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained PatchCore model and a batch run's output.csv over the inference folder."""
    root = tmp_path_factory.mktemp("http")
    _, path = trained_project(root)
    (root / "outside.png").write_bytes((root / "data" / "inference" / "ok_0.png").read_bytes())
    return {"root": root, "plan": path, "output": pd.read_csv(root / "inference_artifacts/output/output.csv")}


def start(project, *extra: str, token: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    if token:
        env["VAD_API_TOKEN"] = token
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(project["plan"]), "--port", str(port)]
    process = subprocess.Popen(
        [*command, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{base}/healthz")
    return process, base


@pytest.fixture(scope="module")
def server(project):
    process, base = start(project, "--max-upload-mb", "1")
    yield base
    process.terminate()
    process.wait(timeout=30)


def call(url: str, body: bytes | None = None, kind: str | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": kind} if kind else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_predict_one_and_several_uploads_scores_like_the_batch_run(project, server):
    output = project["output"].set_index("image_path")
    folder = project["root"] / "data" / "inference"
    names = sorted(output.index)
    body, kind = multipart([(name, (folder / name).read_bytes()) for name in names])
    status, answer = call(f"{server}/v1/predict?summary=true&heatmap=true", body, kind)
    assert status == 200
    rows = answer["results"]
    assert [row["image"] for row in rows] == names
    for row in rows:
        expected = output.loc[row["image"]]
        assert row["raw_score"] == pytest.approx(expected["raw_score"], rel=1e-5, abs=1e-6)
        assert row["pred_label"] == expected["pred_label"]
        assert row["heatmap_png"]
        assert row["ood_score"] == pytest.approx(expected["ood_score"], rel=1e-5, abs=1e-6)
        assert row["in_distribution"] == bool(expected["in_distribution"])
    batch = project["root"] / "inference_artifacts/score/inference_summary.yaml"
    expected_summary = yaml.safe_load(batch.read_text())
    assert answer["summary"]["result"] == expected_summary["result"]
    assert answer["summary"]["probability"] == expected_summary["probability"]
    assert answer["summary"]["note"] == expected_summary["note"]  # "..., N out of distribution" as the batch note
    one_body, one_kind = multipart([("ng_0.png", (folder / "ng_0.png").read_bytes())])
    status, one = call(f"{server}/v1/predict", one_body, one_kind)
    assert status == 200 and len(one["results"]) == 1 and "heatmap_png" not in one["results"][0]
    assert one["results"][0]["raw_score"] == pytest.approx(output.loc["ng_0.png", "raw_score"], rel=1e-5)


def test_paths_inside_the_data_folder_only(project, server):
    status, answer = call(f"{server}/v1/predict", json.dumps({"paths": ["ok_1.png"]}).encode(), "application/json")
    assert status == 200 and answer["results"][0]["image"] == "ok_1.png"
    for path in ("../../outside.png", str(project["root"] / "outside.png")):
        status, answer = call(f"{server}/v1/predict", json.dumps({"paths": [path]}).encode(), "application/json")
        assert status == 403 and "outside" in answer["error"]
    status, answer = call(f"{server}/v1/predict", json.dumps({"paths": ["nope.png"]}).encode(), "application/json")
    assert status == 404


def test_bad_uploads_are_4xx_with_one_line(project, server):
    body, kind = multipart([("photo.png", b"this is text, not a picture")])
    status, answer = call(f"{server}/v1/predict", body, kind)
    assert status == 415 and "photo.png" in answer["error"] and "\n" not in answer["error"]
    big, kind = multipart([("big.png", os.urandom(2 * 1024 * 1024))])
    status, answer = call(f"{server}/v1/predict", big, kind)
    assert status == 413 and "MB" in answer["error"]
    status, answer = call(f"{server}/v1/predict", b"{not json", "application/json")
    assert status == 400
    status, answer = call(f"{server}/v1/predict", b"x", "text/plain")
    assert status == 415
    status, health = call(f"{server}/readyz")
    assert status == 200 and health["status"] == "ready"  # the service still works


def test_model_health_metrics_and_docs(project, server):
    status, model = call(f"{server}/v1/model")
    assert status == 200 and model["model_name"] == "patchcore" and model["input_size"] == [64, 64]
    assert model["train_id"] and model["inference_threshold"] == 0.5
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert 'vad_requests_total{route="/v1/model",status="200"}' in text
    assert "vad_request_seconds_bucket" in text
    with urllib.request.urlopen(f"{server}/docs", timeout=10) as answer:
        assert answer.status == 200
    with urllib.request.urlopen(f"{server}/openapi.json", timeout=10) as answer:
        assert "/v1/predict" in json.loads(answer.read())["paths"]


def test_a_token_once_set_is_required(project):
    process, base = start(project, token=TOKEN)
    try:
        status, answer = call(f"{base}/v1/model")
        assert status == 401 and "token" in answer["error"]
        status, _ = call(f"{base}/v1/model", token="wrong")
        assert status == 401
        status, model = call(f"{base}/v1/model", token=TOKEN)
        assert status == 200 and model["model_name"] == "patchcore"
        assert call(f"{base}/healthz")[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_binding_beyond_loopback_needs_a_token(project, capsys, monkeypatch):
    monkeypatch.delenv("VAD_API_TOKEN", raising=False)
    code = main.main(["--mode", "serve", "--config", str(project["plan"]), "--host", "0.0.0.0"])
    assert code == 2
    assert "VAD_API_TOKEN" in capsys.readouterr().err


def test_uploaded_phone_photo_is_scored_upright(project, server, tmp_path):
    from PIL import Image

    folder = project["root"] / "data" / "inference"
    upright = Image.open(folder / "ng_1.png").convert("RGB")
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says: turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90 degrees clockwise to view
    rotated.save(tmp_path / "phone.png", exif=exif)
    body, kind = multipart([("phone.png", (tmp_path / "phone.png").read_bytes())])
    plain, plain_kind = multipart([("ng_1.png", (folder / "ng_1.png").read_bytes())])
    status, phone_answer = call(f"{server}/v1/predict", body, kind)
    _, plain_answer = call(f"{server}/v1/predict", plain, plain_kind)
    assert status == 200
    assert phone_answer["results"][0]["raw_score"] == pytest.approx(plain_answer["results"][0]["raw_score"], rel=1e-5)


def stripes_png() -> bytes:
    """A 300 x 300 picture of rows alternately black and white: nothing like the textures the model learned."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    stripes = np.zeros((300, 300), np.uint8)
    stripes[::2] = 255
    buffer = BytesIO()
    Image.fromarray(stripes).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_foreign_image_answers_out_of_distribution_and_a_normal_one_in(project, server):
    normal = (project["root"] / "data" / "inference" / "ok_0.png").read_bytes()
    body, kind = multipart([("stripes.png", stripes_png()), ("ok_0.png", normal)])
    status, answer = call(f"{server}/v1/predict?summary=true", body, kind)
    assert status == 200
    foreign, ok = answer["results"]
    assert ok["in_distribution"] is True and ok["ood_score"] < 1.0 and ok["pred_label"] == "good"
    assert foreign["in_distribution"] is False and foreign["ood_score"] >= 1.0
    assert foreign["pred_label"] in ("good", "bad")  # flag (the default): the verdict is kept
    assert answer["summary"]["note"].endswith(", 1 out of distribution")
    status, model = call(f"{server}/v1/model")
    assert status == 200 and model["ood_check"] is True and model["ood_action"] == "flag"


def test_with_ood_action_reject_a_foreign_image_is_rejected_and_counted_apart(project):
    plan = yaml.safe_load(project["plan"].read_text())
    step_args(plan, "inference", "inference")["ood_action"] = "reject"
    process, base = start({"plan": write_plan(project["root"], plan, "reject.yaml")})
    try:
        normal = (project["root"] / "data" / "inference" / "ok_0.png").read_bytes()
        body, kind = multipart([("stripes.png", stripes_png()), ("ok_0.png", normal), ("again.png", normal)])
        status, answer = call(f"{base}/v1/predict?summary=true", body, kind)
        assert status == 200
        foreign, ok, _ = answer["results"]
        assert foreign["pred_label"] == "rejected" and foreign["certainty"] == 0.0 and foreign["is_anomalous"] is True
        assert foreign["in_distribution"] is False and foreign["ood_score"] >= 1.0
        assert ok["pred_label"] == "good" and ok["in_distribution"] is True
        assert answer["summary"]["result"] == "good:2,bad:0,rejected:1"
        assert answer["summary"]["note"].startswith("patchcore: 3 image(s), 0 bad at threshold")
        assert call(f"{base}/v1/model")[1]["ood_action"] == "reject"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_bad_ood_action_in_the_plan_stops_serve_with_one_plan_line(project, capsys):
    plan = yaml.safe_load(project["plan"].read_text())
    step_args(plan, "inference", "inference")["ood_action"] = "drop"
    path = write_plan(project["root"], plan, "bad-ood.yaml")
    assert main.main(["--mode", "serve", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "ood_action" in error and "'drop'" in error and "flag, reject" in error


def test_a_model_without_an_ood_check_answers_null_and_no_unasked_heatmap():
    """The wire row: ood_score and in_distribution are null (not absent) without a check; heatmap_png is absent."""
    from apps.http.api import _row
    from apps.http.schemas import PredictResponse
    from vad.detector import Prediction

    plain = Prediction(None, 3.0, 0.2, False, "good", 0.6)
    unmeasured = Prediction(None, 3.0, 0.2, True, "rejected", 0.0, ood_score=float("nan"), in_distribution=False)
    rows = [_row("a.png", plain, heatmap=True), _row("b.png", unmeasured, heatmap=False)]
    wire = PredictResponse(results=rows).model_dump(mode="json", exclude_unset=True)
    assert wire == {
        "results": [
            {"image": "a.png", "raw_score": 3.0, "anomaly_score": 0.2, "pred_label": "good", "certainty": 0.6,
             "is_anomalous": False, "ood_score": None, "in_distribution": None},
            {"image": "b.png", "raw_score": 3.0, "anomaly_score": 0.2, "pred_label": "rejected", "certainty": 0.0,
             "is_anomalous": True, "ood_score": None, "in_distribution": False},
        ]
    }  # fmt: skip
    json.dumps(wire, allow_nan=False)  # a NaN distance is null: the answer stays valid JSON


def _asgi_get(app, path: str, token: str | None = None) -> tuple[int, dict]:
    """One GET through an ASGI app in this process: its status and JSON body."""
    status, _, body = asgi_get(app, path, token)
    return status, json.loads(body)


def test_every_v1_route_and_metrics_have_the_token_dependency_by_construction():
    """The token is the ``/v1`` router's own dependency: a route added to it cannot go without (and /metrics has it)."""
    from apps.http import api

    @api.v1.get("/added-later")
    async def added_later() -> dict:
        return {"reached": True}

    try:
        assert all(api.require_token in {d.call for d in route.dependant.dependencies} for route in api.v1.routes)
        app = api.create_app(lambda: None, api.ServeSettings(token="t"))
        for path in ("/v1/added-later", "/v1/model", "/metrics"):
            status, answer = _asgi_get(app, path)
            assert status == 401 and "token" in answer["error"], path
        assert _asgi_get(app, "/v1/added-later", token="t") == (200, {"reached": True})
        assert _asgi_get(app, "/healthz") == (200, {"status": "ok"})
    finally:
        api.v1.routes[:] = [route for route in api.v1.routes if getattr(route, "path", "") != "/v1/added-later"]
