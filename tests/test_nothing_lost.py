"""Killed or concurrent runs never lose the last good artifacts, and the next run needs no clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, step_args, write_plan

import main
from alo.artifacts import ArtifactStore, project_lock

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_during_training_leaves_earlier_artifacts_byte_identical(project):
    root, plan = project["root"], project["plan"]
    path = write_plan(root, plan)
    assert main.main(["--mode", "all", "--config", str(path)]) == 0
    before = {name: snapshot(root / name) for name in ("train_artifacts", "inference_artifacts")}

    train = step_args(plan, "train", "train")
    train.update({"model_name": "fastflow", "max_epochs": 1000, "monitor_metric": "loss"})
    train["model_parameters"] = {"early_stopping_patience": 1000}
    path = write_plan(root, plan)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--mode", "all", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def training_has_epochs() -> bool:
            assert process.poll() is None, "the training run ended before it could be killed"
            logs = list((root / ".alo/staging").glob("train-*/log/pipeline.log"))
            return bool(logs) and "epoch 2/1000" in logs[0].read_text(encoding="utf-8")

        wait_for(training_has_epochs, timeout=900)  # returns at epoch 2; the margin is for a loaded machine
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    for name, files in before.items():
        assert snapshot(root / name) == files, f"{name} changed"

    train.update({"model_name": "patchcore"})
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    killed = list((root / "history/train").glob("*-error"))
    assert len(killed) == 1 and (killed[0] / "log/process.log").is_file(), "the killed run is kept with its logs"
    assert not list((root / ".alo/staging").glob("train-*"))
    record = json.loads((root / "train_artifacts/log/experimental_history.json").read_text())
    assert record["status"] == "success"


def test_interrupted_promotion_is_finished_or_undone(tmp_path):
    final, previous = tmp_path / "train_artifacts", tmp_path / ".alo/previous-train"
    previous.mkdir(parents=True)
    (previous / "old.txt").write_text("old")
    store = ArtifactStore(tmp_path, "train", "20260101T000000Z-aaaaaa-vad")
    store.recover()  # killed between the two renames: the old artifacts come back
    assert (final / "old.txt").read_text() == "old" and not previous.exists()

    previous.mkdir(parents=True)
    (previous / "older.txt").write_text("older")
    store.recover()  # killed after the swap, before the backup: the replaced run goes to history
    assert (final / "old.txt").read_text() == "old"
    (kept,) = (tmp_path / "history/train").iterdir()
    assert kept.name.startswith("unknown-") and (kept / "older.txt").read_text() == "older"


def test_concurrent_run_is_refused(project, capsys):
    root, plan = project["root"], project["plan"]
    path = write_plan(root, plan)
    with project_lock(root):
        assert main.main(["--mode", "train", "--config", str(path)]) == 2
    assert "another run is using" in capsys.readouterr().err
    assert not (root / "train_artifacts").exists()
    assert main.main(["--mode", "train", "--config", str(path)]) == 0, "the lock is released afterwards"


def test_lock_file_names_the_holder(tmp_path):
    lock = tmp_path / ".alo" / "lock"
    lock.parent.mkdir()
    lock.write_text("99999999 (an earlier, longer pid)")
    with project_lock(tmp_path):
        assert lock.read_text() == str(os.getpid())
    before = lock.stat().st_mtime_ns
    with project_lock(tmp_path):  # the same process again (the edge loop, per request): nothing rewritten
        assert lock.read_text() == str(os.getpid())
    assert lock.stat().st_mtime_ns == before


def test_a_child_forked_during_a_run_does_not_keep_the_project_locked(tmp_path):
    """OpenVINO's converter forks a telemetry child that can outlive the run; the lock must not go with it."""
    started_r, started_w = os.pipe()
    leave_r, leave_w = os.pipe()
    with project_lock(tmp_path):
        child = os.fork()
        if child == 0:  # the child: say it runs, wait until the parent has locked again, leave without clean-up
            os.write(started_w, b"x")
            os.read(leave_r, 1)
            os._exit(0)
        assert os.read(started_r, 1) == b"x"
    try:
        with project_lock(tmp_path):  # the child is still alive here
            assert os.waitpid(child, os.WNOHANG) == (0, 0)
    finally:
        os.write(leave_w, b"x")
        os.waitpid(child, 0)
        for fd in (started_r, started_w, leave_r, leave_w):
            os.close(fd)
