"""The bare model's workers: the backbone's forward pass alone, and FastFlow's work per image against the CPU's peak."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.harness.measure import peak_rss_mb
from benchmarks.speed.settings import BATCH, FASTFLOW, PATCHCORE, SIZE, model_spec


def worker_bare(data: Path, model: str) -> dict:
    """The backbone's forward pass alone, on the test images already decoded and normalised.

    Args:
        data: A :func:`~benchmarks.speed.data.build_data` folder (its ``test/`` images).
        model: ``patchcore`` or ``fastflow`` (which backbone and layers).

    Returns:
        ``images``; the seconds in NCHW (``seconds``), channels-last (``channels_last_seconds``) and channels-last
        with the batch norms folded (``folded_seconds``); ``peak_rss_mb``.
    """
    import numpy as np
    import torch
    from PIL import Image

    from vad.models.factory import build_model
    from vad.models.folding import fold_batch_norms

    settings = PATCHCORE if model == "patchcore" else FASTFLOW
    spec = model_spec(model, settings["backbone"], settings["layers"], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    net = build_model(spec, pretrained=model == "patchcore")
    extractor = net.get_submodule("feature_extractor")
    paths = sorted((data / "test").glob("*.jpg"))
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 255.0 for p in paths]
    tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    tensor = (tensor - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]

    def seconds(forward: torch.nn.Module, batches: list[torch.Tensor]) -> float:
        with torch.inference_mode():
            forward(batches[0])  # warm-up
            started = time.perf_counter()
            for batch in batches:
                forward(batch)
            return time.perf_counter() - started

    row: dict[str, float] = {"images": len(tensor)}
    for layout, name in ((torch.contiguous_format, "seconds"), (torch.channels_last, "channels_last_seconds")):
        extractor.to(memory_format=layout)
        batches = [batch.contiguous(memory_format=layout) for batch in tensor.split(BATCH)]
        row[name] = seconds(extractor, batches)
    # the same channels-last backbone with its batch norms folded into the convolutions, as ours runs it
    inner = extractor.get_submodule("feature_extractor") if model == "patchcore" else extractor
    row["folded_seconds"] = seconds(fold_batch_norms(inner, batches[0][:1]), batches)
    return row | {"peak_rss_mb": peak_rss_mb()}


def worker_work(data: Path, model: str) -> dict:
    """Multiply-adds per image of the FastFlow model (backbone, flows) and this CPU's best fp32 rate.

    The rate is that of a large matrix product on all cores, the most this CPU does in fp32: it bounds
    how many images per second any runtime can score with the same model.

    Args:
        data: Unused (every worker takes the data folder first).
        model: ``fastflow``.

    Returns:
        ``backbone_gmac``, ``flows_gmac`` (anomalib's flows), ``our_flows_gmac``, ``matmul_gmac_per_s``,
        ``threads``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vad.models.factory import build_model
    from vad.models.fastflow.model import OfflineFastflow

    spec = model_spec(model, FASTFLOW["backbone"], FASTFLOW["layers"], (0.5,) * 3, (0.5,) * 3)
    net = build_model(spec, pretrained=False)
    if not isinstance(net, OfflineFastflow):
        msg = f"the work per image is FastFlow's, not {model}'s"
        raise TypeError(msg)
    image = torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():  # the FLOP counter's module hooks do not work under inference_mode
        features = net.extract(image)
        with FlopCounterMode(display=False) as counter:
            net.feature_extractor(image)  # counted alone: the first extract also folds the batch norms
        backbone = counter.get_total_flops() / 2e9
        with FlopCounterMode(display=False) as counter:
            for norm, block, feature in zip(net.norms, net.fast_flow_blocks, features, strict=True):
                block(norm(feature))  # anomalib's flows: the permutations are 1x1 convolutions
        flows = counter.get_total_flops() / 2e9
        with FlopCounterMode(display=False) as counter:
            net.flow(features)  # ours, scoring form: the permutations are gathers
        our_flows = counter.get_total_flops() / 2e9
        side, repeats = 2048, 20
        left, right = torch.randn(side, side), torch.randn(side, side)
        left @ right  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            left @ right
        rate = side**3 * repeats / 1e9 / (time.perf_counter() - started)
    threads = torch.get_num_threads()
    return {
        "backbone_gmac": backbone,
        "flows_gmac": flows,
        "our_flows_gmac": our_flows,
        "matmul_gmac_per_s": rate,
        "threads": threads,
    }
