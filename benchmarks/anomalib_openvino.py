"""anomalib's own OpenVINO path for one of our trained models: its export and its ``OpenVINOInferencer``.

The trained model is loaded the repository's way (:func:`~vad.models.saved.read_saved`,
:func:`~vad.models.factory.build_model`, the ``model.safetensors`` state dict). Our model object
subclasses anomalib's torch model (``PatchcoreModel``, ``FastflowModel``, ``PadimModel``) but overrides its
scoring (faiss searches, cached folded backbones), which the ONNX exporter cannot trace. anomalib is
therefore handed the same object seen as anomalib's own class: the same modules and weights, anomalib's
``forward``. That torch model goes into anomalib's Lightning module of the family (``Patchcore``,
``Fastflow``, ``Padim``) with anomalib's ``PreProcessor`` (resize to the model's input size and normalise
with the model's mean and std; the export turns the resize's antialiasing off) and no post-processor,
so the outputs are the raw ``pred_score`` and ``anomaly_map``. ``AnomalibModule.to_openvino`` exports it
(FP32, no compression; anomalib 2.7 goes through ``torch.onnx.export(dynamo=True)``, which needs
``onnxscript``) and ``OpenVINOInferencer.predict`` scores one image file at a time.

    .venv/bin/python -m benchmarks.anomalib_openvino MODELS/train IMAGE [IMAGE ...]
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from benchmarks.harness.paths import ROOT

if TYPE_CHECKING:
    from anomalib.models import AnomalibModule

    from vad.models.base import VadModel
    from vad.models.spec import ModelSpec

LIGHTNING_CLASSES = {"patchcore": "Patchcore", "fastflow": "Fastflow", "padim": "Padim"}
# The Lightning module is only the export's wrapper (pre-processor, torch model, post-processor): the torch model
# it builds is replaced by ours, so it is built small. anomalib's Fastflow accepts four backbone names only.
PLACEHOLDER_BACKBONE = "resnet18"
# torch.onnx.export's arguments: a static input of batch 1, the inferencer's batch (anomalib's default dynamic batch
# comes out specialised to the example's batch of 2), and opset 18, the dynamo exporter's lowest (anomalib's default 14
# is converted down after the export, which fails on these graphs and leaves them at 18 anyway).
ONNX_KWARGS = {"dynamic_shapes": (None,), "opset_version": 18}
# This CPU has bf16: OpenVINO's CPU plugin would then infer in bf16 by default; the comparison is in fp32.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def load_trained(folder: Path) -> tuple[VadModel, ModelSpec]:
    """Our trained model object, as :func:`vad.models.factory.load` builds it before scoring.

    Args:
        folder: A saved model folder (``models/train``).

    Returns:
        The model (a ``VadModel``, in eval mode) and its spec.
    """
    from safetensors.torch import load_file

    from vad.models.factory import build_model
    from vad.models.saved import WEIGHTS_FILE, read_saved

    spec = read_saved(folder).spec
    model = build_model(spec, pretrained=False)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return model.eval(), spec


def anomalib_torch_model(model: nn.Module) -> nn.Module:
    """Our model seen as the anomalib torch model it subclasses: the same modules and weights, anomalib's methods.

    Args:
        model: Our model object (e.g. ``OfflinePatchcore``, a subclass of anomalib's ``PatchcoreModel``).

    Returns:
        A shallow copy whose class is that anomalib class, in eval mode.

    Raises:
        TypeError: The model does not subclass an anomalib torch model.
    """
    base = next((cls for cls in type(model).__mro__ if cls.__module__.startswith("anomalib.models.")), None)
    if base is None:
        msg = f"{type(model).__name__} does not subclass an anomalib torch model"
        raise TypeError(msg)
    view = copy.copy(model)  # shares the parameters, buffers and submodules
    view.__class__ = base
    return view.eval()


def lightning_module(spec: ModelSpec, torch_model: nn.Module) -> AnomalibModule:
    """The anomalib Lightning module of the model's family around ``torch_model``, ready for its export.

    Args:
        spec: Our model's spec (name, input size, normalisation).
        torch_model: From :func:`anomalib_torch_model`.

    Returns:
        The module, in eval mode: anomalib's pre-processor, the torch model, no post-processor.
    """
    import anomalib.models
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    module_class = getattr(anomalib.models, LIGHTNING_CLASSES[spec.model_name])
    transform = Compose(
        [
            Resize(tuple(spec.input_size), antialias=True),
            Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )
    module = module_class(
        backbone=PLACEHOLDER_BACKBONE,
        pre_trained=False,
        pre_processor=PreProcessor(transform=transform),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    module.model = torch_model
    return module.eval()


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file.

    Args:
        path: The image file.

    Returns:
        Its size.
    """
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def anomalib_openvino_scores(
    folder: Path, images: list[str], workdir: Path, input_size: tuple[int, int] | None = None
) -> dict:
    """Our trained model, exported by anomalib's own OpenVINO export and scored by anomalib's OpenVINOInferencer.

    The export is FP32 (``compression_type=None``), its input fixed at (1, 3, ``input_size``): the
    inferencer feeds each file at its own size and the exported pre-processor resizes it to the model's input
    size. The predict loop is timed after one warm-up call on the first image.

    Args:
        folder: A saved model folder (``models/train``).
        images: Image files to score, all of ``input_size``.
        workdir: Where the export (``weights/openvino/model.xml``) and OpenVINO's ``openvino_cache`` go.
        input_size: (height, width) of the exported model's input; default: the first image's size.

    Returns:
        ``images``, ``seconds`` (the predict loop), ``images_per_s``, ``scores`` (raw ``pred_score`` of each
        image, in order), ``map_max_scores`` (the peak of each raw anomaly map), ``export_seconds``
        (``to_openvino``), ``compile_seconds`` (the inferencer's model load and compile), ``input_size``.

    Raises:
        ValueError: No images, or a score that is not finite.
    """
    if not images:
        msg = "no images to score"
        raise ValueError(msg)
    from anomalib.deploy import OpenVINOInferencer

    model, spec = load_trained(folder)
    module = lightning_module(spec, anomalib_torch_model(model))
    size = input_size or image_size(images[0])
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    xml_path = module.to_openvino(
        export_root=workdir, input_size=size, compression_type=None, onnx_kwargs=dict(ONNX_KWARGS)
    )
    export_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with contextlib.chdir(workdir):  # the inferencer makes its cache folder in the working directory
        inferencer = OpenVINOInferencer(path=xml_path, device="CPU", config=dict(OPENVINO_CONFIG))
    compile_seconds = time.perf_counter() - started

    inferencer.predict(images[0])  # warm-up
    started = time.perf_counter()
    predictions = [inferencer.predict(path) for path in images]
    seconds = time.perf_counter() - started

    scores = [float(np.asarray(prediction.pred_score).reshape(-1)[0]) for prediction in predictions]
    map_max: list[float] = []
    for prediction in predictions:
        if prediction.anomaly_map is None:
            msg = f"anomalib's OpenVINO model gave no anomaly map for an image of {folder}"
            raise ValueError(msg)
        map_max.append(float(np.max(prediction.anomaly_map)))
    if not np.isfinite(scores).all() or not np.isfinite(map_max).all():
        msg = f"anomalib's OpenVINO scores of {folder} are not all finite"
        raise ValueError(msg)
    return {
        "images": len(images),
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "scores": scores,
        "map_max_scores": map_max,
        "export_seconds": export_seconds,
        "compile_seconds": compile_seconds,
        "input_size": list(size),
    }


def main(argv: list[str]) -> None:
    """Score image files with a saved model through anomalib's OpenVINO path and print the figures.

    Args:
        argv: The model folder (``models/train``), then image files.
    """
    if len(argv) < 2:
        sys.exit("usage: python -m benchmarks.anomalib_openvino MODELS/train IMAGE [IMAGE ...]")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as workdir:
        row = anomalib_openvino_scores(Path(argv[0]), argv[1:], Path(workdir))
    print(json.dumps({key: value for key, value in row.items() if not key.endswith("scores")}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
