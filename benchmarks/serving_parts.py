"""Two parts of a served request, measured on their own: heatmap PNG encoding, and the scoring thread.

- PNG: one heatmap picture (original | overlay | region of a generated 256 px gravel image: 768 x 256 RGB)
  encoded by Pillow at zlib level 1 (what the product used), at Pillow's default level, and by
  :func:`vad.png.encode_png`; milliseconds per picture and file sizes.
- Thread: ``Detector.predict`` of one decoded image (no heatmap), in the thread that loaded the detector and
  in another thread, each in a fresh process (the HTTP API scores in its batcher thread).

    .venv/bin/python -m benchmarks.serving_parts [--model results/serve/project/train_artifacts/models]

The model defaults to the one ``benchmarks.serve`` trains (run that first). Writes the BENCHMARKS.md section
"Serving: heatmap encoding and the scoring thread".
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.engine_speed import build_data
from benchmarks.harness.measure import median_call_ms
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.report import add_report_options, write_section
from vad.heatmaps import render
from vad.png import encode_png

THREAD_WORKER = """
import json, statistics, sys, threading, time
from pathlib import Path
times = []
def run():
    from vad.detector import Detector
    from vad.images import decode_image
    images = [decode_image(Path(p).read_bytes(), Path(p).name) for p in json.loads(sys.argv[2])]
    detector = LOADED or Detector.load(sys.argv[1])
    for image in images[:10]:
        detector.predict(image)
    for i in range(100):
        time.sleep(0.004)  # a request's gap
        start = time.perf_counter()
        detector.predict(images[i % len(images)])
        times.append(time.perf_counter() - start)
LOADED = None
if sys.argv[3] == "other":  # loaded here, scored in another thread
    from vad.detector import Detector
    LOADED = Detector.load(sys.argv[1])
thread = threading.Thread(target=run)
thread.start()
thread.join()
print(statistics.median(times))
"""


def png_rows(image: Path) -> list[dict]:
    """Encoding time and size of one heatmap picture, three ways.

    Args:
        image: A generated gravel image.

    Returns:
        One row per encoder: ``ms`` (median of 30), ``kb``.
    """
    picture = Image.open(image).convert("RGB")
    rng = np.random.default_rng(0)
    anomaly = np.clip(np.cumsum(rng.normal(size=(32, 32)), axis=0) / 10 + 0.4, 0, 1)
    heatmap = render(picture, anomaly)
    pixels = np.asarray(heatmap)

    def pillow(level: int) -> bytes:
        buffer = io.BytesIO()
        heatmap.save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    rows = []
    for name, encode in (
        ("Pillow, zlib level 1 (before)", lambda: pillow(1)),
        ("Pillow, default level 6", lambda: pillow(6)),
        ("encode_png (Up filter + ISA-L deflate)", lambda: encode_png(pixels)),
    ):
        rows.append({"encoder": name, "ms": median_call_ms(encode), "kb": len(encode()) / 1024})
    return rows


def thread_rows(models: Path, images: list[Path]) -> list[dict]:
    """``Detector.predict`` p50 in the loading thread and in another one, three fresh processes each, in turn.

    Args:
        models: A trained ``models`` folder.
        images: The images to score.

    Returns:
        One row per thread: each process's p50 ms and their median.
    """
    found: dict[str, list[float]] = {"same": [], "other": []}
    for _ in range(3):
        for where in found:
            command = [sys.executable, "-c", THREAD_WORKER, str(models), json.dumps([str(p) for p in images]), where]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
            found[where].append(float(done.stdout.strip().splitlines()[-1]) * 1000)
    return [{"where": key, "runs_ms": values, "median_ms": statistics.median(values)} for key, values in found.items()]


def main() -> None:
    """Measure and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(RESULTS / "serve" / "project" / "train_artifacts" / "models"))
    add_report_options(parser, "Serving: heatmap encoding and the scoring thread")
    args = parser.parse_args()
    data = build_data("default")
    images = sorted((data / "score").glob("*.jpg"))[:50]
    png = png_rows(images[0])
    threads = thread_rows(Path(args.model), images)
    print(json.dumps({"png": png, "threads": threads}))
    lines = [
        "Command: `python -m benchmarks.serving_parts` (after `benchmarks.serve`, whose PatchCore model it loads)",
        "",
        "One heatmap picture (original | overlay | region, 768 x 256 RGB, of a generated 256 px gravel image):",
        "",
        "| encoder | ms per picture (median of 30) | file KB |",
        "|---|---|---|",
        *[f"| {row['encoder']} | {row['ms']:.1f} | {row['kb']:.0f} |" for row in png],
        "",
        "`Detector.predict` of one decoded image, no heatmap (p50 of 100 calls 4 ms apart; three fresh processes "
        "each, in turn):",
        "",
        "| scored in | p50 ms, each process | median |",
        "|---|---|---|",
    ]
    names = {"same": "the thread that loaded the detector", "other": "another thread (loaded in the main thread)"}
    for row in threads:
        runs = ", ".join(f"{value:.1f}" for value in row["runs_ms"])
        lines.append(f"| {names[row['where']]} | {runs} | {row['median_ms']:.1f} |")
    lines += [
        "",
        "So the HTTP API's batcher thread loads the detector it scores with (`Batcher.resolve`), and the edge loop "
        "scores in the main thread that loaded it.",
    ]
    write_section(args.benchmarks_file, args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
