"""Scoring-engine speed: whole processes as a user runs them, against plain anomalib, and the Detector's rate.

Two settings (issue 12), PatchCore, coreset ratio 0.1, batch 8, no heatmaps on either side:

- ``holdout``: the real-defect holdout's shape: 60 OK training images (plus 20 OK + 10 NG to validate),
  300 images to score, ``tf_efficientnet_lite0`` ``blocks.2`` + ``blocks.4`` at 256 x 256. The holdout
  itself is kept outside the repository; this runs on generated gravel images of the same counts
  (colour, 256 px JPEGs), so only its ratios, not its seconds, compare with the holdout's.
- ``default``: the product's PatchCore backbone (``mobilenetv2_100`` ``blocks.2`` + ``blocks.4``) at 256 x 256
  (the speed benchmark's setting; the product's default size is 320) on 200 OK training images, and the
  same 300 images to score.

Every measurement is its own process, timed from the parent (process start to exit, imports included):

- ``ours train`` / ``ours inference``: ``main.py --mode train`` and ``--mode inference`` (300 images, no CSV), with
  tracking off; ``ours train, no export``: the same training without the export and its parity gates.
- ``ours first image``: ``main.py --mode inference`` on a folder of one image: process start to summary
  written, an upper bound of process start to first scored image.
- ``anomalib train`` / ``anomalib inference``: a plain script, ``import anomalib`` + ``Engine.fit`` (the
  same backbone, layers, size, coreset ratio, offline weights; no validation, post-processing, metrics or
  visualisation), and ``Engine.predict`` on the same 300 images in a second process, with our trained
  model's state loaded (anomalib's state-dict layout: the same memory bank on both sides).
- ``detector``: ``Detector.predict`` on the 300 files (decode included) and on the same images already
  decoded, against the folded backbone's forward alone on preprocessed tensors, same batch and size.
- ``baseline train`` (with ``--baseline PATH``): ``main.py --mode train`` of another checkout (the code
  before the change), to check that training did not slow down.

    .venv/bin/python -m benchmarks.engine_speed [--settings holdout default] [--anomalib all|inference|none]
        [--repeats 3] [--baseline /path/to/older/checkout]

Rows go to ``results/engine-speed-rows.jsonl``; the tables to ``BENCHMARKS.md``, one section per setting
("Speed: scoring engine, <setting> setting"). Our processes run ``--repeats`` times (median and every run shown).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from benchmarks.harness import plain_anomalib
from benchmarks.harness.data import generate, link_files, ok_training_images, stamped
from benchmarks.harness.measure import main_py, repeated
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.plans import add_control, bundled_plan, inference_args, save_plan, set_data, train_args
from benchmarks.harness.report import add_report_options, command_line, write_section
from benchmarks.harness.rows import append_rows, utc_stamp
from benchmarks.harness.workers import add_worker_options, answer, spawn_worker

if TYPE_CHECKING:
    from vad.detector import ImageInput


class Setting(TypedDict):
    """One setting: OK training images, PatchCore's backbone, our image size and anomalib's."""

    n_train: int
    backbone: str
    size: list[int]
    anomalib_size: tuple[int, int]


WORK = RESULTS / "engine-speed"
BATCH = 8
RATIO = 0.1
SETTINGS: dict[str, Setting] = {
    "holdout": {"n_train": 60, "backbone": "tf_efficientnet_lite0", "size": [256, 256], "anomalib_size": (256, 256)},
    "default": {"n_train": 200, "backbone": "mobilenetv2_100", "size": [256, 256], "anomalib_size": (256, 256)},
}
LAYERS = ["blocks.2", "blocks.4"]
N_SCORE = 300


def build_data(setting: str) -> Path:
    """Generate (or reuse) a setting's images: ``train/``, ``score/`` (300, no CSV), ``one/``, ``anomalib/``.

    Args:
        setting: A name from :data:`SETTINGS`.

    Returns:
        The dataset folder.
    """
    n_train = SETTINGS[setting]["n_train"]
    half = N_SCORE // 2
    counts = {"n_train": n_train, "n_valid": 20, "n_bad": 10, "n_inf_ok": half, "n_inf_ng": half}

    def build(target: Path) -> None:
        generate(target, 2000, counts, test="inference")
        inference = target / "inference"
        link_files(sorted(inference.glob("*.jpg")), target / "score")
        link_files(sorted(inference.glob("ng_*.jpg"))[:1], target / "one")
        link_files(ok_training_images(target / "train"), target / "anomalib" / "train_good")

    return stamped(WORK / "data" / f"gravel-{n_train}", {"seed": 2000, **counts}, build)


def write_plan(setting: str, data: Path, score_folder: str, run: Path, export: bool = True) -> Path:
    """The bundled plan set to the setting (PatchCore, no heatmaps), scoring ``data / score_folder``.

    Tracking is off (its background logger would run into the next timed process; ``benchmarks.tracking_overhead``
    measures it). ``export=False`` also turns off the export and its parity gates at the end of training.

    Args:
        setting: A name from :data:`SETTINGS`.
        data: A :func:`build_data` folder.
        score_folder: The folder to score, in ``data``.
        run: The run's project folder.
        export: Export at the end of training (the bundled plan's exports and their gates).

    Returns:
        The plan file.
    """
    values = SETTINGS[setting]
    plan = add_control(set_data(bundled_plan(), data / "train", data / score_folder), tracking=False)
    args = train_args(plan)
    args.update(model_name="patchcore", batch_size=BATCH, save_validation_heatmap=False)
    if values["size"]:
        args["img_size"] = values["size"]
    if not export:
        args["export"] = []
    args["model_parameters"] = {
        "patchcore_backbone": values["backbone"],
        "patchcore_layers": LAYERS,
        "patchcore_coreset_sampling_ratio": RATIO,
    }
    inference_args(plan)["save_anomaly_maps"] = False
    return save_plan(plan, run)


def _main_py(checkout: Path, mode: str, plan: Path) -> list[str]:
    return main_py("--mode", mode, "--config", str(plan), python=checkout / ".venv/bin/python", checkout=checkout)


# ----------------------------------------------------------------------------- workers (one process each)


def worker_anomalib(setting: str, data: Path, mode: str, state: Path) -> dict:
    """Plain anomalib: ``fit``, or ``predict`` with our trained model's state (``model.safetensors``).

    Args:
        setting: A name from :data:`SETTINGS`.
        data: A :func:`build_data` folder.
        mode: ``fit`` or ``predict``.
        state: Our trained model's ``model.safetensors`` (``predict``).

    Returns:
        ``bank_rows`` (fit) or ``images`` (predict).
    """
    import torch

    plain_anomalib.quiet()
    values = SETTINGS[setting]
    module = plain_anomalib.patchcore_module(values["backbone"], LAYERS, RATIO, values["anomalib_size"])
    engine = plain_anomalib.cpu_engine(WORK / "anomalib" / setting, max_epochs=1, limit_val_batches=0)
    torch.manual_seed(0)
    if mode == "fit":
        datamodule = plain_anomalib.folder_datamodule(
            data / "anomalib", BATCH, normal_dir="train_good", val_split_mode="none", test_split_mode="none"
        )
        engine.fit(model=module, datamodule=datamodule)
        return {"bank_rows": len(module.model.memory_bank)}
    from safetensors.torch import load_file

    # our trained model (anomalib's state-dict layout plus our search centroids): the same bank on both sides
    module.model.load_state_dict(load_file(str(state)), strict=False)
    predictions = engine.predict(model=module, data_path=data / "score", return_predictions=True)
    return {"images": sum(len(batch.pred_score) for batch in predictions)}


def worker_detector(models: Path, data: Path) -> dict:
    """Detector.predict on files and on decoded images, and the folded backbone's forward, images/s.

    Args:
        models: The trained ``models`` folder.
        data: A :func:`build_data` folder (its ``score/`` images).

    Returns:
        The scorer's class, the input size and the three rates.
    """
    import torch

    from vad.batches import to_tensor
    from vad.detector import Detector
    from vad.images import read_image
    from vad.models.scorer import GraphScorer
    from vad.runtime import use_all_cores

    use_all_cores()
    detector = Detector.load(models, runtime="torch")  # the torch engine: its backbone is the baseline
    spec = detector.spec
    files = sorted(str(p) for p in (data / "score").glob("*.jpg"))
    pictures = [read_image(f) for f in files]
    tensors = torch.stack([to_tensor(p, spec.input_size, spec.mean, spec.std) for p in pictures])
    scorer = detector.trained.model
    if not isinstance(scorer, GraphScorer):  # a model saved without its backbone graph scores as itself
        msg = f"{models} holds no backbone graph: its model scores as {type(scorer).__name__}, not a GraphScorer"
        raise TypeError(msg)
    backbone = scorer.backbone

    def rate(work: Callable[[], object]) -> float:
        work()  # warm-up
        started = time.perf_counter()
        work()
        return len(files) / (time.perf_counter() - started)

    def forward() -> None:
        with torch.inference_mode():
            for batch in tensors.split(BATCH):
                backbone(batch.contiguous(memory_format=torch.channels_last))

    def predict(items: Sequence[ImageInput]) -> Callable[[], object]:
        return lambda: list(detector.iter_predict(items, BATCH))

    return {
        "scorer": type(scorer).__name__,
        "input_size": list(spec.input_size),
        "backbone_images_per_s": rate(forward),
        "files_images_per_s": rate(predict(files)),
        "decoded_images_per_s": rate(predict(pictures)),
    }


# ----------------------------------------------------------------------------- orchestration


def spawn(*args: str) -> dict:
    """Run a worker of this module in a fresh process; its JSON row plus the process's wall seconds.

    Args:
        *args: The worker's kind (``anomalib``, ``detector``) and arguments.

    Returns:
        The row, with ``seconds`` (or ``error``).
    """
    return spawn_worker("benchmarks.engine_speed", *args, out=WORK / "row.json", wall_key="seconds", lines=3)


def measure(setting: str, anomalib: str, baseline: Path | None, repeats: int) -> dict:
    """Every measurement of one setting (our processes and the baseline ``repeats`` times, anomalib once).

    Args:
        setting: A name from :data:`SETTINGS`.
        anomalib: ``all``, ``inference`` or ``none``: which plain anomalib runs.
        baseline: Another checkout to time training with, or None.
        repeats: Runs of each of our processes.

    Returns:
        The rows, by name.
    """
    data = build_data(setting)
    run = WORK / "runs" / setting
    shutil.rmtree(run, ignore_errors=True)
    rows: dict[str, dict] = {}
    plan = write_plan(setting, data, "score", run / "main")
    bare = write_plan(setting, data, "score", run / "bare", export=False)
    rows["ours train, no export"] = repeated(_main_py(ROOT, "train", bare), repeats)
    rows["ours train"] = repeated(_main_py(ROOT, "train", plan), repeats)
    rows["ours inference"] = repeated(_main_py(ROOT, "inference", plan), repeats)
    one = write_plan(setting, data, "one", run / "main")  # same folder: the model trained above
    rows["ours first image"] = repeated(_main_py(ROOT, "inference", one), repeats)
    write_plan(setting, data, "score", run / "main")
    rows["detector"] = spawn("detector", str(run / "main" / "train_artifacts" / "models"), str(data))
    if baseline is not None:
        old = write_plan(setting, data, "score", run / "baseline")
        rows["baseline train"] = repeated(_main_py(baseline, "train", old), repeats, cwd=baseline)
    state = run / "main" / "train_artifacts" / "models" / "train" / "model.safetensors"
    if anomalib == "all":
        rows["anomalib train"] = spawn("anomalib", setting, str(data), "fit", str(state))
    if anomalib in ("all", "inference"):
        rows["anomalib inference"] = spawn("anomalib", setting, str(data), "predict", str(state))
    log = [{"setting": setting, "name": name, **row, "finished": utc_stamp()} for name, row in rows.items()]
    append_rows(RESULTS / "engine-speed-rows.jsonl", log)
    return rows


def _cell(rows: dict, name: str, key: str = "seconds", digits: int = 1) -> str:
    value = rows.get(name, {}).get(key)
    if value is None:
        return "n/a"
    runs = rows[name].get("runs", [])
    spread = f" ({', '.join(f'{run:.1f}' for run in runs)})" if len(runs) > 1 else ""
    return f"{value:.{digits}f}{spread}"


def _ratio(rows: dict, slow: str, fast: str) -> str:
    a, b = rows.get(slow, {}).get("seconds"), rows.get(fast, {}).get("seconds")
    return "n/a" if not a or not b else f"{a / b:.1f}x"


def table(setting: str, rows: dict) -> str:
    """One setting's tables.

    Args:
        setting: A name from :data:`SETTINGS`.
        rows: Its rows, by name.

    Returns:
        The markdown.
    """
    lines = []
    if rows:
        values = SETTINGS[setting]
        detector = rows.get("detector", {})
        size = "x".join(str(s) for s in detector.get("input_size", values["anomalib_size"]))
        lines += [
            "",
            f"**{setting}**: PatchCore {values['backbone']} {' + '.join(LAYERS)}, {size} px, coreset {RATIO}, "
            f"batch {BATCH}; {values['n_train']} OK training images, {N_SCORE} images scored; no heatmaps; "
            "generated gravel images (colour 256 px JPEGs, `solution/make_sample_data.py`), not the holdout itself",
            "",
            "| whole process (start to exit, imports included) | ours s: median (runs) | plain anomalib s | ratio |",
            "|---|---|---|---|",
            f"| train (the bundled plan: export to OpenVINO and ONNX with their parity gates) | "
            f"{_cell(rows, 'ours train')} | {_cell(rows, 'anomalib train')} | "
            f"{_ratio(rows, 'anomalib train', 'ours train')} |",
            f"| train, no export (anomalib's side exports nothing either) | {_cell(rows, 'ours train, no export')} | "
            f"{_cell(rows, 'anomalib train')} | {_ratio(rows, 'anomalib train', 'ours train, no export')} |",
            f"| inference, {N_SCORE} images | {_cell(rows, 'ours inference')} | "
            f"{_cell(rows, 'anomalib inference')} | {_ratio(rows, 'anomalib inference', 'ours inference')} |",
            f"| inference, one image (process start to summary) | {_cell(rows, 'ours first image')} | | |",
        ]
        if "baseline train" in rows:
            lines.append(
                f"| train with the code before the change | {_cell(rows, 'baseline train')} | | "
                f"{_ratio(rows, 'baseline train', 'ours train')} of before |"
            )
        if detector and "error" not in detector:
            backbone = detector["backbone_images_per_s"]
            lines += [
                "",
                f"| Detector.predict ({detector['scorer']}) | images/s | of the folded backbone's {backbone:.1f} |",
                "|---|---|---|",
                f"| from files (decode included) | {detector['files_images_per_s']:.1f} | "
                f"{detector['files_images_per_s'] / backbone:.0%} |",
                f"| from decoded images | {detector['decoded_images_per_s']:.1f} | "
                f"{detector['decoded_images_per_s'] / backbone:.0%} |",
            ]
        errors = [f"{name}: {row['error']}" for name, row in rows.items() if "error" in row]
        lines += [f"\nErrors: {'; '.join(errors)}"] if errors else []
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--anomalib",
        choices=["all", "inference", "none"],
        default="all",
        help="plain anomalib runs: fit and predict, predict only (with our trained bank), or none",
    )
    parser.add_argument("--baseline", type=Path, help="another checkout (with its .venv) to time training with")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each of our processes (median reported)")
    add_report_options(parser, "Speed: scoring engine", "BENCHMARKS.md section title, ', <setting> setting' added")
    add_worker_options(parser)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "anomalib":
            row = worker_anomalib(rest[0], Path(rest[1]), rest[2], Path(rest[3]))
        else:
            row = worker_detector(Path(rest[0]), Path(rest[1]))
        answer(args.out, row)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.engine_speed")
    for setting in args.settings:  # one section per setting: running one setting keeps the other's
        rows = measure(setting, args.anomalib, args.baseline, args.repeats)
        text = f"Command: `{command}`\n" + table(setting, rows)
        write_section(args.benchmarks_file, f"{args.section}, {setting} setting", text)


if __name__ == "__main__":
    main()
