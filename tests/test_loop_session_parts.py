"""The resident loop's parts at line rate: session figures, background pictures, history capped by count."""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

from alo.artifacts import ArtifactStore, prune_count
from alo.asset import DeferredFile, DeferredWork
from alo.background import BackgroundFiles
from alo.loop_metrics import RequestRows, SessionMetrics, read_rows


def test_session_figures_are_taken_every_n_requests_with_quantiles_rates_and_sources():
    now = [0.0]
    metrics = SessionMetrics(every=3, seconds=60.0, clock=lambda: now[0])
    metrics.sources.append(lambda: {"drift": 0.25})  # the hook a later statistic uses
    metrics.add(0.050, RequestRows([0.1], ng=0, ood=0))
    metrics.add(0.070, RequestRows([0.9], ng=1, ood=1))
    assert not metrics.due()
    metrics.add(0.060, None, failed=True)
    assert metrics.due()
    step, figures = metrics.take()
    assert step == 3
    assert figures["requests"] == 3 and figures["failures"] == 1 and figures["interval_requests"] == 3
    assert figures["ng_rate"] == 0.5 and figures["ng_images"] == 1 and figures["ood_images"] == 1
    assert figures["score_p50"] in (0.1, 0.9) and figures["score_max"] == 0.9
    assert figures["latency_p50_ms"] == 60.0 and figures["latency_p95_ms"] == 70.0
    assert figures["drift"] == 0.25
    metrics.add(0.040, RequestRows([0.2], ng=0, ood=0))
    assert not metrics.due()
    now[0] = 61.0  # a slow line: the figures still go out every minute
    assert metrics.due()
    step, figures = metrics.take()
    assert step == 4 and figures["interval_requests"] == 1 and figures["requests"] == 4 and figures["ng_rate"] == 0


def test_a_requests_rows_are_read_from_its_table_and_the_ng_name_from_its_summary(tmp_path):
    table = tmp_path / "output.csv"
    table.write_text("image_path,anomaly_score,pred_label,in_distribution\na.png,0.8,bad,False\nb.png,0.6,bad,True\n")
    rows, ng_name = read_rows(table, {"probability": {"bad": 0.7, "good": 0.3}}, None)
    assert ng_name == "bad" and rows.scores == [0.8, 0.6] and rows.ng == 2 and rows.ood == 1
    table.write_text("image_path,anomaly_score,pred_label\na.png,0.5,good\n")
    rows, still = read_rows(table, {"probability": {"bad": 0.5, "good": 0.5}}, ng_name)  # 0.5 tells nothing
    assert still == "bad" and rows.ng == 0 and rows.ood == 0


def test_background_pictures_land_in_their_runs_folder_after_it_moved(tmp_path):
    files = BackgroundFiles(capacity=4, nice=0)
    release = threading.Event()
    first = tmp_path / "first"
    first.mkdir()
    files.submit(
        first, [(PurePosixPath("a/b/one.png"), DeferredFile(first / "x", lambda: release.wait(30) and b"1", ()))]
    )
    run = tmp_path / "inference_artifacts"
    run.mkdir()
    files.submit(run, [(PurePosixPath("extra_output/images/two.png"), DeferredFile(run / "x", bytes, (b"22",)))])
    moved = tmp_path / "history" / "run-1"
    moved.parent.mkdir()
    run.replace(moved)  # a later request promoted: this run went to history before its picture was written
    assert not (moved / "extra_output").exists()  # the picture waits for the thread: nobody waited for it
    release.set()
    assert files.drain(30)
    assert (moved / "extra_output" / "images" / "two.png").read_bytes() == b"22"
    assert (first / "a" / "b" / "one.png").read_bytes() == b"1"
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "inference_artifacts").exists()
    assert (files.written, files.dropped, files.failed) == (2, 0, 0)
    files.close(5)


def test_background_pictures_beyond_the_capacity_drop_the_oldest_and_count_them(tmp_path):
    files = BackgroundFiles(capacity=1, nice=0)
    busy, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        busy.set()
        release.wait(30)
        return b"b"

    files.submit(tmp_path, [(PurePosixPath("busy.png"), DeferredFile(tmp_path, slow, ()))])
    assert busy.wait(30)
    for name in ("old", "new"):  # the thread is busy: one may wait, so "old" is dropped for "new"
        files.submit(tmp_path, [(PurePosixPath(f"{name}.png"), DeferredFile(tmp_path, bytes, (name.encode(),)))])
    release.set()
    files.close(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.png", "new.png"]
    assert (files.written, files.dropped) == (2, 1)


def test_a_batch_run_writes_its_deferred_files_before_promotion_and_a_resident_one_may_take_them(tmp_path):
    work = DeferredWork(limit=2)
    made = [DeferredFile(tmp_path / "f" / f"{i}.png", bytes, (b"x",)) for i in range(3)]
    for file in made:
        work.add_file(file)
    assert (tmp_path / "f" / "0.png").is_file()  # beyond the limit the oldest is written at once
    assert [f.path.name for f in work.take_files()] == ["1.png", "2.png"] and len(work) == 0
    work.add_file(DeferredFile(tmp_path / "g.png", bytes, (b"y",)))
    work.run()
    assert (tmp_path / "g.png").read_bytes() == b"y"


def _runs(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name / "log").mkdir(parents=True)


def test_history_is_capped_by_count_oldest_first_keeping_a_failed_run(tmp_path):
    inference = tmp_path / "history" / "inference"
    _runs(inference, [f"2026010{i}T000000Z-a-vad" for i in range(6)])
    removed = prune_count(inference, 4)
    assert [p.name for p in removed] == ["20260100T000000Z-a-vad", "20260101T000000Z-a-vad"]
    keep = inference / "20260102T000000Z-a-vad"
    removed = prune_count(inference, 3, keep=keep)
    assert [p.name for p in removed] == ["20260103T000000Z-a-vad"] and keep.is_dir()
    store = ArtifactStore(tmp_path, "inference", "20260109T000000Z-b-vad")
    staging = store.begin()
    (staging / "log" / "experimental_history.json").write_text('{"id": "20260109T000000Z-b-vad"}')
    (tmp_path / "inference_artifacts" / "log").mkdir(parents=True)
    (tmp_path / "inference_artifacts" / "log" / "experimental_history.json").write_text('{"id": "20260108T000000Z-c"}')
    store.promote(True, 1000, keep_runs=3)
    assert len(list(inference.iterdir())) == 3 and (inference / "20260108T000000Z-c").is_dir()


def test_the_pictures_of_a_run_pruned_before_the_thread_got_to_them_are_dropped(tmp_path):
    files = BackgroundFiles(capacity=4, nice=0)
    busy, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        busy.set()
        release.wait(30)
        return b"b"

    files.submit(tmp_path, [(PurePosixPath("busy.png"), DeferredFile(tmp_path, slow, ()))])
    assert busy.wait(30)
    pruned = tmp_path / "history" / "run-0"
    pruned.mkdir(parents=True)
    files.submit(pruned, [(PurePosixPath(f"{i}.png"), DeferredFile(pruned, bytes, (b"x",))) for i in range(2)])
    pruned.rmdir()
    release.set()
    files.close(30)
    assert (files.written, files.dropped, files.failed) == (1, 2, 0) and not pruned.exists()


def test_a_resident_process_moves_pruned_runs_aside_and_its_thread_deletes_them(tmp_path):
    inference = tmp_path / "history" / "inference"
    _runs(inference, [f"2026010{i}T000000Z-a-vad" for i in range(3)])
    handed: list[Path] = []
    removed = prune_count(inference, 2, remove=handed.append)
    trash = tmp_path / ".alo" / "trash"
    assert [p.name for p in removed] == ["20260100T000000Z-a-vad"] and not removed[0].exists()
    assert handed == [trash / "inference-20260100T000000Z-a-vad"] and handed[0].is_dir()  # one rename, not deleted
    files = BackgroundFiles(nice=0)
    files.remove(handed[0])
    assert files.drain(30) and not handed[0].exists() and len(list(inference.iterdir())) == 2
    files.close(5)


def test_an_ng_parts_picture_is_kept_before_ok_ones_when_the_thread_must_drop(tmp_path):
    files = BackgroundFiles(capacity=1, nice=0)
    busy, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        busy.set()
        release.wait(30)
        return b"b"

    files.submit(tmp_path, [(PurePosixPath("busy.png"), DeferredFile(tmp_path, slow, ()))])
    assert busy.wait(30)
    for name, ng in (("ng", True), ("ok", False), ("ok2", False)):
        files.submit(tmp_path, [(PurePosixPath(f"{name}.png"), DeferredFile(tmp_path, bytes, (b"x",), first=ng))])
    release.set()
    files.close(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.png", "ng.png"]
    assert (files.written, files.dropped) == (2, 2)
