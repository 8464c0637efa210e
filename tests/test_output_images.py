"""Scored images in ``inference_artifacts/output/``: the cap, safe names, and ALO's Edge SDK reading a real run.

The SDK is PyPI ``mellerikat-edge`` 1.0.7 (requirements-nodeps.txt): the slow tests run its own functions the way
its ALO-v2 upload does (zip ``inference_artifacts/``, glob the table and the picture in ``output/``, read the
summary) and its ALO-v3 parser on the zip.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from conftest import load_default_plan, make_dataset, make_inference_folder, set_external, step_args, write_plan
from mellerikatedge import edge_utils
from PIL import Image

import main
from alo.args import validate_args
from alo.errors import PlanError
from assets.inference import InferenceArgs
from vad.output_images import (
    EDGE_EXTENSIONS,
    MANIFEST,
    MAX_STEM,
    choose_output_images,
    safe_stem,
    save_output_image,
)

WHERE = "user_parameters.inference_pipeline.inference.args"


def test_a_batch_keeps_at_most_the_cap_in_input_order():
    files = [f"/line/2026-01-01/part_{i:05d}.png" for i in range(10_000)]
    kept = choose_output_images(files, 3)
    assert [(image.row, image.name) for image in kept] == [
        (0, "part_00000.png"),
        (1, "part_00001.png"),
        (2, "part_00002.png"),
    ]
    assert [image.source for image in kept] == files[:3]
    assert choose_output_images(files, 0) == []
    assert [image.name for image in choose_output_images(files[:2], 5)] == ["part_00000.png", "part_00001.png"]
    assert len(choose_output_images(files, 1)) == 1


NASTY = [
    "../../etc/passwd.png",
    "/data/a b/..png",
    "C:\\camera\\shot 1.JPG",
    "/data/.hidden.png",
    "/data/a/part.png",
    "/data/b/part.png",
    "/data/c/PART.PNG",
    "/data/" + "x" * 300 + ".bmp",
    "/data/line\nbreak\t.jpeg",
    "/data/불량_01.jpg",
    "/data/scan.tiff",
    "/data/photo.WEBP",
    "/data/..",
    "/data/name.with.dots.jpeg",
    "/data/-rf.png",
    "/data/" + "불" * 200 + ".png",
]


def test_names_are_sanitised_unique_stay_in_the_folder_and_the_sdk_finds_each(tmp_path):
    kept = choose_output_images(NASTY, len(NASTY))
    names = [image.name for image in kept]
    assert names[:7] == ["passwd.png", "image.png", "shot_1.jpg", "hidden.png", "part.png", "part-2.png", "PART-3.png"]
    assert names[7] == "x" * MAX_STEM + ".bmp"
    assert names[8:] == [
        "line_break_.jpeg",
        "불량_01.jpg",
        "scan.png",
        "photo.png",
        "image-2.png",
        "name.with.dots.jpeg",
        "-rf.png",
        "불" * 33 + ".png",
    ]
    assert len({name.lower() for name in names}) == len(names), "no two names, even ignoring case"
    folder = tmp_path / "output"
    for name in names:
        assert PurePosixPath(name).name == name and "\\" not in name and not name.startswith(".")
        assert Path(name).suffix in EDGE_EXTENSIONS and len(name.encode()) < 255
        assert (folder / name).resolve().parent == folder.resolve()
        alone = tmp_path / "alone" / str(names.index(name))
        alone.mkdir(parents=True)
        (alone / name).write_bytes(b"")
        assert edge_utils.find_image_file(str(alone)) == name, "the SDK's v2 glob finds it"
    assert safe_stem("") == "image" and safe_stem("...") == "image"


def _picture(seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (24, 32), dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).convert(mode)


def test_copies_are_the_original_bytes_not_links_and_a_tiff_becomes_a_lossless_png(tmp_path):
    sources = tmp_path / "in"
    sources.mkdir()
    _picture(0).save(sources / "a.png")
    _picture(1).save(sources / "b.JPG", format="JPEG", quality=80)
    _picture(2, "I;16").save(sources / "c.tif")
    _picture(3, "CMYK").save(sources / "d.tiff")
    _picture(4).save(sources / "e.webp", lossless=True)
    files = sorted(sources.iterdir())
    out = tmp_path / "output"
    kept = choose_output_images(files, len(files))
    for image in kept:
        save_output_image(Path(image.source), out / image.name)
    assert [image.name for image in kept] == ["a.png", "b.jpg", "c.png", "d.png", "e.png"]
    for name, source in (("a.png", "a.png"), ("b.jpg", "b.JPG")):
        assert (out / name).read_bytes() == (sources / source).read_bytes()
        assert (out / name).stat().st_nlink == 1, "a copy, not a hard link of the input"
    with Image.open(out / "c.png") as png, Image.open(sources / "c.tif") as tif:
        assert png.format == "PNG" and np.array_equal(np.asarray(png), np.asarray(tif)), "16 bits kept"
    with Image.open(out / "d.png") as png:
        assert png.mode == "RGB"
    with Image.open(out / "e.png") as png, Image.open(sources / "e.webp") as webp:
        assert np.array_equal(np.asarray(png), np.asarray(webp))
    before = (out / "a.png").read_bytes()
    (sources / "a.png").write_bytes(b"rewritten in place by the camera")
    assert (out / "a.png").read_bytes() == before


@pytest.mark.parametrize("value", [-1, "2", True, 1.5, None])
def test_a_bad_save_output_images_is_one_plan_line(value):
    with pytest.raises(PlanError) as info:
        validate_args(InferenceArgs, {"save_output_images": value}, WHERE)
    message = str(info.value)
    assert f"{WHERE}.save_output_images' is {value!r}" in message and "\n" not in message
    assert validate_args(InferenceArgs, {}, WHERE).save_output_images == 1


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """A trained PatchCore model on tiny images, a five-image folder and a one-image folder to score."""
    root = tmp_path_factory.mktemp("output_images")
    make_dataset(root / "data" / "train")
    make_inference_folder(root / "data" / "batch")
    single = make_inference_folder(root / "data" / "single", n_ok=0, n_ng=1, seed=3)
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", str(single / "ng_0.png"))  # as the SDK's copy: one file
    step_args(plan, "train", "train").update(
        {"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore", "export": []}
    )
    step_args(plan, "inference", "inference").update({"save_anomaly_maps": False, "runtime": "torch"})
    assert main.main(["--mode", "train", "--config", str(write_plan(root, plan))]) == 0
    return {"root": root, "plan": plan, "single": single / "ng_0.png"}


def _infer(edge, data: str, **inference) -> Path:
    plan = copy.deepcopy(edge["plan"])
    set_external(plan, "load_inference_data_path", data)
    step_args(plan, "inference", "inference").update(inference)
    assert main.main(["--mode", "inference", "--config", str(write_plan(edge["root"], plan))]) == 0
    return edge["root"] / "inference_artifacts"


@pytest.mark.slow
def test_the_edge_sdk_finds_the_picture_the_table_and_the_summary_of_a_one_image_run(edge, tmp_path):
    artifacts = _infer(edge, str(edge["single"]))
    output = artifacts / "output"
    # ALO-v2 upload (Emulator.upload_inference_result): the summary, the zip, then a glob of output/
    summary = edge_utils.load_yaml(str(artifacts / "score" / "inference_summary.yaml"))
    archive = tmp_path / "inference_artifacts.zip"
    edge_utils.zip_folder(str(artifacts), str(archive))
    assert edge_utils.find_tabular_file(str(output)) == "output.csv"
    assert edge_utils.find_image_file(str(output)) == "ng_0.png"
    assert summary["result"] == "bad" and summary["note"]
    # ALO-v3 parser of the same zip
    image, table, parsed = edge_utils.parse_inference_artifacts(str(archive))
    assert (image, table) == ("output/ng_0.png", "output/output.csv")
    assert dict(parsed) == dict(summary) and {"result", "score", "probability"} <= set(parsed)
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.read(image) == edge["single"].read_bytes(), "the scored image as it was"
    assert json.loads((output / MANIFEST).read_text()) == [
        {"file": "ng_0.png", "row": 0, "source": str(edge["single"])}
    ]


@pytest.mark.slow
def test_a_batch_keeps_the_first_n_scored_images_and_zero_keeps_none(edge):
    batch = str(edge["root"] / "data" / "batch")
    output = _infer(edge, batch) / "output"
    rows = pd.read_csv(output / "output.csv")
    pictures = sorted(p.name for p in output.iterdir() if p.suffix in EDGE_EXTENSIONS)
    assert len(rows) == 5 and pictures == [rows["image_path"][0]], "the default: the first scored image only"
    assert edge_utils.find_image_file(str(output)) == pictures[0]

    output = _infer(edge, batch, save_output_images=3) / "output"
    manifest = json.loads((output / MANIFEST).read_text())
    assert [(entry["row"], entry["file"]) for entry in manifest] == [(i, rows["image_path"][i]) for i in range(3)]
    assert sorted(p.name for p in output.iterdir() if p.suffix in EDGE_EXTENSIONS) == sorted(
        e["file"] for e in manifest
    )

    output = _infer(edge, batch, save_output_images=0) / "output"
    assert sorted(p.name for p in output.iterdir()) == ["output.csv"]
