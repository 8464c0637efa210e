"""History pruning in a long-running process: cached listings stay exact across its own and others' changes."""

from __future__ import annotations

import time

from alo.artifacts import ArtifactStore, prune_history


def _run(folder, name, size):
    (folder / name / "log").mkdir(parents=True)
    (folder / name / "log" / "data.bin").write_bytes(b"x" * size)


def test_cached_listing_sees_own_archives_and_outside_changes(tmp_path):
    history = tmp_path / "history"
    inference = history / "inference"
    inference.mkdir(parents=True)
    mb = 1024 * 1024
    for i in range(3):
        _run(inference, f"2026010{i}T000000Z-a-vad", mb)
    assert prune_history(history, 5) == []  # 3 MB: listed and cached
    store = ArtifactStore(tmp_path, "inference", "20260105T000000Z-b-vad")
    staged = tmp_path / "staged"
    (staged / "log").mkdir(parents=True)
    (staged / "log" / "data.bin").write_bytes(b"x" * mb)
    store._archive(staged, "20260105T000000Z-b-vad")  # this process's own change keeps the listing current
    time.sleep(0.01)
    _run(inference, "20260106T000000Z-c-vad", 2 * mb)  # another process's run: the folder's mtime moves
    removed = prune_history(history, 5)  # 6 MB now: the oldest goes
    assert [run.name for run in removed] == ["20260100T000000Z-a-vad"]
    assert sorted(p.name for p in inference.iterdir()) == [
        "20260101T000000Z-a-vad",
        "20260102T000000Z-a-vad",
        "20260105T000000Z-b-vad",
        "20260106T000000Z-c-vad",
    ]
    assert prune_history(history, 5) == []  # 5 MB: within the cap, nothing more
    removed = prune_history(history, 3)
    assert [run.name for run in removed] == ["20260101T000000Z-a-vad", "20260102T000000Z-a-vad"]


def test_oldest_runs_go_first_across_pipelines_and_the_kept_run_stays(tmp_path):
    history = tmp_path / "history"
    mb = 1024 * 1024
    names = {"train": ["20260102T000000Z-a-vad", "20260104T000000Z-a-vad"], "inference": ["20260101T000000Z-b-vad"]}
    for pipeline, runs in names.items():
        for name in runs:
            _run(history / pipeline, name, mb)
    _run(history / "inference", "20260100T000000Z-c-vad-error", mb)  # the oldest, but the one to keep
    keep = history / "inference" / "20260100T000000Z-c-vad-error"
    removed = prune_history(history, 2, keep=keep)
    assert [(run.parent.name, run.name) for run in removed] == [
        ("inference", "20260101T000000Z-b-vad"),
        ("train", "20260102T000000Z-a-vad"),
    ]
    assert keep.is_dir() and (history / "train" / "20260104T000000Z-a-vad").is_dir()
