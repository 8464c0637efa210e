"""Exported runtimes: images/s and AUROC of each on the accuracy benchmark's data, and the FastFlow int8 criterion.

Run by ``python -m benchmarks.export_speed [--products gravel grass]``.

**Runtimes.** For each product (the accuracy benchmark's generated data: 200 OK training images, threshold on
20 OK + 10 NG validation images, 50 OK + 50 NG test images) PatchCore and FastFlow are trained with the bundled
plan's settings through ``main.py --mode train`` with ``export: [openvino, onnx]`` and ``precision: int8``
(heatmaps off). Then one fresh process scores the 100 test images with each runtime through ``Detector.predict``
(file paths in, so decoding and resizing are included; batches of :data:`BATCH`; no maps), the runtimes taking
turns for :data:`ROUNDS` rounds, the best round reported; and one image with its map (median of
:data:`LATENCY_CALLS`). AUROC is from the raw scores, F1 at each runtime's own threshold (int8 has its own).
anomalib's own OpenVINO export of the same trained weights, run by its ``OpenVINOInferencer`` one image at a
time, is the outside reference (:mod:`benchmarks.anomalib_openvino`).

**FastFlow criterion.** anomalib's ResNet-18 FastFlow configuration (``layer1``-``layer3``, 8 flow steps,
256 px, random backbone weights: speed only) on the speed benchmark's 100 test images: plain anomalib's
``Engine.predict`` (batch 8, post-processing off) against our int8 graph (the same configuration trained for one
epoch by our pipeline, its OpenVINO graph quantised by NNCF on 100 OK training images; read, resized and scored
in batches of 8), with our OpenVINO fp32 and torch runtimes beside it.

Rows go to ``results/export-speed-rows.jsonl``; the tables to ``BENCHMARKS.md`` ("Speed: exported runtimes").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks.harness import plain_anomalib
from benchmarks.harness.data import ok_training_images
from benchmarks.harness.measure import error_tail, main_py, run_timed
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import save_plan, train_args
from benchmarks.harness.report import add_report_options, fmt, write_section
from benchmarks.harness.rows import append_rows, utc_stamp
from benchmarks.harness.workers import add_worker_options, answer, spawn_worker

WORK = RESULTS / "export-speed"
LOG = RESULTS / "export-speed-rows.jsonl"
MODELS = {"patchcore": "mobilenetv2_100", "fastflow": "tf_efficientnet_lite0"}  # the bundled plan's backbones
RUNTIMES = (("torch", None), ("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"))
BATCH = 4
ROUNDS = 3
LATENCY_CALLS = 10
R18_BATCH = 8


def _labelled_test(folder: Path) -> tuple[list[str], list[bool]]:
    """The test images of a product folder and whether each is NG."""
    import pandas as pd

    table = pd.read_csv(folder / "inference.csv", dtype=str, keep_default_na=False)
    return [str(folder / name) for name in table["image_path"]], list(table["label"] != "good")


def _auroc_f1(is_ng: list[bool], raw: list[float], predicted: list[bool] | None) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    row = {"auroc": float(roc_auc_score(is_ng, raw))}
    if predicted is not None:
        row["f1"] = float(f1_score(is_ng, predicted, zero_division=0))
    return row


def worker_runtimes(models: Path, test: Path) -> dict:
    """Every runtime of one trained model on a product's test images (see the module).

    Args:
        models: The trained ``models`` folder (its exports).
        test: The product's ``test/`` folder.

    Returns:
        ``runtimes`` (each one's figures or error), ``exports`` (the manifest's), ``int8_gate``.
    """
    from benchmarks.anomalib_openvino import anomalib_openvino_scores
    from vad.detector import Detector
    from vad.export.runtime import ExportedModel

    files, is_ng = _labelled_test(test)
    detectors: dict[str, Detector | str] = {}  # a runtime that failed to load: its error
    for runtime, precision in RUNTIMES:
        name = runtime if precision is None else f"{runtime} {precision}"
        try:
            if precision is None:
                detectors[name] = Detector.load(models, runtime="torch")
            else:
                detectors[name] = Detector(ExportedModel.load(models / "train", runtime, precision))
        except Exception as exc:  # a graph refused by its gate: reported as such
            detectors[name] = f"{exc.__class__.__name__}: {str(exc)[:200]}"
    rows: dict = {name: {"error": value} for name, value in detectors.items() if isinstance(value, str)}
    ready = {name: value for name, value in detectors.items() if not isinstance(value, str)}
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, detector in ready.items():
            started = time.perf_counter()
            results = [
                r for start in range(0, len(files), BATCH) for r in detector.predict(files[start : start + BATCH])
            ]
            seconds = time.perf_counter() - started
            best[name] = min(best.get(name, seconds), seconds)
            if name not in rows:
                raw = [r.raw_score for r in results]
                rows[name] = _auroc_f1(is_ng, raw, [bool(r.is_anomalous) for r in results])
    for name, detector in ready.items():
        detector.predict(files[:1], maps=True)
        timings = []
        for _ in range(LATENCY_CALLS):
            started = time.perf_counter()
            detector.predict(files[:1], maps=True)
            timings.append(time.perf_counter() - started)
        rows[name].update(
            images_per_s=len(files) / best[name], one_image_ms=1000 * statistics.median(timings), images=len(files)
        )
    if "error" in rows.get("openvino int8", {}):  # refused by its gate: what it would have scored on the test images
        rows["openvino int8 (refused, scored anyway)"] = _refused_int8(models, files, is_ng)
    found = anomalib_openvino_scores(models / "train", files, WORK / "anomalib-export" / models.parent.name)
    rows["anomalib OpenVINOInferencer"] = {
        **_auroc_f1(is_ng, found["scores"], None),
        "images_per_s": found["images_per_s"],
        "images": found["images"],
    }
    manifest = json.loads((models / "export" / "manifest.json").read_text())
    parity = json.loads((models / "export" / "parity.json").read_text())
    return {"runtimes": rows, "exports": manifest["exports"], "int8_gate": parity.get("openvino_int8", {})}


def _refused_int8(models: Path, files: list[str], is_ng: list[bool]) -> dict:
    """The int8 graph its gate refused, quantised again (the whole graph, its first scope), on the test images."""
    import openvino

    from vad.export.int8 import quantize_int8
    from vad.export.runtime import ExportedModel, ExportedScorer, OpenvinoRunner
    from vad.images import read_image

    plan = yaml.safe_load((models.parent.parent / "experimental_plan.yaml").read_text())
    ok = [str(path) for path in ok_training_images(Path(plan["external_path"][0]["load_train_data_path"]))]
    fp32 = ExportedModel.load(models / "train", "openvino", "fp32")  # its tail (PatchCore's bank search) is int8's
    size = fp32.spec.input_size
    graph = quantize_int8(openvino.Core().read_model(str(models / "export" / "model.xml")), ok, size)
    scorer = ExportedScorer(OpenvinoRunner(graph), size, fp32.model.tail)
    raw, seconds = [], float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        found = [
            scorer.score_images([read_image(p) for p in files[i : i + BATCH]], False)[0]
            for i in range(0, len(files), BATCH)
        ]
        seconds = min(seconds, time.perf_counter() - started)
        raw = [float(v) for batch in found for v in batch]
    return {**_auroc_f1(is_ng, raw, None), "images_per_s": len(files) / seconds, "images": len(files)}


def worker_r18_ours(models: Path, train: Path, test: Path) -> dict:
    """Our ResNet-18 FastFlow: int8 (NNCF on 100 OK training images), OpenVINO fp32 and torch, images/s.

    Args:
        models: The trained ``models`` folder.
        train: The speed benchmark's ``train/`` folder (calibration images).
        test: Its ``test/`` folder.

    Returns:
        Each scorer's images/s (int8's quantisation seconds too).
    """
    import openvino

    from vad.detector import Detector
    from vad.export.int8 import quantize_int8
    from vad.export.runtime import ExportedModel, ExportedScorer, OpenvinoRunner
    from vad.images import read_image

    fp32 = ExportedModel.load(models / "train", "openvino", "fp32")
    size = fp32.spec.input_size
    ok_train = sorted(str(p) for p in (train / "good").glob("*.jpg"))[:100]
    started = time.perf_counter()
    graph = quantize_int8(openvino.Core().read_model(str(models / "export" / "model.xml")), ok_train, size)
    quantize_seconds = time.perf_counter() - started
    int8 = ExportedScorer(OpenvinoRunner(graph), size)
    files, _ = _labelled_test(test)
    torch_detector = Detector.load(models, runtime="torch")
    scorers = {
        "ours int8 (OpenVINO)": lambda batch: int8.score_images(batch, maps=False),
        "ours fp32 (OpenVINO)": lambda batch: fp32.score_images(batch, False),
        "ours torch": lambda batch: torch_detector.trained.score_images(batch, False),
    }
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, score in scorers.items():
            started = time.perf_counter()
            for start in range(0, len(files), R18_BATCH):
                score([read_image(path) for path in files[start : start + R18_BATCH]])
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    rows = {name: {"images_per_s": len(files) / seconds, "images": len(files)} for name, seconds in best.items()}
    rows["ours int8 (OpenVINO)"]["quantize_seconds"] = quantize_seconds
    return rows


def worker_r18_anomalib(data: Path) -> dict:
    """Plain anomalib's ResNet-18 FastFlow (random weights), ``Engine.predict`` on the test images, images/s.

    Args:
        data: The speed benchmark's dataset folder (its anomalib layout).

    Returns:
        ``{"anomalib Engine.predict": {"images_per_s", "images"}}``.
    """
    from benchmarks.speed.plain import anomalib_folder

    plain_anomalib.quiet()
    module = plain_anomalib.fastflow_module("resnet18", (256, 256), flow_steps=8)
    datamodule = anomalib_folder(data, R18_BATCH)
    engine = plain_anomalib.cpu_engine(WORK / "anomalib-r18")
    datamodule.setup()
    loader = datamodule.test_dataloader()
    best = float("inf")
    images = 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        batches = engine.predict(model=module, dataloaders=loader, return_predictions=True)
        best = min(best, time.perf_counter() - started)
        images = sum(len(batch.pred_score.reshape(-1)) for batch in batches)
    return {"anomalib Engine.predict": {"images_per_s": images / best, "images": images}}


def spawn(*args: str) -> dict:
    """One worker in a fresh process; its JSON row (or the error's last lines).

    Args:
        *args: The worker's kind (``runtimes``, ``r18-ours``, ``r18-anomalib``) and arguments.

    Returns:
        The row.
    """
    return spawn_worker("benchmarks.export_speed", *args, out=WORK / "row.json")


def train(plan: dict, folder: Path) -> Path:
    """Train through main.py in a fresh process.

    Args:
        plan: The plan.
        folder: The project folder.

    Returns:
        The models folder.

    Raises:
        SystemExit: Training failed.
    """
    done, _ = run_timed(main_py("--mode", "train", "--config", str(save_plan(plan, folder))))
    if done.returncode != 0:
        raise SystemExit(f"training failed: {error_tail(done, 1)}")
    return folder / "train_artifacts" / "models"


def record(name: str, row: dict) -> dict:
    """Log a row as it finishes.

    Args:
        name: The measurement.
        row: Its row.

    Returns:
        The logged row (``name`` and ``finished`` first).
    """
    row = {"name": name, "finished": utc_stamp(minutes=True), **row}
    append_rows(LOG, [row])
    return row


def run(products: list[str]) -> list[dict]:
    """Both parts of the benchmark.

    Args:
        products: The accuracy benchmark's products.

    Returns:
        The rows.
    """
    from benchmarks import accuracy
    from benchmarks.harness import data as dataset
    from benchmarks.speed.data import build_data
    from benchmarks.speed.plans import write_plan

    rows = []
    made = dataset.build((RESULTS / "data").resolve(), tuple(products))
    extra = {"export": ["openvino", "onnx"], "precision": "int8"}
    for (product, _), folder in made.items():
        for model, backbone in MODELS.items():
            plan = accuracy.make_plan(folder, accuracy.Setting(model, backbone, train_args=extra))
            models = train(plan, WORK / product / model)
            rows.append(record(f"{product}/{model}", spawn("runtimes", str(models), str(folder / "test"))))
    data = build_data(200)
    plan = yaml.safe_load(write_plan(data, "fastflow", 1, data / "test").read_text())
    train_args(plan).update(export=["openvino"], precision="fp32")
    models = train(plan, WORK / "fastflow-r18")
    ours = spawn("r18-ours", str(models), str(data / "train"), str(data / "test"))
    theirs = spawn("r18-anomalib", str(data))
    rows.append(record("fastflow-r18", {"runtimes": {**theirs, **ours}}))
    return rows


def tables(rows: list[dict]) -> str:
    """The markdown of the rows.

    Args:
        rows: The rows of :func:`run`.

    Returns:
        The markdown.
    """
    lines = [
        "| product / model | runtime | images/s (100 test images, batch 4) | one image with map, ms "
        "| image AUROC | F1 |",
        "|---|---|---|---|---|---|",
    ]
    r18 = None
    for row in rows:
        if row["name"] == "fastflow-r18":
            r18 = row
            continue
        for runtime, figures in row.get("runtimes", {}).items():
            if "error" in figures:
                reason = row.get("int8_gate", {}).get("reason") if "int8" in runtime else None
                lines.append(f"| {row['name']} | {runtime} | refused: {reason or figures['error'][:160]} | | | |")
                continue
            lines.append(
                f"| {row['name']} | {runtime} | {figures['images_per_s']:.1f} | "
                f"{fmt(figures.get('one_image_ms'), missing='')} | {figures['auroc']:.4f} | "
                f"{fmt(figures.get('f1'), 3, missing='')} |"
            )
        if "error" in row:
            lines.append(f"| {row['name']} | error: {row['error'][:200]} | | | | |")
        gate = row.get("int8_gate") or {}
        if "rank_correlation" in gate:
            verdict = "kept" if gate["accepted"] else "refused"
            lines.append(
                f"| {row['name']} | int8 fidelity gate ({gate.get('scope', '')}) | rank correlation "
                f"{gate['rank_correlation']:.4f}, largest difference {gate['largest_difference']:.3f}: {verdict} "
                "| | | |"
            )
    if r18 is not None:
        lines += ["", "| FastFlow ResNet-18 (anomalib's configuration, random weights) | images/s | vs anomalib |"]
        lines.append("|---|---|---|")
        runtimes = r18.get("runtimes", {})
        base = runtimes.get("anomalib Engine.predict", {}).get("images_per_s")
        for name, figures in runtimes.items():
            if "images_per_s" not in figures:
                lines.append(f"| {name} | error: {str(figures)[:160]} | |")
                continue
            ratio = f"{figures['images_per_s'] / base:.2f}x" if base else "n/a"
            lines.append(f"| {name} | {figures['images_per_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or one worker) and write its BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", nargs="+", default=["gravel", "grass"])
    add_report_options(parser, "Speed: exported runtimes")
    add_worker_options(parser)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        workers: dict[str, Callable[..., dict]] = {
            "runtimes": worker_runtimes,
            "r18-ours": worker_r18_ours,
            "r18-anomalib": worker_r18_anomalib,
        }
        answer(args.out, workers[kind](*(Path(value) for value in rest)))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    rows = run(args.products)
    command = f"Command: `python -m benchmarks.export_speed --products {' '.join(args.products)}`\n\n"
    write_section(args.benchmarks_file, args.section, command + tables(rows))


if __name__ == "__main__":
    main()
