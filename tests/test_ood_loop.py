"""The out-of-distribution check through ALO's edge loop (a real redis-server): flagged, and rejected."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import make_dataset, make_inference_folder, step_args, tiny_plan, write_plan
from PIL import Image
from test_edge_loop import answers, request, start_loop, stop

import main
from benchmarks.redis_server import RedisServer
from vad.ood.verdict import REJECTED_LABEL

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PatchCore model on tiny textures, one image of its kind and one striped card."""
    root = tmp_path_factory.mktemp("ood-loop")
    make_dataset(root / "data" / "train")
    folder = make_inference_folder(root / "data" / "inference", n_ok=1, n_ng=0, seed=6)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::2] = 255
    Image.fromarray(stripes).save(root / "data" / "stripes.png")
    plan = tiny_plan(export=[])
    step_args(plan, "inference", "inference").update({"save_anomaly_maps": False, "save_output_images": 0})
    path = write_plan(root, plan)
    assert main.main(["--mode", "train", "--config", str(path)]) == 0
    return {"root": root, "plan": path, "raw_plan": plan, "ok": folder / "ok_0.png", "odd": root / "data/stripes.png"}


@pytest.mark.parametrize("action", ["flag", "reject"])
def test_the_loop_answers_how_many_images_were_out_of_distribution(trained, tmp_path, action):
    plan = copy.deepcopy(trained["raw_plan"])
    step_args(plan, "inference", "inference")["ood_action"] = action
    project = dict(trained, plan=write_plan(trained["root"], plan, f"plan_{action}.yaml"))
    server = RedisServer(tmp_path / "redis").start()
    try:
        loop = start_loop(project, server)
        client = server.client()
        client.rpush("request_inference", request(trained["ok"], "ok"))
        client.rpush("request_inference", request(trained["odd"], "odd"))
        ok, odd = answers(server, 2)
        code, output = stop(loop)
    finally:
        server.stop()
    assert code == 0, output[-2000:]
    assert ok["status"] == odd["status"] == "success"
    assert ok["message"]["note"].endswith(", 0 out of distribution")
    assert ok["message"]["result"] == "good"
    assert odd["message"]["note"].endswith(", 1 out of distribution")
    if action == "reject":
        assert odd["message"]["result"] == REJECTED_LABEL and odd["message"]["score"] == 0.0
    else:
        assert odd["message"]["result"] in {"good", "bad"}, "flag keeps the verdict"
