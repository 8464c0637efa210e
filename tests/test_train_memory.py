"""Issue 28: PatchCore training's peak memory stays nearly flat as its data grows (the slow tier: make test-all).

The memory bank grows with the training images (167 MB at 2,000 images at 320 px), and the export's parity gate
used to hold many copies of it at once: the fitted model's, the saved model loaded into torch, and the exported
tail's, each with its own faiss inverted file. Now the fitted model goes before the export loads the saved one,
and the torch scorer goes before the tail is read back.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
from conftest import load_default_plan, make_dataset, set_external, step_args, write_plan

import assets.train as train_step
import main
import vad.export.writer as writer
import vad.models.factory as factory
from benchmarks import train_memory

pytestmark = pytest.mark.slow


def test_the_fitted_model_and_the_torch_scorer_are_gone_before_the_tail_loads(tmp_path, monkeypatch):
    """Each holder of the bank is released before the next one loads (weak references, then a collection)."""
    held: dict[str, weakref.ref] = {}
    alive: dict[str, bool] = {}

    def save(model, *args, **kwargs):
        held["fitted"] = weakref.ref(model)
        return original_save(model, *args, **kwargs)

    def load(*args, **kwargs):
        trained = original_load(*args, **kwargs)
        held["scorer"] = weakref.ref(trained.model)
        return trained

    def load_tail(*args, **kwargs):
        gc.collect()
        alive.update({name: ref() is not None for name, ref in held.items()})
        return original_load_tail(*args, **kwargs)

    original_save, original_load, original_load_tail = train_step.save, factory.load, writer.load_tail
    monkeypatch.setattr(train_step, "save", save)
    monkeypatch.setattr(factory, "load", load)
    monkeypatch.setattr(writer, "load_tail", load_tail)
    make_dataset(tmp_path / "data" / "train")
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    step_args(plan, "train", "train").update({"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore"})
    assert main.main(["--mode", "train", "--config", str(write_plan(tmp_path, plan))]) == 0
    manifest = (tmp_path / "train_artifacts" / "models" / "export" / "manifest.json").read_text()
    assert '"accepted": true' in manifest
    assert alive == {"fitted": False, "scorer": False}


def test_training_peak_memory_grows_at_most_1_5x_from_200_to_2000_images(tmp_path):
    """The benchmark's own measurement: 200 and 2,000 OK images, the bundled plan's defaults, a process each."""
    result = train_memory.measure(train_memory.COUNTS, tmp_path)
    rows = result["rows"]
    assert not [row for row in rows if "error" in row], rows
    assert rows[-1]["bank_rows"] >= 9 * rows[0]["bank_rows"], "the bank grows with the data"
    assert result["ratio"] <= train_memory.MAX_RATIO, train_memory.table([result])
