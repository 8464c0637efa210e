"""Speed benchmark: our pipeline against plain anomalib 2.7 and the bare backbone, on the same images.

One run generates (or reuses) a gravel dataset at 256 px: 200 OK training images (plus 20 OK + 10 NG
validation images for our threshold) and 100 test images, half defective. Every measurement runs in
its own process (so peak RSS belongs to one thing) with the torch thread count of the machine:

- ``ours``: ``main.py --mode train`` and ``--mode inference`` as a user runs them (timed inside the
  process: plan loading, image checks, validation and artifact writing included, imports excluded).
  Images/s comes from an inference run on the test images without a CSV (a production run: model
  loading, image checks, scoring, output.csv and summary); AUROC from the labelled run, whose time
  also includes computing the image and pixel metrics.
- ``anomalib``: a plain script, ``Engine.fit`` then ``Engine.predict`` with the same backbone, layers,
  image size, batch size and coreset ratio, ImageNet weights loaded from the same offline package,
  no validation (``limit_val_batches=0``: ours validates on 30 images inside its fit time), post-processing,
  metrics and visualisation off (raw scores), ``num_workers=0`` (as ours; 2 cores).
- ``bare``: the backbone's forward pass alone on preprocessed tensors, same batch and image size, in
  PyTorch's default NCHW layout (what anomalib runs) and in channels-last (what ours runs).

PatchCore: ``mobilenetv2_100`` (``blocks.2`` + ``blocks.4``), coreset ratio 0.1. FastFlow: anomalib's
FastFlow supports only a few backbones, so both sides use ``resnet18`` (``layer1``-``layer3``) with
random weights (speed only). Also: cold single-image inference (process start to summary written) and,
with ``--scale 2000`` (and more), our PatchCore training peak RSS against the 200-image run, and a
production inference run that scores all those training images (no CSV) with the 200-image model:
its peak RSS against scoring the 100 test images with the same model shows whether streaming
inference keeps memory flat. ``--only scale-inference`` runs only the inference runs. The exported runtimes'
tables (torch, OpenVINO fp32 and int8, ONNX Runtime, anomalib's own OpenVINO export) are
:mod:`benchmarks.export_speed`'s.

    .venv/bin/python -m benchmarks.speed [--only patchcore|fastflow|scale|scale-inference|export]
        [--scale 2000 10000] [--epochs 3] [--products gravel grass]

Rows go to ``results/speed-rows.jsonl`` as they finish; the table to ``BENCHMARKS.md`` ("Speed").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "solution"))

import make_sample_data  # noqa: E402

WORK = ROOT / "results" / "speed"
SIZE = 256
BATCH = 8
PATCHCORE = {"backbone": "mobilenetv2_100", "layers": ["blocks.2", "blocks.4"], "ratio": 0.1}
FASTFLOW = {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]}


# ----------------------------------------------------------------------------- data


def build_data(n_train: int, seed: int = 1000) -> Path:
    """Generate (or reuse) a gravel dataset and anomalib's folder layout of the same files.

    Args:
        n_train: OK training images.
        seed: Data seed.

    Returns:
        The dataset folder (``train/``, ``test/``, ``one/``, ``anomalib/``).
    """
    target = WORK / "data" / f"gravel-{n_train}"
    stamp = {"n_train": n_train, "seed": seed}
    stamp_file = target / "stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        _link_images(target / "test", target / "unlabelled")  # the test images again, no labels
        return target
    make_sample_data.generate(
        target, seed, n_train=n_train, n_valid=20, n_bad=10, n_inf_ok=50, n_inf_ng=50, product="gravel"
    )
    shutil.move(str(target / "inference"), str(target / "test"))
    _anomalib_layout(target)
    one = target / "one"
    one.mkdir()
    first = sorted((target / "test").glob("ng_*.jpg"))[0]
    shutil.copy(first, one / first.name)
    _link_images(target / "test", target / "unlabelled")
    stamp_file.write_text(json.dumps(stamp))
    return target


def _link_images(images: Path, folder: Path) -> None:
    """Hard links of the JPEGs in ``images`` in a new ``folder`` without a CSV (a production inference run)."""
    if folder.is_dir():
        return
    folder.mkdir()
    for image in sorted(images.glob("*.jpg")):
        os.link(image, folder / image.name)


def _anomalib_layout(target: Path) -> None:
    """Hard links of the same images in the folders anomalib's ``Folder`` datamodule reads."""
    import pandas as pd

    train = pd.read_csv(target / "train" / "train.csv")
    test = pd.read_csv(target / "test" / "inference.csv")
    ok_train = train[(train["label"] == "good") & (train["split"] == "train")]
    places = {
        "train_good": (target / "train", ok_train["image_path"]),
        "test_good": (target / "test", test[test["label"] == "good"]["image_path"]),
        "test_bad": (target / "test", test[test["label"] != "good"]["image_path"]),
    }
    for name, (base, paths) in places.items():
        folder = target / "anomalib" / name
        folder.mkdir(parents=True)
        for path in paths:
            os.link(base / path, folder / Path(path).name)


# ----------------------------------------------------------------------------- workers (one process each)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plan(data: Path, model: str, epochs: int, folder: Path) -> Path:
    """A plan for ``model`` (``fastflow-default``: FastFlow with the product's default backbone)."""
    plan = yaml.safe_load((ROOT / "experimental_plan.yaml").read_text(encoding="utf-8"))
    plan["external_path"] = [
        {"load_train_data_path": str(data / "train")},
        {"load_inference_data_path": str(folder)},
    ]
    for entry in plan["user_parameters"]:
        for steps in entry.values():
            for step in steps:
                args = step["args"][0] if step.get("args") else {}
                if step["step"] == "train":
                    args.update(
                        model_name=model.removesuffix("-default"),
                        img_size=[SIZE, SIZE],
                        batch_size=BATCH,
                        max_epochs=epochs,
                        save_validation_heatmap=False,
                    )
                    if model.endswith("-default"):  # the product's own defaults for this model
                        args["model_parameters"] = {"early_stopping_patience": epochs}
                    elif model == "patchcore":
                        args["model_parameters"] = {
                            "patchcore_backbone": PATCHCORE["backbone"],
                            "patchcore_layers": PATCHCORE["layers"],
                            "patchcore_coreset_sampling_ratio": PATCHCORE["ratio"],
                        }
                    else:
                        args["model_parameters"] = {
                            "fastflow_backbone": FASTFLOW["backbone"],
                            "fastflow_layers": FASTFLOW["layers"],
                            "pretrained": False,
                            "early_stopping_patience": epochs,
                        }
                if step["step"] == "inference":
                    args["save_anomaly_maps"] = False
    run_dir = WORK / "runs" / f"{data.name}-{model}-{folder.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "experimental_plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _inference_plan(data: Path, model: str, epochs: int, folder: str) -> Path:
    """A plan scoring ``data / folder`` with the model trained on ``data`` (copied into its run folder)."""
    plan = _plan(data, model, epochs, data / folder)
    if folder != "test":  # the "test" run folder is the training run's own
        shutil.rmtree(plan.parent / "train_artifacts", ignore_errors=True)
        shutil.copytree(
            WORK / "runs" / f"{data.name}-{model}-test" / "train_artifacts", plan.parent / "train_artifacts"
        )
    return plan


def worker_ours(data: Path, model: str, mode: str, epochs: int, folder: str) -> dict:
    """Our pipeline through main.py's ``main`` in this process."""
    sys.path.insert(0, str(ROOT))
    import main as entry
    from assets import inference, train  # noqa: F401  (imports are not part of the timing)

    plan = (
        _inference_plan(data, model, epochs, folder)
        if mode == "inference"
        else _plan(data, model, epochs, data / folder)
    )
    started = time.perf_counter()
    code = entry.main(["--mode", mode, "--config", str(plan)])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"main.py --mode {mode} failed with exit code {code}")
    row = {"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    if mode == "train":
        config = json.loads((plan.parent / "train_artifacts" / "models" / "train" / "train_config.json").read_text())
        row["fit_seconds"] = config["scoring"]["fit_seconds"]
        if "epoch_seconds" in config["scoring"].get("fit_metrics", {}):
            row["epoch_seconds"] = config["scoring"]["fit_metrics"]["epoch_seconds"]
    if mode == "inference":
        import pandas as pd

        output = plan.parent / "inference_artifacts" / "output"
        row["images"] = len(pd.read_csv(output / "output.csv"))
        if (output / "inference_score.csv").is_file():
            row["image_auroc"] = float(pd.read_csv(output / "inference_score.csv")["auroc"].iloc[0])
    return row


def anomalib_folder(data: Path, batch: int) -> object:
    """The ``Folder`` datamodule of anomalib over the dataset's anomalib layout (train OK, test OK and NG).

    Args:
        data: A :func:`build_data` folder.
        batch: Train and eval batch size.

    Returns:
        The datamodule.
    """
    from anomalib.data import Folder

    return Folder(
        name="gravel",
        root=data / "anomalib",
        normal_dir="train_good",
        abnormal_dir="test_bad",
        normal_test_dir="test_good",
        train_batch_size=batch,
        eval_batch_size=batch,
        num_workers=0,
        val_split_mode="same_as_test",
        seed=0,
    )


def worker_anomalib(data: Path, model: str, epochs: int) -> dict:
    """Plain anomalib: Engine.fit and Engine.predict."""
    import logging
    import warnings

    import torch
    from anomalib.engine import Engine
    from anomalib.models import Fastflow, Patchcore
    from lightning.pytorch.callbacks import Callback
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(ROOT))
    from vad.backbones import load_pretrained_weights

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    class EpochTimer(Callback):
        """Wall time of each training epoch (data loading, forward, backward, optimiser)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = 0.0

        def on_train_epoch_start(self, trainer: object, pl_module: object) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: object, pl_module: object) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = EpochTimer()
    if model == "patchcore":
        module = Patchcore(
            backbone=PATCHCORE["backbone"],
            layers=PATCHCORE["layers"],
            pre_trained=False,
            coreset_sampling_ratio=PATCHCORE["ratio"],
            pre_processor=Patchcore.configure_pre_processor(image_size=(SIZE, SIZE)),
            post_processor=False,
            evaluator=False,
            visualizer=False,
        )
        load_pretrained_weights(module.model.feature_extractor.feature_extractor, PATCHCORE["backbone"], None)
        max_epochs = 1
    else:
        module = Fastflow(
            backbone=FASTFLOW["backbone"],
            pre_trained=False,
            pre_processor=Fastflow.configure_pre_processor(image_size=(SIZE, SIZE)),
            post_processor=False,
            evaluator=False,
            visualizer=False,
        )
        max_epochs = epochs
    datamodule = anomalib_folder(data, BATCH)
    engine = Engine(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=WORK / "anomalib" / f"{data.name}-{model}",
        callbacks=[timer],
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    engine.fit(model=module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    fit_rss = _peak_rss_mb()
    datamodule.setup()
    loader = datamodule.test_dataloader()
    started = time.perf_counter()
    batches = engine.predict(model=module, dataloaders=loader, return_predictions=True)
    predict_seconds = time.perf_counter() - started
    scores = torch.cat([batch.pred_score.reshape(-1) for batch in batches]).float().numpy()
    labels = torch.cat([batch.gt_label.reshape(-1) for batch in batches]).int().numpy()
    return {
        "fit_seconds": fit_seconds,
        "fit_peak_rss_mb": fit_rss,
        "epochs": max_epochs,
        "epoch_seconds": sum(timer.seconds) / max(len(timer.seconds), 1),
        "predict_seconds": predict_seconds,
        "images": len(scores),
        "image_auroc": float(roc_auc_score(labels, scores)),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _spec(model: str, backbone: str, layers: list[str], mean: tuple, std: tuple) -> object:
    """A model spec at the benchmark's size, the model's other parameters at their defaults."""
    from vad.models import ModelSpec, entry

    params = entry(model).params(backbone=backbone, layers=list(layers))
    return ModelSpec(model, (SIZE, SIZE), tuple(mean), tuple(std), params)


def worker_bare(data: Path, model: str) -> dict:
    """The backbone's forward pass alone, on the test images already decoded and normalised."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from vad.models.folding import fold_batch_norms

    settings = PATCHCORE if model == "patchcore" else FASTFLOW
    spec = _spec(model, settings["backbone"], settings["layers"], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    from vad.models.factory import build_model

    net = build_model(spec, pretrained=model == "patchcore")
    extractor = net.feature_extractor
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

    row = {"images": len(tensor)}
    for layout, name in ((torch.contiguous_format, "seconds"), (torch.channels_last, "channels_last_seconds")):
        extractor.to(memory_format=layout)
        batches = [batch.contiguous(memory_format=layout) for batch in tensor.split(BATCH)]
        row[name] = seconds(extractor, batches)
    # the same channels-last backbone with its batch norms folded into the convolutions, as ours runs it
    inner = extractor.feature_extractor if model == "patchcore" else extractor
    row["folded_seconds"] = seconds(fold_batch_norms(inner, batches[0][:1]), batches)
    return row | {"peak_rss_mb": _peak_rss_mb()}


def worker_work(data: Path, model: str) -> dict:
    """Multiply-adds per image of the FastFlow model (backbone, flows) and this CPU's best fp32 rate.

    The rate is that of a large matrix product on all cores, the most this CPU does in fp32: it bounds
    how many images per second any runtime can score with the same model.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT))
    from vad.models.factory import build_model

    spec = _spec(model, FASTFLOW["backbone"], FASTFLOW["layers"], (0.5,) * 3, (0.5,) * 3)
    net = build_model(spec, pretrained=False)
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


# ----------------------------------------------------------------------------- orchestration


def spawn(*args: str) -> dict:
    """Run one worker in a fresh process and return its JSON row."""
    out = WORK / "row.json"
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--worker", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        return {"error": tail or f"exit {result.returncode}", "process_seconds": wall}
    row = json.loads(out.read_text())
    row["process_seconds"] = wall
    return row


def record(rows: dict, name: str, row: dict) -> None:
    """Keep a row and append it to the log."""
    row["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows[name] = row
    print(json.dumps({name: row}), flush=True)
    with (ROOT / "results" / "speed-rows.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"name": name, **row}) + "\n")


def run_patchcore(data: Path, rows: dict) -> None:
    """PatchCore: bare backbone, ours (train, inference, cold single image), anomalib."""
    record(rows, "patchcore/bare", spawn("bare", str(data), "patchcore"))
    record(rows, "patchcore/ours-train", spawn("ours", str(data), "patchcore", "train", "1", "test"))
    record(rows, "patchcore/ours-inference", spawn("ours", str(data), "patchcore", "inference", "1", "test"))
    record(rows, "patchcore/ours-unlabelled", spawn("ours", str(data), "patchcore", "inference", "1", "unlabelled"))
    plan = _inference_plan(data, "patchcore", 1, "one")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--mode", "inference", "--config", str(plan)],
        capture_output=True,
        check=False,
    )
    cold = time.perf_counter() - started
    summary = plan.parent / "inference_artifacts" / "score" / "inference_summary.yaml"
    ok = done.returncode == 0 and summary.is_file()
    record(rows, "patchcore/ours-cold-one-image", {"seconds": cold, "summary_written": ok})


def run_fastflow(data: Path, rows: dict, epochs: int) -> None:
    """FastFlow: ours (train, inference) and anomalib, same epochs."""
    record(rows, "fastflow/ours-train", spawn("ours", str(data), "fastflow", "train", str(epochs), "test"))
    record(rows, "fastflow/ours-inference", spawn("ours", str(data), "fastflow", "inference", str(epochs), "test"))
    record(
        rows,
        "fastflow/ours-unlabelled",
        spawn("ours", str(data), "fastflow", "inference", str(epochs), "unlabelled"),
    )
    record(rows, "fastflow/anomalib", spawn("anomalib", str(data), "fastflow", str(epochs)))
    record(rows, "fastflow/work", spawn("work", str(data), "fastflow"))
    for mode, folder in (("train", "test"), ("inference", "unlabelled")):
        row = spawn("ours", str(data), "fastflow-default", mode, str(epochs), folder)
        record(rows, f"fastflow/ours-default-{mode}", row)


def table(rows: dict, epochs: int, part: str) -> str:
    """The markdown report of one part (``PatchCore``, ``FastFlow`` or ``scale``) of a run."""

    def get(name: str, key: str) -> float:
        return float(rows.get(name, {}).get(key, float("nan")))

    def per_second(name: str, seconds: str = "seconds") -> float:
        return get(name, "images") / get(name, seconds)

    def fmt(value: float, digits: int = 1) -> str:
        return "n/a" if value != value else f"{value:.{digits}f}"

    lines = []
    if part == "PatchCore":
        ours_fit, their_fit = get("patchcore/ours-train", "seconds"), get("patchcore/anomalib", "fit_seconds")
        ours_ips = per_second("patchcore/ours-unlabelled")
        labelled_ips = per_second("patchcore/ours-inference")
        their_ips = per_second("patchcore/anomalib", "predict_seconds")
        bare_ips = per_second("patchcore/bare")
        bare_cl_ips = per_second("patchcore/bare", "channels_last_seconds")
        bare_folded_ips = per_second("patchcore/bare", "folded_seconds")
        auroc_gap = get("patchcore/ours-inference", "image_auroc") - get("patchcore/anomalib", "image_auroc")
        lines += [
            f"**PatchCore** ({PATCHCORE['backbone']}, {' + '.join(PATCHCORE['layers'])}, {SIZE}x{SIZE} px, "
            f"coreset ratio {PATCHCORE['ratio']}, batch {BATCH}; 200 training images, 100 test images)\n",
            "| | ours | plain anomalib | ratio (ours vs anomalib) | bare backbone | ours / bare |",
            "|---|---|---|---|---|---|",
            f"| fit seconds | {fmt(ours_fit)} | {fmt(their_fit)} | {fmt(their_fit / ours_fit)}x faster | | |",
            f"| inference images/s (production run: no labels) | {fmt(ours_ips)} | {fmt(their_ips)} | "
            f"{fmt(ours_ips / their_ips)}x | {fmt(bare_ips)} | {fmt(100 * ours_ips / bare_ips, 0)}% |",
            f"| inference images/s (labelled run: + image and pixel metrics) | {fmt(labelled_ips)} | "
            f"{fmt(their_ips)} | {fmt(labelled_ips / their_ips)}x | {fmt(bare_ips)} | "
            f"{fmt(100 * labelled_ips / bare_ips, 0)}% |",
            f"| (bare backbone in channels-last; vs production run) | | | | "
            f"{fmt(bare_cl_ips)} | {fmt(100 * ours_ips / bare_cl_ips, 0)}% |",
            f"| (bare backbone in channels-last with batch norms folded, as ours runs it; vs production run) "
            f"| | | | {fmt(bare_folded_ips)} | {fmt(100 * ours_ips / bare_folded_ips, 0)}% |",
            f"| training peak RSS MB | {fmt(get('patchcore/ours-train', 'peak_rss_mb'), 0)} | "
            f"{fmt(get('patchcore/anomalib', 'fit_peak_rss_mb'), 0)} | | | |",
            f"| test image AUROC | {fmt(get('patchcore/ours-inference', 'image_auroc'), 3)} | "
            f"{fmt(get('patchcore/anomalib', 'image_auroc'), 3)} | "
            f"{fmt(auroc_gap, 3)} | | |",
            f"| cold single-image inference s (process start to summary) | "
            f"{fmt(get('patchcore/ours-cold-one-image', 'seconds'))} | | | | |",
        ]
    if part == "FastFlow":
        ours_epoch = get("fastflow/ours-train", "epoch_seconds")
        their_epoch = get("fastflow/anomalib", "epoch_seconds")
        ours_ips = per_second("fastflow/ours-unlabelled")
        labelled_ips = per_second("fastflow/ours-inference")
        their_ips = per_second("fastflow/anomalib", "predict_seconds")
        lines += [
            f"\n**FastFlow** ({FASTFLOW['backbone']} random weights, {' + '.join(FASTFLOW['layers'])}, "
            f"{SIZE}x{SIZE} px, 8 flow steps, batch {BATCH}, {epochs} epochs)\n",
            "| | ours | plain anomalib | ratio |",
            "|---|---|---|---|",
            f"| training seconds per epoch (mean; ours: training + validation on 30 images) | {fmt(ours_epoch)} | "
            f"{fmt(their_epoch)} | {fmt(their_epoch / ours_epoch, 2)}x as fast |",
            f"| training run seconds (ours: main.py train, start to artifacts; anomalib: Engine.fit) | "
            f"{fmt(get('fastflow/ours-train', 'seconds'))} | {fmt(get('fastflow/anomalib', 'fit_seconds'))} | "
            f"{fmt(get('fastflow/anomalib', 'fit_seconds') / get('fastflow/ours-train', 'seconds'), 2)}x as fast |",
            f"| inference images/s (production run: no labels) | {fmt(ours_ips)} | {fmt(their_ips)} | "
            f"{fmt(ours_ips / their_ips)}x |",
            f"| inference images/s (labelled run: + image and pixel metrics) | {fmt(labelled_ips)} | "
            f"{fmt(their_ips)} | {fmt(labelled_ips / their_ips)}x |",
            f"| training peak RSS MB | {fmt(get('fastflow/ours-train', 'peak_rss_mb'), 0)} | "
            f"{fmt(get('fastflow/anomalib', 'fit_peak_rss_mb'), 0)} | |",
        ]
        work = get("fastflow/work", "backbone_gmac") + get("fastflow/work", "flows_gmac")
        our_work = get("fastflow/work", "backbone_gmac") + get("fastflow/work", "our_flows_gmac")
        ceiling = get("fastflow/work", "matmul_gmac_per_s")
        default_ips = per_second("fastflow/ours-default-inference")
        lines += [
            f"\nWork per image: {fmt(get('fastflow/work', 'backbone_gmac'), 2)} GMAC in the backbone + "
            f"{fmt(get('fastflow/work', 'flows_gmac'), 2)} GMAC in the flows = {fmt(work, 2)} GMAC. This CPU's "
            f"best fp32 rate (a 2048x2048 matrix product on {fmt(get('fastflow/work', 'threads'), 0)} threads) is "
            f"{fmt(ceiling)} GMAC/s, so no fp32 runtime can score this model faster than {fmt(ceiling / work)} "
            f"images/s; anomalib's {fmt(their_ips)} images/s already runs at "
            f"{fmt(100 * their_ips * work / ceiling, 0)}% of that, and 2x anomalib would need "
            f"{fmt(200 * their_ips * work / ceiling, 0)}%. Ours computes the same hidden variables with "
            f"{fmt(our_work, 2)} GMAC (permutations as gathers, not 1x1 convolutions): at most "
            f"{fmt(ceiling / our_work)} images/s, {fmt(ceiling / our_work / their_ips)}x anomalib, at 100% of the "
            f"CPU's peak.\n",
            "| product default FastFlow (tf_efficientnet_lite0, pretrained, stride-8 + stride-16) | ours | "
            "anomalib (resnet18, above) | ratio |",
            "|---|---|---|---|",
            f"| training seconds per epoch (mean, as above) | "
            f"{fmt(get('fastflow/ours-default-train', 'epoch_seconds'))} | {fmt(their_epoch)} | "
            f"{fmt(their_epoch / get('fastflow/ours-default-train', 'epoch_seconds'))}x faster |",
            f"| inference images/s (production run: no labels) | {fmt(default_ips)} | {fmt(their_ips)} | "
            f"{fmt(default_ips / their_ips)}x |",
        ]
    scale = sorted(
        ((int(name.split("/")[1].split("-")[0]), row) for name, row in rows.items() if name.startswith("scale/")),
        key=lambda item: item[0],
    )
    inference_scale = [(count, row) for count, row in scale if "images" in row]
    scale = [(count, row) for count, row in scale if "images" not in row]
    if part == "scale":
        base = get("patchcore/ours-train", "peak_rss_mb")
        lines += [
            "\n**PatchCore training at scale** (ours, same settings)\n",
            "| training images | fit seconds | peak RSS MB | RSS vs 200 images |",
            "|---|---|---|---|",
            f"| 200 | {fmt(get('patchcore/ours-train', 'seconds'))} | {fmt(base, 0)} | 1.00x |",
        ]
        for count, row in scale:
            rss = float(row.get("peak_rss_mb", float("nan")))
            lines.append(
                f"| {count} | {fmt(float(row.get('seconds', float('nan'))))} | {fmt(rss, 0)} | {fmt(rss / base, 2)}x |"
            )
        small = get("patchcore/ours-unlabelled", "peak_rss_mb")
        if inference_scale:
            lines += [
                "\n**Production inference at scale** (no CSV; the 200-image model scores the training images "
                "of the larger set)\n",
                "| images scored | seconds | images/s | peak RSS MB | RSS vs 100 images |",
                "|---|---|---|---|---|",
                f"| {fmt(get('patchcore/ours-unlabelled', 'images'), 0)} | "
                f"{fmt(get('patchcore/ours-unlabelled', 'seconds'))} | "
                f"{fmt(per_second('patchcore/ours-unlabelled'))} | "
                f"{fmt(small, 0)} | 1.00x |",
            ]
        for _, row in inference_scale:
            seconds, rss = float(row.get("seconds", float("nan"))), float(row.get("peak_rss_mb", float("nan")))
            lines.append(
                f"| {row['images']} | {fmt(seconds)} | {fmt(row['images'] / seconds)} | {fmt(rss, 0)} | "
                f"{fmt(rss / small, 2)}x |"
            )
    errors = {name: row["error"] for name, row in rows.items() if "error" in row}
    for name, error in errors.items():
        lines.append(f"\n{name} failed: `{error.splitlines()[-1]}`")
    return "\n".join(lines)


def _base(rows: dict, title: str) -> dict:
    """The 200-image training and 100-image inference rows the scale tables compare with."""
    names = ("patchcore/ours-train", "patchcore/ours-unlabelled") if title == "scale" else ()
    return {name: rows[name] for name in names if name in rows}


def _logged_rows() -> dict:
    """The latest row of every measurement in ``results/speed-rows.jsonl``."""
    rows = {}
    for line in (ROOT / "results" / "speed-rows.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[row.pop("name")] = row
    return rows


def main() -> None:
    """Run the benchmark (or one worker) and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=["patchcore", "fastflow", "scale", "scale-inference"],
        help="one part of the benchmark",
    )
    parser.add_argument("--scale", nargs="*", type=int, default=[], help="also train ours on this many images")
    parser.add_argument("--epochs", type=int, default=3, help="FastFlow epochs (both sides)")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument(
        "--from-log",
        action="store_true",
        help="only rewrite the tables from the latest rows in results/speed-rows.jsonl",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, data, model, *rest = args.worker
        if kind == "ours":
            row = worker_ours(Path(data), model, rest[0], int(rest[1]), rest[2])
        elif kind == "work":
            row = worker_work(Path(data), model)
        elif kind == "anomalib":
            row = worker_anomalib(Path(data), model, int(rest[0]))
        else:
            row = worker_bare(Path(data), model)
        args.out.write_text(json.dumps(row))
        return
    rows: dict = {}
    if args.from_log:
        _write(_logged_rows(), args.epochs, from_log=True)
        return
    data = build_data(args.train_images)
    if args.only in (None, "patchcore"):
        run_patchcore(data, rows)
    if args.only in (None, "fastflow"):
        run_fastflow(data, rows, args.epochs)
    if args.only in (None, "patchcore"):  # last: its greedy coreset takes the better part of an hour
        record(rows, "patchcore/anomalib", spawn("anomalib", str(data), "patchcore", "1"))
    if args.only == "scale":  # the 200-image run the ratios refer to
        record(rows, "patchcore/ours-train", spawn("ours", str(data), "patchcore", "train", "1", "test"))
    if args.only == "scale-inference":  # the 100-image production run the inference ratios refer to
        unlabelled = spawn("ours", str(data), "patchcore", "inference", "1", "unlabelled")
        record(rows, "patchcore/ours-unlabelled", unlabelled)
    for count in args.scale if args.only in (None, "scale", "scale-inference") else []:
        bigger = build_data(count)
        if args.only != "scale-inference":
            record(rows, f"scale/{count}-train", spawn("ours", str(bigger), "patchcore", "train", "1", "test"))
        # all its OK training images, scored by the 200-image model: only the number of images differs
        _link_images(bigger / "train" / "good", bigger / "bulk")
        row = spawn("ours", str(data), "patchcore", "inference", "1", str(bigger / "bulk"))
        record(rows, f"scale/{count}-inference", row)
    if args.only == "scale-inference":  # the training rows of the scale table come from earlier runs
        _write(_logged_rows(), args.epochs, from_log=True, parts=("scale",))
        return
    _write(rows, args.epochs)


def _write(rows: dict, epochs: int, from_log: bool = False, parts: tuple[str, ...] | None = None) -> None:
    """Write one BENCHMARKS.md section per part present in ``rows`` (or only ``parts``)."""
    from benchmarks.report import write_section

    command = f"Command: `{('python -m benchmarks.speed ' + ' '.join(sys.argv[1:])).strip()}`\n\n"
    markers = {"PatchCore": "patchcore/anomalib", "FastFlow": "fastflow/ours-train", "scale": "scale/"}
    for title, marker in markers.items():
        if (parts is None or title in parts) and any(name.startswith(marker) for name in rows):
            mine = {name: row for name, row in rows.items() if name.startswith(marker.split("/")[0] + "/")}
            if from_log:
                stamps = sorted(row["finished"] for row in mine.values() if "finished" in row)
                span = f"{stamps[0]} to {stamps[-1]}" if stamps else "earlier runs"
                command = (
                    f"Rows of `python -m benchmarks.speed` runs finished {span} (tables rebuilt by `--from-log`)\n\n"
                )
            body = command + table(mine | _base(rows, title), epochs, title)
            write_section(ROOT / "BENCHMARKS.md", f"Speed: {title}", body)


if __name__ == "__main__":
    main()
