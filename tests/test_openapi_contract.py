"""The served API holds to its own ``/openapi.json``: a schemathesis run against it finds nothing.

``main.py --mode serve`` runs on a free loopback port with a tiny trained PatchCore model, once without a token
(the loopback default) and once with one; ``st run`` (schemathesis's CLI) reads the document the server serves
and runs every check (``--checks all``: no 5xx, status codes, content types and response bodies as documented,
schema-valid requests accepted and schema-violating ones refused, the token enforced where it is documented)
over every operation in all its phases, with a fixed seed and a bounded number of examples, requests to
127.0.0.1 only. ``tests/schemathesis_hooks.py`` makes the uploads real images (the document says they are).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, asgi_get, trained_project, wait_ready

from benchmarks.redis_server import free_port

HOOKS = Path(__file__).resolve().parent / "schemathesis_hooks.py"
TOKEN = "contract-token-5e1d"
EXAMPLES = 30  # per operation and phase


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    """A project with a trained PatchCore model; its inference folder is the server's data folder."""
    _, path = trained_project(tmp_path_factory.mktemp("contract"))
    return path


def serve(plan: Path, token: str | None) -> tuple[subprocess.Popen, str]:
    """``main.py --mode serve`` on a free loopback port (with ``token`` as ``VAD_API_TOKEN``), once ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAD_API_TOKEN"}
    if token:
        env["VAD_API_TOKEN"] = token
    command = [sys.executable, "main.py", "--mode", "serve", "--config", str(plan), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{base}/readyz")
    return process, base


def scored(base: str, token: str | None) -> float:
    """How many predict requests the server answered with 200 (its own metrics)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{base}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    counter = 'vad_requests_total{route="/v1/predict",status="200"}'
    found = [line for line in text.splitlines() if line.startswith(counter)]
    return float(found[0].split()[-1]) if found else 0.0


def openapi_of(app) -> dict:
    """``GET /openapi.json`` through an ASGI app in this process."""
    return json.loads(asgi_get(app, "/openapi.json")[2])


def test_the_document_describes_the_bodies_content_types_errors_and_the_token():
    """What a generated client needs, without a model (the everyday tier; the run below checks it on the wire)."""
    from apps.http import api

    document = openapi_of(api.create_app(lambda: None, api.ServeSettings(token="t")))
    predict = document["paths"]["/v1/predict"]["post"]
    body = predict["requestBody"]
    assert body["required"] and set(body["content"]) == {"multipart/form-data", "application/json"}
    upload = body["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    assert "image/png" in upload["encoding"]["files"]["contentType"]
    assert body["content"]["application/json"]["schema"]["required"] == ["paths"]
    assert {"200", "400", "401", "403", "404", "413", "415", "422"} <= set(predict["responses"])
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert all(predict["responses"][s]["content"]["application/json"]["schema"] == error for s in ("401", "415"))
    assert set(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    secured = [path for path, item in document["paths"].items() for op in item.values() if "security" in op]
    assert sorted(secured) == ["/metrics", "/v1/model", "/v1/predict"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    loopback = openapi_of(api.create_app(lambda: None, api.ServeSettings()))  # no token: none documented
    assert "securitySchemes" not in loopback["components"]
    operations = [op for item in loopback["paths"].values() for op in item.values()]
    assert all("401" not in op["responses"] and "security" not in op for op in operations)


@pytest.mark.slow  # about 45 s, most of it training the model and starting the server twice
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_schemathesis_finds_nothing_against_the_served_api(plan, token, tmp_path):
    process, base = serve(plan, token)
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json", "--checks", "all"]
    command += ["--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1", "--generation-database", "none"]
    command += ["--request-timeout", "60", "--no-color", "--wait-for-schema", "10"]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    try:
        env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
        # in tmp_path: schemathesis keeps its crash cache (replayed by later runs) in the working folder
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        images_scored = scored(base, token)
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    assert "No issues found" in report, report[-8000:]
    assert "Operations:       5 selected / 5 total" in report and "Tested: 5" in report, report[-8000:]
    assert images_scored > 0, "no schema-valid upload was scored: the run never reached the model"
