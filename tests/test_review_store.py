"""The review store (vad/review): keeping scored images within the cap, the queue's order and the verdicts."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vad.review.entries import INDEX, ScoredImage, read_index
from vad.review.feedback import COLUMNS, FEEDBACK, Verdict, read_feedback, reviewed_ids, write_verdicts
from vad.review.queue import DISAGREEMENT, NEAR_THRESHOLD, OUT_OF_DISTRIBUTION, most_informative, review_queue
from vad.review.store import MB, ImageToKeep, ReviewStore


def picture(seed: int, kind: str = "PNG", size: int = 32) -> bytes:
    """A tiny random picture, encoded (random pixels: every seed gives other bytes, of about the same size)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


def scored(name: str, score: float = 0.3, **more: object) -> ScoredImage:
    return ScoredImage(source=name, anomaly_score=score, pred_label="good" if score < 0.5 else "bad", **more)


def keep_one(store: ReviewStore, seed: int, name: str = "part.png", **more: object):
    return store.keep([ImageToKeep(scored(name, **more), data=picture(seed))], "http", "train-1")


def test_an_image_is_copied_under_its_id_and_indexed_with_every_field(tmp_path):
    source = tmp_path / "in" / "cam 1.png"
    source.parent.mkdir()
    source.write_bytes(picture(0))
    store = ReviewStore(tmp_path / "review")
    score = ScoredImage(str(source), 0.62, "bad", raw_score=3.5, certainty=0.04, ood_score=0.4, in_distribution=True)
    report = store.keep([ImageToKeep(score, path=source)], "inference", "20261207T000000Z-ab-vad")
    (entry,) = report.kept
    assert (store.folder / entry.image).read_bytes() == source.read_bytes(), "byte for byte"
    assert entry.image == f"images/{entry.id}.png"
    (line,) = (store.folder / INDEX).read_text().splitlines()
    assert line.startswith('{"id":"') and f'"source":"{source}"' in line
    assert read_index(store.folder) == [entry]
    assert (entry.origin, entry.anomaly_score, entry.raw_score, entry.pred_label) == ("inference", 0.62, 3.5, "bad")
    assert (entry.certainty, entry.ood_score, entry.in_distribution, entry.label) == (0.04, 0.4, True, None)
    assert entry.train_id == "20261207T000000Z-ab-vad" and entry.bytes == source.stat().st_size
    assert datetime.fromisoformat(entry.time).tzinfo is not None
    assert store.image_file(entry.id) == (store.folder / entry.image).resolve()


def test_names_never_come_from_the_source_and_formats_come_from_the_content(tmp_path):
    store = ReviewStore(tmp_path / "review")
    nasty = ["../../etc/passwd.png", "C:\\x\\..\\a.png", "<img src=x>.png", "", "\n.png", "a.png\x00.sh"]
    images = [ImageToKeep(scored(name), data=picture(i)) for i, name in enumerate(nasty)]
    jpeg_named_png = ImageToKeep(scored("photo.png"), data=picture(50, "JPEG"))
    tiff = ImageToKeep(scored("scan.tif"), data=picture(51, "TIFF"))
    report = store.keep([*images, jpeg_named_png, tiff, ImageToKeep(scored("notes.png"), data=b"text")], "http", None)
    assert report.unreadable == 1 and len(report.kept) == len(nasty) + 2
    images_folder = (store.folder / "images").resolve()
    for entry in report.kept:
        path = store.folder / entry.image
        assert path.resolve().parent == images_folder and path.name.startswith(entry.id)
    assert [entry.source for entry in report.kept[: len(nasty)]] == nasty, "recorded as text"
    assert report.kept[-2].image.endswith(".jpg"), "a JPEG by its content, whatever its name"
    assert (store.folder / report.kept[-2].image).read_bytes() == jpeg_named_png.data
    assert report.kept[-1].image.endswith(".png"), "a TIFF is kept as a lossless PNG"
    with Image.open(store.folder / report.kept[-1].image) as kept, Image.open(io.BytesIO(tiff.data or b"")) as original:
        assert np.array_equal(np.asarray(kept.convert("RGB")), np.asarray(original.convert("RGB")))
    assert store.image_file("../index") is None and store.image_file("20260101T000000-00000000") is None


def test_the_same_picture_is_kept_once(tmp_path):
    store = ReviewStore(tmp_path / "review")
    assert len(keep_one(store, 1).kept) == 1
    again = keep_one(store, 1, name="other-name.png")
    assert again.kept == [] and again.duplicates == 1
    assert len(store.entries()) == 1


def test_the_cap_prunes_the_oldest_unreviewed_first_and_never_a_reviewed_image(tmp_path):
    size = len(picture(0))
    store = ReviewStore(tmp_path / "review", size_mb=3.5 * size / MB)  # room for three
    first, second, third = (keep_one(store, seed).kept[0] for seed in range(3))
    write_verdicts(store.folder, [Verdict(first, is_ng=False)], "good", "bad")
    fourth = keep_one(store, 3).kept[0]
    assert fourth is not None
    assert [e.id for e in store.entries()] == [first.id, third.id, fourth.id], "the oldest unreviewed went"
    assert not (store.folder / second.image).exists() and (store.folder / first.image).exists()
    write_verdicts(store.folder, [Verdict(third, True), Verdict(fourth, False)], "good", "bad")
    full = keep_one(store, 4)
    assert full.kept == [] and full.no_room == 1, "the reviewed images fill the cap: nothing is pruned"
    assert [e.id for e in store.entries()] == [first.id, third.id, fourth.id]
    assert sorted(p.name for p in (store.folder / "images").iterdir()) == sorted(
        Path(e.image).name for e in (first, third, fourth)
    )


def test_a_cap_of_zero_keeps_nothing(tmp_path):
    store = ReviewStore(tmp_path / "review", size_mb=0)
    assert keep_one(store, 0).kept == []
    assert not store.folder.exists()


def test_a_torn_last_line_is_ignored_and_cut_off_by_the_next_write(tmp_path):
    store = ReviewStore(tmp_path / "review")
    first = keep_one(store, 0).kept[0]
    index = store.folder / INDEX
    with index.open("a") as handle:
        handle.write('["not", "an", "entry"]\n{"id":"../x","image":"a.png","anomaly_score":0.5}\n')
        handle.write('{"id":"20261207T000000-abcdef00","image":"images/a.png","anomaly_score":"high","bytes":"x"}\n')
        handle.write('{"id":"20261207T000000-abcdef02","image":"images/b.png","anomaly_score":0.1,"source":5}\n')
        handle.write('{"id":"20261207T000000-abcdef01","ti')  # a process killed mid-write
    assert [e.id for e in store.entries()] == [first.id]
    second = keep_one(store, 1).kept[0]
    assert [e.id for e in store.entries()] == [first.id, second.id]
    lines = index.read_text().splitlines()
    assert len(lines) == 6 and '"ti' not in lines[4] and lines[-1].startswith(f'{{"id":"{second.id}"'), "torn tail cut"
    write_verdicts(store.folder, [Verdict(first, True)], "good", "bad")
    with (store.folder / FEEDBACK).open("a") as handle:
        handle.write("good,images/x.png,2026-")
    assert list(read_feedback(store.folder)["review_id"]) == [first.id]
    write_verdicts(store.folder, [Verdict(second, False)], "good", "bad")
    assert list(read_feedback(store.folder)["review_id"]) == [first.id, second.id]


def test_threads_keeping_at_once_lose_no_line_and_break_none(tmp_path):
    store = ReviewStore(tmp_path / "review")
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            for seed in range(start, start + 10):
                own = ReviewStore(tmp_path / "review")  # each its own object: the lock is the folder's
                own.keep([ImageToKeep(scored(f"{seed}.png"), data=picture(seed))], "http", None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(100 * t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = store.entries()
    assert len(entries) == 60 and len({e.id for e in entries}) == 60
    assert len((store.folder / INDEX).read_text().splitlines()) == 60
    assert sorted(e.source for e in entries) == sorted(f"{100 * t + i}.png" for t in range(6) for i in range(10))


def test_the_queue_puts_disagreements_then_out_of_distribution_then_nearest_the_threshold(tmp_path):
    store = ReviewStore(tmp_path / "review")
    cases = [
        scored("far.png", 0.05),
        scored("near.png", 0.48),
        scored("ood.png", 0.1, ood_score=2.5, in_distribution=False),
        scored("labelled-agrees.png", 0.2, label="good"),
        scored("nearer.png", 0.51),
        scored("disagrees.png", 0.3, label="scratch"),  # NG by its label, OK by the model
        ScoredImage("rejected.png", 0.95, "rejected", ood_score=3.0, in_distribution=False, label="good"),
        scored("reviewed.png", 0.5),
    ]
    kept = store.keep([ImageToKeep(c, data=picture(i)) for i, c in enumerate(cases)], "inference", None).kept
    write_verdicts(store.folder, [Verdict(kept[-1], True)], "good", "bad")
    queue = review_queue(store.entries(), reviewed_ids(store.folder), "good", 0.5)
    assert [item.entry.source for item in queue] == [
        "disagrees.png",
        "ood.png",  # out of distribution, 0.40 from the threshold
        "rejected.png",  # out of distribution, 0.45 from it; a withheld verdict disagrees with nothing
        "nearer.png",
        "near.png",
        "labelled-agrees.png",
        "far.png",
    ]
    assert [item.tier for item in queue[:4]] == [DISAGREEMENT, OUT_OF_DISTRIBUTION, OUT_OF_DISTRIBUTION, NEAR_THRESHOLD]
    assert queue[0].reason == "labelled scratch but predicted good"
    assert queue[1].reason.startswith("out of distribution (ood_score 2.50)")
    assert queue[3].reason == "0.010 from the threshold 0.5"
    assert most_informative(cases, "good", 0.5, 3) == [5, 2, 6]


def test_verdicts_write_the_train_data_format_and_a_later_one_supersedes(tmp_path):
    store = ReviewStore(tmp_path / "review")
    first, second = (keep_one(store, seed, score=0.4 + seed / 10).kept[0] for seed in range(2))
    morning = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    write_verdicts(store.folder, [Verdict(first, False), Verdict(second, False)], "good", "bad", morning)
    write_verdicts(store.folder, [Verdict(first, True)], "good", "bad", datetime(2026, 12, 7, 10, 0, tzinfo=UTC))
    raw = pd.read_csv(store.folder / FEEDBACK)
    assert tuple(raw.columns) == COLUMNS and len(raw) == 3, "appended, never rewritten"
    latest = read_feedback(store.folder)
    assert list(latest["review_id"]) == [second.id, first.id]
    row = latest.set_index("review_id").loc[first.id]
    assert (row["label"], row["image_path"], row["pred_label"]) == ("bad", first.image, first.pred_label)
    assert row["verdict_time"] == "2026-12-07T10:00:00.000+00:00"
    assert row["anomaly_score"] == first.anomaly_score
    for relative in latest["image_path"]:
        assert (store.folder / relative).is_file(), "image_path is relative to the CSV's folder, as train data"
    assert read_feedback(tmp_path / "nothing").empty


def test_the_index_read_so_far_is_reread_when_the_file_is_rewritten_or_replaced(tmp_path):
    store = ReviewStore(tmp_path / "review")
    kept = [keep_one(store, seed).kept[0] for seed in range(3)]
    index = store.folder / INDEX
    assert [e.id for e in store.entries()] == [e.id for e in kept]
    lines = index.read_text().splitlines(keepends=True)
    with index.open("r+") as handle:  # rewritten in place (same file) without its first line
        handle.write("".join(lines[1:]))
        handle.truncate()
    assert [e.id for e in store.entries()] == [e.id for e in kept[1:]]
    index.write_text(lines[2] + lines[0] + lines[1])  # same length, same file, other order
    assert [e.id for e in store.entries()] == [kept[2].id, kept[0].id, kept[1].id]
    replacement = index.with_name("other")
    replacement.write_text(lines[1])
    replacement.replace(index)
    assert [e.id for e in store.entries()] == [kept[1].id]
    with index.open("a") as handle:  # another process appends
        handle.write(lines[0])
    assert [e.id for e in store.entries()] == [kept[1].id, kept[0].id]


def test_verdicts_wait_until_a_model_has_learnt_them(tmp_path):
    import json

    from apps.web.review import learnt_ids, waiting

    store = ReviewStore(tmp_path / "review")
    first, second = (keep_one(store, seed).kept[0] for seed in range(2))
    write_verdicts(store.folder, [Verdict(first, False), Verdict(second, True)], "good", "bad")
    models = tmp_path / "models"
    assert learnt_ids(models) == set() and waiting(store, models) == 2, "a model trained from its data alone"
    (models / "train").mkdir(parents=True)
    config = {"model_name": "patchcore", "training": {"update": {"ok": 1, "ng": 0, "review_ids": [first.id]}}}
    (models / "train" / "train_config.json").write_text(json.dumps(config))
    assert learnt_ids(models) == {first.id} and waiting(store, models) == 1


def test_a_hand_edited_feedback_csv_with_broken_rows_is_read_around(tmp_path):
    store = ReviewStore(tmp_path / "review")
    first, second = (keep_one(store, seed).kept[0] for seed in range(2))
    write_verdicts(store.folder, [Verdict(first, True)], "good", "bad")
    with (store.folder / FEEDBACK).open("a") as handle:
        handle.write('good,"images/x.png\n')  # an unclosed quote: pandas would stop here
        handle.write("good,images/y.png,2026-12-07,id-y,good,not-a-number,extra-cell\n")
        handle.write(",images/z.png,2026-12-07,id-z,good,0.1\n")  # no label
    latest = read_feedback(store.folder)
    assert list(latest["review_id"]) == [first.id] and latest["anomaly_score"].dtype.kind == "f"
    assert len(keep_one(store, 9).kept) == 1, "keeping goes on"
    write_verdicts(store.folder, [Verdict(second, False)], "good", "bad")
    assert list(read_feedback(store.folder)["review_id"]) == [first.id, second.id]
