"""The slim edge install: its size on disk and a cold single-image inference with it, beside the full install.

A fresh venv built by ``edge_install.py`` (``requirements-edge.txt`` only, no torch, then pruned). Models:
each registered model trained with the bundled plan's settings on the engine benchmark's 200-image gravel set
(generated colour 256 px JPEGs), its export kept in ``model.tar.gz``. Measured, each a whole process from
start to exit (three runs, median): ``main.py --mode inference`` on one image with the slim venv
(``runtime: onnxruntime``) and with the full ``.venv`` (``runtime: torch``), and the 300-image scoring of both
with the labels compared.

    .venv/bin/python -m benchmarks.edge_install [--models patchcore fastflow padim] [--runtime openvino]

``--runtime openvino`` builds the slim venv from ``requirements-edge-openvino.txt`` and runs the OpenVINO graph
instead (section "Edge install: OpenVINO"). Rows go to ``results/edge-install-rows.jsonl``; the table to
``BENCHMARKS.md`` ("Edge install").
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import edge_install
from benchmarks.engine_speed import build_data
from benchmarks.harness.measure import main_py, timed
from benchmarks.harness.paths import RESULTS, ROOT
from benchmarks.harness.plans import bundled_plan, inference_args, save_plan, set_data, train_args
from benchmarks.harness.report import add_report_options, write_section
from benchmarks.harness.rows import append_rows, utc_stamp

WORK = RESULTS / "edge-install"
EDGE_VENV = WORK / "venv"
# runtime -> (requirements file, its graph's key in parity.json, BENCHMARKS.md section)
EDGES = {
    "onnxruntime": ("requirements-edge.txt", "onnx", "Edge install"),
    "openvino": ("requirements-edge-openvino.txt", "openvino", "Edge install: OpenVINO"),
}


def folder_mb(path: Path) -> float:
    """Size on disk of a folder in MB (``du``: blocks, not file lengths)."""
    done = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0]) / 1024


def make_venv(requirements: str) -> dict:
    """A fresh venv with an edge requirements file only; seconds to build, MB on disk, whether torch is absent."""
    shutil.rmtree(EDGE_VENV, ignore_errors=True)
    started = datetime.now(UTC)
    runtime = next(name for name, file in edge_install.REQUIREMENTS.items() if file == requirements)
    freed = edge_install.install(EDGE_VENV, runtime)
    seconds = (datetime.now(UTC) - started).total_seconds()
    probe = subprocess.run(
        [str(EDGE_VENV / "bin/python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        "install_s": seconds,
        "mb": folder_mb(EDGE_VENV),
        "torch_absent": probe.stdout.strip() == "True",
        "requirements": requirements,
        "pruned_mb": freed / 2**20,
    }


def write_plan(data: Path, folder: Path, model: str, inference: str, runtime: str, archive: Path | None) -> Path:
    """The bundled plan with one model, scoring ``data / inference`` with a runtime (no heatmaps).

    Args:
        data: A :func:`~benchmarks.engine_speed.build_data` folder.
        folder: The project folder (the trained model's archive goes to its ``saved/``).
        model: The model.
        inference: The folder to score, in ``data``.
        runtime: The inference step's runtime.
        archive: The trained ``model.tar.gz`` to load (None: the project's own model).

    Returns:
        The plan file (``plan-<inference>-<runtime>.yaml``).
    """
    plan = set_data(
        bundled_plan(),
        data / "train",
        data / inference,
        save_train_artifacts_path=str(folder / "saved"),
        load_model_path=str(archive) if archive else None,
    )
    train_args(plan)["model_name"] = model
    inference_args(plan).update(save_anomaly_maps=False, runtime=runtime)
    return save_plan(plan, folder, f"plan-{inference}-{runtime}.yaml")


def _main_py(python: Path, mode: str, plan: Path) -> list[str]:
    return main_py("--mode", mode, "--config", str(plan), python=python)


def measure_model(data: Path, model: str, runtime: str) -> dict:
    """Train one model (export kept), then cold one-image and 300-image runs on both installs."""
    folder = WORK / model
    shutil.rmtree(folder, ignore_errors=True)
    train = timed(_main_py(ROOT / ".venv/bin/python", "train", write_plan(data, folder, model, "one", "torch", None)))
    if "error" in train:
        return {"model": model, "error": train["error"]}
    parity = json.loads((folder / "train_artifacts/models/export/parity.json").read_text()).get(EDGES[runtime][1], {})
    archive = folder / "saved" / "model.tar.gz"
    row: dict = {"model": model, "train_s": train["seconds"], "parity": parity}
    for name, python, side in (
        ("edge", EDGE_VENV / "bin/python", runtime),
        ("full", ROOT / ".venv/bin/python", "torch"),
    ):
        one = write_plan(data, folder / name, model, "one", side, archive)
        runs = [timed(_main_py(python, "inference", one)) for _ in range(3)]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            row[name] = {"error": errors[0]}
            continue
        many = write_plan(data, folder / name, model, "score", side, archive)
        batch = timed(_main_py(python, "inference", many))
        output = pd.read_csv(folder / name / "inference_artifacts/output/output.csv")
        row[name] = {
            "cold_one_s": statistics.median(r["seconds"] for r in runs),
            "runs": [r["seconds"] for r in runs],
            "score_300_s": batch.get("seconds"),
            "labels": list(output["pred_label"]),
            "anomaly_score": list(output["anomaly_score"]),
        }
    if "labels" in row.get("edge", {}) and "labels" in row.get("full", {}):
        edge, full = row["edge"], row["full"]
        row["labels_identical"] = edge["labels"] == full["labels"]
        row["max_score_difference"] = max(
            abs(a - b) for a, b in zip(edge["anomaly_score"], full["anomaly_score"], strict=True)
        )
        for side in (edge, full):
            side.pop("labels"), side.pop("anomaly_score")
    return row


def table(venv: dict, rows: list[dict], runtime: str) -> str:
    """The BENCHMARKS.md section."""
    option = "" if runtime == "onnxruntime" else f" --runtime {runtime}"
    lines = [
        f"Command: `python -m benchmarks.edge_install{option}`",
        "",
        f"Slim install (`python3 edge_install.py --runtime {runtime}`: `{venv['requirements']}` in a fresh venv, "
        f"{venv['install_s']:.0f} s to build, {venv['pruned_mb']:.0f} MB of unused plugins, frontends and test "
        f"suites pruned): **{venv['mb']:.0f} MB** on disk (target 400 MB), torch "
        f"{'absent' if venv['torch_absent'] else 'PRESENT'}. "
        "Each model trained with the bundled plan's settings on 200 generated gravel images (colour 256 px "
        f"JPEGs); its export ({runtime} fp32, gated on the {rows[0].get('parity', {}).get('images', '?')} validation "
        "images: 20 OK, 10 with defects) in `model.tar.gz`; inference without heatmaps, whole processes start to "
        "exit, one image: median of three.",
        "",
        f"| model | gate: normalised diff | gate: export / torch images/s | cold one image, slim ({runtime}) s "
        "| cold one image, full (torch) s | 300 images slim s | 300 images full s | labels slim = full "
        "| max score diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row or "error" in row.get("edge", {}) or "error" in row.get("full", {}):
            reason = row.get("error") or row.get("edge", {}).get("error") or row.get("full", {}).get("error")
            lines.append(f"| {row['model']} | error: {str(reason)[:120]} | | | | | | | |")
            continue
        parity, edge, full = row["parity"], row["edge"], row["full"]
        lines.append(
            f"| {row['model']} | {parity.get('normalized_max_abs_difference', float('nan')):.1e} | "
            f"{parity.get('export_images_per_s')} / {parity.get('torch_images_per_s')} | {edge['cold_one_s']:.2f} | "
            f"{full['cold_one_s']:.2f} | {edge['score_300_s']:.1f} | {full['score_300_s']:.1f} | "
            f"{'yes' if row['labels_identical'] else 'NO'} | {row['max_score_difference']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Build the slim venv, measure each model, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["patchcore", "fastflow", "padim"])
    parser.add_argument("--runtime", choices=sorted(EDGES), default="onnxruntime")
    add_report_options(parser)
    args = parser.parse_args()
    data = build_data("default")
    requirements, _, section = EDGES[args.runtime]
    venv = make_venv(requirements)
    rows = [measure_model(data, model, args.runtime) for model in args.models]
    stamp = utc_stamp()
    append_rows(RESULTS / "edge-install-rows.jsonl", [{**row, "finished": stamp} for row in [{"venv": venv}, *rows]])
    write_section(args.benchmarks_file, section, table(venv, rows, args.runtime))


if __name__ == "__main__":
    main()
