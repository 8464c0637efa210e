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

    .venv/bin/python -m benchmarks.speed [--only patchcore|fastflow|scale|scale-inference]
        [--scale 2000 10000] [--epochs 3] [--from-log] [--section Speed] [--benchmarks-file PATH]

Rows go to ``results/speed-rows.jsonl`` as they finish; the table to ``BENCHMARKS.md`` ("Speed").

One job per module: :mod:`~benchmarks.speed.settings` (the models' settings), :mod:`~benchmarks.speed.data` (the
gravel images), :mod:`~benchmarks.speed.plans` (our plans), :mod:`~benchmarks.speed.ours` (our pipeline's worker),
:mod:`~benchmarks.speed.plain` (plain anomalib's worker), :mod:`~benchmarks.speed.backbone` (the bare backbone's
and the work-per-image workers), :mod:`~benchmarks.speed.runs` (the measurements, each in its own process),
:mod:`~benchmarks.speed.tables` (the BENCHMARKS.md sections) and :mod:`~benchmarks.speed.cli` (the command).
"""
