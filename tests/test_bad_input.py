"""Bad data folders, CSVs, images and model archives: one clear line and exit code 2 each, through main.main."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import pandas as pd
import pytest
from conftest import set_external, step_args, write_plan

import main


def run(root, plan, mode="train") -> None:
    return main.main(["--mode", mode, "--config", str(write_plan(root, plan))])


def last_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, lines
    return lines[0]


def edit_csv(root, change) -> None:
    csv = root / "data/train/train.csv"
    table = pd.read_csv(csv)
    change(table).to_csv(csv, index=False)


def only_ng(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(label="bad")


def two_ok_train(table: pd.DataFrame) -> pd.DataFrame:
    ok_train = table[(table["label"] == "good") & (table["split"] == "train")]
    return table.drop(ok_train.index[2:])


def no_path_column(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename(columns={"image_path": "file"})


def all_paths_missing(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(image_path="nowhere/" + table["image_path"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (only_ng, "ok_class 'good' is not a label in the CSV"),
        (two_ok_train, "only 2 OK training images"),
        (no_path_column, "no image path column 'image_path'"),
        (all_paths_missing, "no usable rows left in the CSV"),
    ],
)
def test_csv_that_cannot_train(project, capsys, change, expected):
    root, plan = project["root"], project["plan"]
    step_args(plan, "train", "readiness")["ok_class"] = "good"
    edit_csv(root, change)
    assert run(root, plan) == 2
    line = last_error(capsys)
    assert expected in line, line


def test_empty_data_folder_and_two_csvs(project, capsys):
    root, plan = project["root"], project["plan"]
    (root / "empty").mkdir()
    set_external(plan, "load_train_data_path", "empty")
    assert run(root, plan) == 2
    assert "no ground-truth CSV in" in last_error(capsys)
    set_external(plan, "load_train_data_path", "data/train")
    (root / "data/train/copy.csv").write_bytes((root / "data/train/train.csv").read_bytes())
    assert run(root, plan) == 2
    assert "holds 2 CSV files (copy.csv, train.csv)" in last_error(capsys)


@pytest.mark.slow
def test_csv_in_another_encoding(project, capsys):
    root, plan = project["root"], project["plan"]
    csv = root / "data/train/train.csv"
    table = pd.read_csv(csv)
    table["label"] = table["label"].map({"good": "정상", "bad": "불량"})
    table.to_csv(csv, index=False, encoding="cp949")
    assert run(root, plan) == 2
    line = last_error(capsys)
    assert "is not valid utf-8 text" in line and "encoding" in line
    step_args(plan, "train", "input")["encoding"] = "cp949"
    step_args(plan, "train", "readiness")["ok_class"] = "정상"
    assert run(root, plan) == 0


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, with no pixel data (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.slow
def test_bad_images_are_skipped_and_the_rest_trains(project):
    from PIL import Image

    root, plan = project["root"], project["plan"]
    folder = root / "data/train/good"
    (folder / "bomb.png").write_bytes(_png_header(60000, 60000))
    (folder / "random.png").write_bytes(bytes(range(256)) * 8)
    (folder / "zero.jpg").write_bytes(b"")
    source = Image.open(folder / "g000.png")
    source.resize((96, 40)).save(folder / "wide.jpg")  # mixed sizes and formats train together
    source.resize((40, 90)).convert("L").save(folder / "tall_gray.png")
    added = ["good/bomb.png", "good/random.png", "good/zero.jpg", "good/wide.jpg", "good/tall_gray.png"]
    edit_csv(
        root,
        lambda t: pd.concat([t, pd.DataFrame({"label": "good", "image_path": added})]).assign(
            split=lambda x: x["split"].fillna("train")
        ),
    )
    assert run(root, plan) == 0
    log = (root / "train_artifacts/log/pipeline.log").read_text(encoding="utf-8")
    line = next(line for line in log.splitlines() if "cannot be decoded" in line)
    assert "WARNING" in line and "skipped 3 row(s)" in line
    assert all(name in line for name in ("bomb.png", "random.png", "zero.jpg"))
    assert "wide.jpg" not in line and "tall_gray.png" not in line


@pytest.mark.slow
def test_inference_with_only_unreadable_images(project, capsys):
    root, plan = project["root"], project["plan"]
    assert run(root, plan) == 0
    capsys.readouterr()
    inference = root / "junk"
    inference.mkdir()
    (inference / "a.png").write_bytes(b"\x00" * 100)
    (inference / "b.jpg").write_bytes(b"")
    set_external(plan, "load_inference_data_path", "junk")
    before = (root / "inference_artifacts").exists()
    assert run(root, plan, "inference") == 2
    assert "no usable image rows to score" in last_error(capsys)
    assert (root / "inference_artifacts").exists() == before
    (failed,) = [run for run in (root / "history" / "inference").iterdir() if run.name.endswith("-error")]
    assert (failed / "log" / "experimental_plan.yaml").is_file(), "a failed run keeps the plan it ran"
    assert '"status": "error"' in (failed / "log" / "experimental_history.json").read_text()


@pytest.mark.slow
def test_inference_images_of_other_sizes_and_modes_are_scored(project, tmp_path):
    from PIL import Image

    root, plan = project["root"], project["plan"]
    assert run(root, plan) == 0
    folder = root / "odd"
    folder.mkdir()
    source = Image.open(next((root / "data/inference").glob("ok_*.png"))).convert("RGB")
    source.resize((200, 120)).convert("L").save(folder / "gray_wide.png")
    source.resize((50, 90)).convert("RGBA").save(folder / "rgba_tall.png")
    source.convert("P").save(folder / "palette.png")
    set_external(plan, "load_inference_data_path", "odd")
    assert run(root, plan, "inference") == 0
    output = pd.read_csv(root / "inference_artifacts/output/output.csv")
    assert sorted(output["image_path"]) == ["gray_wide.png", "palette.png", "rgba_tall.png"]
    assert output["anomaly_score"].between(0, 1).all()


def _tar_with(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a tar at all", "cannot extract"),
        ("truncated", "cannot extract"),
        ("bad weights", "cannot be loaded"),
        (_tar_with({"../escaped.txt": b"x"}), "cannot extract"),
        (_tar_with({"/tmp/absolute.txt": b"x"}), "holds no trained model"),  # extracted inside as tmp/...
        (_tar_with({}, {"train": "/etc"}), "cannot extract"),
        (_tar_with({"train/model.safetensors": b"\x00" * 64}), "holds no trained model"),
        (
            _tar_with(
                {
                    "train_run.json": b'{"train_id": "forged"}',
                    "readiness/readiness_config.json": b"{}",
                    "train/model.safetensors": b"\x00" * 64,
                    "train/train_config.json": b"{}",
                }
            ),
            "readiness_config.json is missing or unreadable",
        ),
    ],
)
@pytest.mark.slow
def test_tampered_model_archives_are_refused(project, capsys, tmp_path_factory, content, expected):
    root, plan = project["root"], project["plan"]
    exported = tmp_path_factory.mktemp("exported")
    if content in ("truncated", "bad weights"):
        set_external(plan, "save_train_artifacts_path", str(exported))
        assert run(root, plan) == 0
        whole = (exported / "model.tar.gz").read_bytes()
        if content == "truncated":
            content = whole[: len(whole) // 2]
        else:
            with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
            members["train/model.safetensors"] = members["train/model.safetensors"][:1000]
            for graph in ("export/model.onnx", "export/model.bin"):  # and the exported graphs: refused by any runtime
                if graph in members:
                    members[graph] = members[graph][:1000]
            content = _tar_with(members)
        set_external(plan, "save_train_artifacts_path", None)
    (exported / "model.tar.gz").write_bytes(content)
    set_external(plan, "load_model_path", str(exported / "model.tar.gz"))
    capsys.readouterr()
    assert run(root, plan, "inference") == 2
    line = last_error(capsys)
    assert expected in line and "model" in line, line
    assert not (tmp_path_factory.getbasetemp() / "escaped.txt").exists()
