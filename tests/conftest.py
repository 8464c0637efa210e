"""Shared fixtures: tiny generated datasets and plans in temporary project folders."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLAN = ROOT / "experimental_plan.yaml"


def texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth periodic texture with small random shifts and noise: the 'good' product."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = rng.uniform(-1, 1, 2)
    base = 128 + 50 * np.sin((x + dx) / 3.0) * np.cos((y + dy) / 4.0)
    image = np.stack([base, base * 0.9 + 10, base * 0.8 + 20], axis=-1)
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def defect(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A dark square blotch at a random place: the 'bad' product."""
    out = image.copy()
    size = image.shape[0]
    y, x = rng.integers(8, size - 20, 2)
    out[y : y + 12, x : x + 12] = rng.integers(0, 30)
    return out


def make_dataset(
    folder: Path, n_train: int = 24, n_valid_ok: int = 8, n_valid_ng: int = 6, seed: int = 0, size: int = 64
) -> Path:
    """Write good/bad PNGs and a train.csv with a split column into ``folder``."""
    rng = np.random.default_rng(seed)
    rows = []
    (folder / "good").mkdir(parents=True, exist_ok=True)
    (folder / "bad").mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_valid_ok):
        Image.fromarray(texture(rng, size)).save(folder / "good" / f"g{i:03d}.png")
        rows.append({"label": "good", "image_path": f"good/g{i:03d}.png", "split": "train" if i < n_train else "valid"})
    for i in range(n_valid_ng):
        Image.fromarray(defect(rng, texture(rng, size))).save(folder / "bad" / f"b{i:03d}.png")
        rows.append({"label": "bad", "image_path": f"bad/b{i:03d}.png", "split": "valid"})
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return folder


def make_inference_folder(folder: Path, n_ok: int = 3, n_ng: int = 2, seed: int = 1, size: int = 64) -> Path:
    """Write images only (no CSV) for inference."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_ok):
        Image.fromarray(texture(rng, size)).save(folder / f"ok_{i}.png")
    for i in range(n_ng):
        Image.fromarray(defect(rng, texture(rng, size))).save(folder / f"ng_{i}.png")
    return folder


def load_default_plan(tracking: bool = False) -> dict:
    """The bundled plan; experiment tracking off unless asked for (tests/test_tracking.py turns it on).

    Each tracked one-shot run starts a background logger process (MLflow's import alone is 1.4 s of CPU): on
    two cores, hundreds of tracked test runs would slow the whole suite down.
    """
    plan = yaml.safe_load(DEFAULT_PLAN.read_text(encoding="utf-8"))
    plan["control"] = [*(plan.get("control") or []), {"tracking": tracking}]
    return plan


def step_args(plan: dict, pipeline: str, step: str) -> dict:
    """The (mutable) args map of a step in a plan dict."""
    for entry in plan["user_parameters"]:
        if f"{pipeline}_pipeline" in entry:
            for item in entry[f"{pipeline}_pipeline"]:
                if item["step"] == step:
                    if not item.get("args"):
                        item["args"] = [{}]
                    return item["args"][0]
    raise KeyError(step)


def set_external(plan: dict, key: str, value: str | None) -> None:
    for entry in plan["external_path"]:
        if key in entry:
            entry[key] = value
            return
    plan["external_path"].append({key: value})


def write_plan(folder: Path, plan: dict, name: str = "experimental_plan.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def tiny_plan(model_name: str = "patchcore", tracking: bool = False, **train: object) -> dict:
    """The bundled plan on ``data/train`` and ``data/inference``, training a model on 64 x 64 images.

    Args:
        model_name: The model to train.
        tracking: Experiment tracking on.
        **train: More train args.

    Returns:
        The plan.
    """
    plan = copy.deepcopy(load_default_plan(tracking))
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/inference")
    step_args(plan, "train", "train").update({"img_size": [64, 64], "batch_size": 8, "model_name": model_name, **train})
    return plan


def trained_project(
    root: Path, model_name: str = "patchcore", tracking: bool = False, **train: object
) -> tuple[dict, Path]:
    """Tiny train data and a no-CSV inference folder in ``root``, trained and scored by ``main.py --mode all``.

    Args:
        root: The project folder.
        model_name: The model to train.
        tracking: Experiment tracking on.
        **train: More train args.

    Returns:
        The plan and its path.
    """
    import main

    make_dataset(root / "data" / "train")
    make_inference_folder(root / "data" / "inference")
    plan = tiny_plan(model_name, tracking, **train)
    path = write_plan(root, plan)
    assert main.main(["--mode", "all", "--config", str(path)]) == 0
    return plan, path


def python_lines(code: str) -> list[str]:
    """The lines a fresh interpreter prints for ``code`` (run from the repository root); it must exit 0."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def wait_ready(process, url: str, timeout: float = 120.0) -> None:
    """Wait until a server process answers ``url`` with 200 (fail with its output if it exits or never does)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stdout.read()[-2000:] if process.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("server did not start")


@pytest.fixture
def project(tmp_path: Path) -> dict:
    """A project folder with tiny train data, a no-CSV inference folder and a fast plan."""
    make_dataset(tmp_path / "data" / "train")
    make_inference_folder(tmp_path / "data" / "inference")
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/inference")
    train = step_args(plan, "train", "train")
    train.update({"img_size": [64, 64], "batch_size": 8, "max_epochs": 2})
    return {"root": tmp_path, "plan": plan}


@pytest.fixture(autouse=True)
def _independent_logging():
    """main.main() stops the framework loggers from propagating; undo that so caplog works in every test."""
    yield
    import logging

    for name in ("alo", "assets"):
        logging.getLogger(name).propagate = True


def asgi_get(app, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET through an ASGI app in this process (no server, no client library): status, headers and body."""
    import asyncio

    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "root_path": ""}  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return (
        start["status"],
        answer_headers,
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )
