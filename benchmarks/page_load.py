"""Load test of the web page's scoring: 20 concurrent clients for 60 s against ``main.py --mode serve``.

Model: the bundled plan (PatchCore, ``mobilenetv2_100``, its default size) trained on the engine benchmark's
200-image gravel set (generated colour 256 px JPEGs). Each client holds one kept-alive loopback connection
and, in turn, uploads one of the 300 other images to the Inspect page's route (``POST /ui/api/inspect``:
score, heatmap, the upright original and the overlay encoded as PNGs for the page) with the page's CSRF
header, then fetches the overlay picture the answer names, as the page does. Bounded: at most
``--seconds`` of load and ``--max-requests`` requests, loopback only. Reported: requests, errors, latency
percentiles of the scoring request and of the whole upload-and-picture round trip, and pages served.

    .venv/bin/python -m benchmarks.page_load [--clients 20] [--seconds 60]

Rows go to ``results/page-load-rows.jsonl``; the table to ``BENCHMARKS.md`` ("Web page: load test").
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

from benchmarks.harness.measure import percentile
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.report import add_report_options, write_section
from benchmarks.harness.rows import append_rows, utc_stamp
from benchmarks.serve import _multipart, start_server, trained_project

WORK = RESULTS / "page-load"


def _csrf(base: str) -> str:
    page = urllib.request.urlopen(f"{base}/ui/inspect", timeout=30).read().decode()
    return page.split('name="csrf" content="')[1].split('"')[0]


def load(plan: Path, images: list[Path], clients: int, seconds: float, max_requests: int) -> dict:
    """Run the clients against a fresh server; latencies and errors.

    Args:
        plan: The trained project's plan.
        images: The images the clients upload, in turn.
        clients: Concurrent clients.
        seconds: Seconds of load at most.
        max_requests: Requests at most.

    Returns:
        Requests, errors, rates and latency percentiles.
    """
    process, port = start_server(plan)
    base = f"http://127.0.0.1:{port}"
    try:
        csrf = _csrf(base)
        payloads = [_multipart(image) for image in images]
        scoring: list[float] = []
        round_trips: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(max_requests))
        stop = time.monotonic() + seconds

        def client() -> None:
            connection = HTTPConnection("127.0.0.1", port, timeout=120)
            while time.monotonic() < stop:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body, kind = payloads[i % len(payloads)]
                started = time.perf_counter()
                try:
                    headers = {"content-type": kind, "x-vad-csrf": csrf}
                    connection.request("POST", "/ui/api/inspect", body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                    scored = time.perf_counter()
                    if answer.status != 200:
                        raise RuntimeError(f"HTTP {answer.status}: {data[:120]!r}")
                    picture = json.loads(data)["results"][0]["heatmap"]
                    connection.request("GET", picture)
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"picture HTTP {answer.status}")
                except Exception as exc:  # a failed request is counted, and the client goes on
                    with lock:
                        errors.append(f"{exc.__class__.__name__}: {exc}"[:200])
                    connection.close()
                    connection = HTTPConnection("127.0.0.1", port, timeout=120)
                    continue
                with lock:
                    scoring.append(scored - started)
                    round_trips.append(time.perf_counter() - started)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        page_times = []
        for _ in range(20):
            started = time.perf_counter()
            urllib.request.urlopen(f"{base}/ui/runs", timeout=30).read()
            page_times.append(time.perf_counter() - started)
        return {
            "clients": clients,
            "seconds": elapsed,
            "requests": len(scoring),
            "errors": len(errors),
            "error_examples": errors[:3],
            "images_per_s": len(scoring) / elapsed,
            "scoring_p50_ms": percentile(scoring, 0.5) * 1000,
            "scoring_p95_ms": percentile(scoring, 0.95) * 1000,
            "round_trip_p95_ms": percentile(round_trips, 0.95) * 1000,
            "round_trip_max_ms": max(round_trips) * 1000,
            "page_p95_ms": percentile(page_times, 0.95) * 1000,
        }
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    """Train the model, run the load, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    add_report_options(parser, "Web page: load test")
    args = parser.parse_args()
    _, plan, images, train = trained_project(WORK)
    row = {"train_s": train["seconds"], **load(plan, images, args.clients, args.seconds, args.max_requests)}
    append_rows(RESULTS / "page-load-rows.jsonl", [{**row, "finished": utc_stamp()}])
    lines = [
        f"Command: `python -m benchmarks.page_load --clients {args.clients} --seconds {args.seconds:g}`",
        "",
        f"{args.clients} concurrent clients, each on one kept-alive loopback connection, for "
        f"{row['seconds']:.0f} s: upload one 256 px gravel JPEG to the Inspect page's `POST /ui/api/inspect` "
        "(score, heatmap, original and overlay as PNGs), then fetch the overlay picture. Model: the bundled plan "
        "(PatchCore, mobilenetv2_100) trained on 200 generated gravel images; 2 CPU cores shared by the server "
        "and the clients.",
        "",
        "| requests | errors | images/s | scoring p50 ms | scoring p95 ms | upload + picture p95 ms | max ms | "
        "runs page p95 ms (idle) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {row['requests']} | {row['errors']} | {row['images_per_s']:.1f} | {row['scoring_p50_ms']:.0f} | "
        f"{row['scoring_p95_ms']:.0f} | {row['round_trip_p95_ms']:.0f} | {row['round_trip_max_ms']:.0f} | "
        f"{row['page_p95_ms']:.1f} |",
    ]
    write_section(args.benchmarks_file, args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
