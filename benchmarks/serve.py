"""Serving benchmark: warm single-image latency through the Redis loop and the HTTP API, throughput, memory.

Model: the bundled plan (PatchCore, its backbone, default size and heatmaps setting) trained on
the engine benchmark's 200-image gravel set (generated colour 256 px JPEGs); requests score its 300 other
images one at a time, in turn. Measured, each in its own process:

- ``in-process``: ``Detector.predict(path, heatmaps=...)`` with the plan's heatmap setting, one image a call.
- ``loop``: ``main.py --mode inference --loop`` on a real ``redis-server``; one client pushes a request
  (``dataset_uri`` = one image) and waits for its answer on ``inference_summary``: the full inference
  pipeline per request (staging, output.csv, heatmap, summary, promotion, history), as a batch run. The two
  run in turn, one request each (both processes resident), so that machine drift hits both alike; Redis
  syncs its append-only file every second (``make redis``), and in a second pairing on every write.
- ``http``: ``main.py --mode serve``; one client uploads one image per ``POST /v1/predict`` (no heatmap).
- ``cold``: ``main.py --mode inference`` on a folder of one image, process start to exit.
- throughput: 8 concurrent HTTP clients against the batch pipeline's scoring rate on the same 300 images
  (the inference step's own images/s, both without heatmaps).
- memory: the loop's resident set after 1,000 and after ``--memory-requests`` requests.

    .venv/bin/python -m benchmarks.serve [--requests 1000] [--memory-requests 10000]

Rows go to ``results/serve-rows.jsonl``; the table to ``BENCHMARKS.md`` ("Serving: edge loop and HTTP API").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.client import HTTPConnection
from pathlib import Path

import yaml

from benchmarks.engine_speed import build_data
from benchmarks.harness.measure import main_py, rss_mb, summary_ms, timed
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.plans import bundled_plan, inference_args, save_plan, set_data, train_args
from benchmarks.harness.report import add_report_options, write_section
from benchmarks.harness.rows import append_rows, utc_stamp
from benchmarks.redis_server import RedisServer, free_port

WORK = RESULTS / "serve"


def _bundled_backbone() -> str:
    """The PatchCore backbone the bundled plan names (the report says which model it measured)."""
    return str(train_args(bundled_plan())["model_parameters"]["patchcore_backbone"])


def write_plan(data: Path, folder: Path, inference: str, heatmaps: bool | None = None) -> Path:
    """The bundled plan (PatchCore) on the engine benchmark's images, scoring ``data / inference``.

    Args:
        data: A :func:`~benchmarks.engine_speed.build_data` folder.
        folder: The project folder.
        inference: The folder to score, in ``data``.
        heatmaps: The inference step's heatmaps (None: the bundled plan's setting).

    Returns:
        The plan file.
    """
    plan = set_data(bundled_plan(), data / "train", data / inference)
    train_args(plan)["model_name"] = "patchcore"
    if heatmaps is not None:
        inference_args(plan)["save_anomaly_maps"] = heatmaps
    return save_plan(plan, folder)


# The in-process side: a resident Detector that scores the image named on each stdin line and answers with
# the seconds the call took, so that both sides run in turn, one request each, on the same machine state.
IN_PROCESS_WORKER = """
import json, sys, time
from pathlib import Path
from vad.detector import resident_detector
from vad.runtime import use_all_cores
use_all_cores()
detector = resident_detector(Path(sys.argv[1]))
heat = sys.argv[2] == "1"
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    detector.predict(line.strip(), heatmaps=heat)
    print(time.perf_counter() - start, flush=True)
"""


def trained_project(work: Path) -> tuple[Path, Path, list[Path], dict]:
    """The bundled plan trained afresh in ``work/project`` on the engine benchmark's 200-image set.

    Args:
        work: The benchmark's work folder (emptied first).

    Returns:
        The dataset folder, the plan (scoring one image), the 300 images to score in turn, the training run's row.
    """
    data = build_data("default")
    images = sorted((data / "score").glob("*.jpg"))
    shutil.rmtree(work, ignore_errors=True)
    plan = write_plan(data, work / "project", "one")
    return data, plan, images, timed(main_py("--mode", "train", "--config", str(plan)))


def _plan_heatmaps(plan: Path) -> bool:
    raw = yaml.safe_load(plan.read_text())
    for entry in raw["user_parameters"]:
        for step in entry.get("inference_pipeline", []):
            if step["step"] == "inference":
                return bool(step["args"][0].get("save_anomaly_maps"))
    return False


class Loop:
    """``main.py --mode inference --loop`` on its own ``redis-server``, and a client that waits for each answer."""

    def __init__(self, plan: Path, folder: Path, fsync: str, checkout: Path = ROOT) -> None:
        self.server = RedisServer(folder, fsync=fsync).start()
        self.client = self.server.client()
        system = json.dumps({"edgeapp_interface": {"redis_server_uri": self.server.uri}})
        self.process = subprocess.Popen(
            main_py("--mode", "inference", "--loop", "--config", str(plan), "--system", system, checkout=checkout),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.sent = 0

    def request(self, image: Path) -> float:
        """Send one request (``dataset_uri`` = one image) and wait for its summary; seconds from push to answer."""
        message = {"solution_metadata": {"pipeline": [{"dataset_uri": str(image)}]}, "request_id": str(self.sent)}
        self.sent += 1
        start = time.perf_counter()
        self.client.rpush("request_inference", json.dumps(message))
        popped = self.client.blpop(["inference_summary"], timeout=600)
        if popped is None:  # BLPOP's timeout passed with no answer
            msg = f"request {message['request_id']} had no answer in 600 s"
            raise TimeoutError(msg)
        answer = json.loads(popped[1])
        elapsed = time.perf_counter() - start
        if answer["status"] != "success":
            msg = f"request {answer['request_id']} failed: {answer['message']}"
            raise RuntimeError(msg)
        return elapsed

    def close(self) -> None:
        """Stop the loop and its server."""
        self.process.terminate()
        self.process.wait(timeout=60)
        self.server.stop()


def paired(plan: Path, images: list[Path], count: int, fsync: str) -> dict:
    """Warm single-image latency of ``Detector.predict`` in-process and of the loop, one request each in turn."""
    heat = _plan_heatmaps(plan)
    models = plan.parent / "train_artifacts" / "models"
    worker = subprocess.Popen(
        [sys.executable, "-c", IN_PROCESS_WORKER, str(models), "1" if heat else "0"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdin, stdout = worker.stdin, worker.stdout
    assert stdin is not None and stdout is not None  # both are pipes (PIPE above)
    with tempfile.TemporaryDirectory() as folder:
        edge = Loop(plan, Path(folder), fsync)
        try:
            assert stdout.readline().strip() == "ready"

            def predict(image: Path) -> float:
                stdin.write(f"{image}\n")
                stdin.flush()
                return float(stdout.readline())

            ours: list[float] = []
            theirs: list[float] = []
            for i in range(count + 20):
                image = images[i % len(images)]
                local, remote = predict(image), edge.request(image)
                if i >= 20:
                    ours.append(local)
                    theirs.append(remote)
        finally:
            edge.close()
            stdin.close()
            worker.wait(timeout=60)
    return {"in-process": {**summary_ms(ours), "heatmaps": heat}, "loop": {**summary_ms(theirs), "fsync": fsync}}


def loop_memory(plan: Path, images: list[Path], requests: int) -> dict:
    """The loop's resident set after 1,000 requests and after ``requests``."""
    with tempfile.TemporaryDirectory() as folder:
        edge = Loop(plan, Path(folder), "everysec")
        try:
            rss: dict[str, float] = {}
            for i in range(requests):
                edge.request(images[i % len(images)])
                if i + 1 in (1000, requests):
                    rss[str(i + 1)] = rss_mb(edge.process.pid)
            return {"rss_mb": rss}
        finally:
            edge.close()


def start_server(plan: Path) -> tuple[subprocess.Popen, int]:
    """``main.py --mode serve`` on a free loopback port, once ``/readyz`` answers (or two minutes passed)."""
    port = free_port()
    process = subprocess.Popen(
        main_py("--mode", "serve", "--config", str(plan), "--port", str(port)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    return process, port


def http(plan: Path, images: list[Path], count: int, clients: int, throughput_images: int) -> dict:
    process, port = start_server(plan)
    try:
        payloads = [_multipart(image) for image in images]
        one = Client(port)
        for i in range(20):
            one.post(payloads[i % len(payloads)])
        times = []
        for i in range(count):
            start = time.perf_counter()
            one.post(payloads[i % len(payloads)])
            times.append(time.perf_counter() - start)
        counter = iter(range(throughput_images))
        lock = threading.Lock()

        def client() -> None:
            connection = Client(port)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                connection.post(payloads[i % len(payloads)])

        threads = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rate = throughput_images / (time.perf_counter() - start)
        return {**summary_ms(times), "clients": clients, "concurrent_images_per_s": rate}
    finally:
        process.terminate()
        process.wait(timeout=60)


def _multipart(image: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{image.name}"\r\n\r\n'
    body = head.encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Client:
    """One kept-alive HTTP connection to the server, as an edge app holds one (no TCP set-up per image)."""

    def __init__(self, port: int) -> None:
        self.connection = HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, payload: tuple[bytes, str]) -> None:
        """``POST /v1/predict`` one multipart body and read the answer (a non-200 answer raises)."""
        self.connection.request("POST", "/v1/predict", body=payload[0], headers={"content-type": payload[1]})
        answer = self.connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            msg = f"HTTP {answer.status}: {body[:200]!r}"
            raise RuntimeError(msg)


def batch_rate(plan: Path) -> dict:
    row = timed(main_py("--mode", "inference", "--config", str(plan)))
    log = (plan.parent / "inference_artifacts" / "log" / "pipeline.log").read_text(encoding="utf-8")
    found = re.findall(r"inference: (\d+)/(\d+) \(([\d.]+)/s", log)
    return {"process_s": row["seconds"], "step_images_per_s": float(found[-1][2])}


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--memory-requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=8)
    add_report_options(parser, "Serving: edge loop and HTTP API")
    args = parser.parse_args()
    data, plan, images, train = trained_project(WORK)
    rows: dict[str, dict] = {"train": train}
    cold = [timed(main_py("--mode", "inference", "--config", str(plan)))["seconds"] for _ in range(3)]
    rows["cold"] = {"median_s": statistics.median(cold), "runs": cold}
    rows.update(paired(plan, images, args.requests, "everysec"))
    strict = paired(plan, images, args.requests, "always")
    rows["loop-fsync-always"] = {**strict["loop"], "paired_in_process_p50_ms": strict["in-process"]["p50_ms"]}
    rows["loop-memory"] = loop_memory(plan, images, args.memory_requests)
    rows["http"] = http(plan, images, args.requests, args.clients, 400)
    batch_plan = write_plan(data, WORK / "batch", "score", heatmaps=False)
    shutil.copytree(plan.parent / "train_artifacts", WORK / "batch" / "train_artifacts")
    rows["batch"] = batch_rate(batch_plan)
    append_rows(
        RESULTS / "serve-rows.jsonl", [{"name": name, **row, "finished": utc_stamp()} for name, row in rows.items()]
    )
    write_section(args.benchmarks_file, args.section, table(rows, args))


def table(rows: dict, args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section."""
    ip, lp, hp, strict = rows["in-process"], rows["loop"], rows["http"], rows["loop-fsync-always"]
    rss = rows["loop-memory"]["rss_mb"]
    first, last = rss.get("1000"), rss.get(str(args.memory_requests))
    lines = [
        f"Command: `python -m benchmarks.serve --requests {args.requests} --memory-requests {args.memory_requests}`",
        "",
        f"Bundled plan (PatchCore `{_bundled_backbone()}`, default size 320 px, heatmaps "
        f"{'on' if ip['heatmaps'] else 'off'} in the inference step), trained on 200 generated gravel images "
        "(colour 256 px JPEGs); each request scores one of 300 other images; one client, warm, "
        f"{args.requests} requests after 20 unmeasured ones. The in-process call and the loop run in turn, one "
        "request each, so that both see the same machine. Redis as `make redis` runs it (append-only file synced "
        "every second), and once more with every write synced before Redis replies (`appendfsync always`: "
        "nothing lost even on a power cut).",
        "",
        "| single image, one client | p50 ms | p95 ms | mean ms |",
        "|---|---|---|---|",
        f"| `Detector.predict` in-process (heatmap {'on' if ip['heatmaps'] else 'off'}) | {ip['p50_ms']:.1f} | "
        f"{ip['p95_ms']:.1f} | {ip['mean_ms']:.1f} |",
        f"| Redis loop: the whole inference pipeline per request, push to summary answer | {lp['p50_ms']:.1f} | "
        f"{lp['p95_ms']:.1f} | {lp['mean_ms']:.1f} |",
        "| the same, `appendfsync always` (its own paired in-process p50: "
        f"{strict['paired_in_process_p50_ms']:.1f} ms) | {strict['p50_ms']:.1f} | {strict['p95_ms']:.1f} | "
        f"{strict['mean_ms']:.1f} |",
        f"| HTTP `POST /v1/predict`, one upload, no heatmap | {hp['p50_ms']:.1f} | {hp['p95_ms']:.1f} | "
        f"{hp['mean_ms']:.1f} |",
        f"| cold `main.py --mode inference`, one image (process) | {rows['cold']['median_s'] * 1000:.0f} | | |",
        "",
        f"Loop p50 against in-process p50: {lp['p50_ms'] / ip['p50_ms']:.2f}x (target 1.15x; with `appendfsync "
        f"always` {strict['p50_ms'] / strict['paired_in_process_p50_ms']:.2f}x); "
        f"p50 target 60 ms: loop {'met' if lp['p50_ms'] <= 60 else 'not met'}, "
        f"HTTP {'met' if hp['p50_ms'] <= 60 else 'not met'}.",
        "",
        f"Throughput, {hp['clients']} concurrent HTTP clients (one image per request, no heatmap): "
        f"{hp['concurrent_images_per_s']:.1f} images/s against the batch pipeline's inference step on the 300 "
        f"images without heatmaps, {rows['batch']['step_images_per_s']:.1f} images/s: "
        f"{hp['concurrent_images_per_s'] / rows['batch']['step_images_per_s']:.0%} (target 90%).",
        "",
        f"Loop memory: resident set {first:.0f} MB after 1,000 requests, {last:.0f} MB after "
        f"{args.memory_requests:,} ({(last / first - 1):+.1%}; target at most +5%).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
