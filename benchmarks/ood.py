"""The out-of-distribution check measured: other products flagged, own OK and NG images not, and what it costs.

Each dataset's model is the bundled plan's default (PatchCore) trained through ``main.py --mode train`` on the
dataset's ``train/`` folder, which fits its check (``ood_check.json``). The model is then loaded with
``Detector.load(..., runtime="torch")`` and scores the held-out test images of its own dataset (OK and NG
apart) and of every other dataset; an image is flagged when ``in_distribution`` is False (``ood_score`` at
least 1). The datasets are the synthetic products of :mod:`benchmarks.harness.data` and, with ``--cells``, the
monocrystalline solar cells of :mod:`benchmarks.real_defects` (its split 0; the polycrystalline cells are never
read).

The check's cost is measured on each model in this process: ``score_images`` (scores only) against
``score_described`` plus the check's ``scores`` (what every runtime runs), on the same decoded images in
batches of 8, each batch scored both ways back to back (which runs first alternating); per round (every batch
once) the cost is the checked seconds over the plain ones, minus one. The product named by ``--export`` is
trained with the bundled plan's exports (OpenVINO and ONNX, with their parity gates) and the same cost is
measured in those runtimes.

    .venv/bin/python -m benchmarks.ood [--products gravel brick grass coffee] [--cells] [--export gravel]
        [--rounds 7] [--cost-images 64] [--reuse] [--benchmarks-file scratch.md]

Rows go to ``results/ood-rows.jsonl`` and every image's ``ood_score`` to ``results/ood/scores.csv``; the tables
to ``BENCHMARKS.md`` (section "Out-of-distribution check").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.harness import data as dataset
from benchmarks.harness.measure import error_tail, main_py, run_timed
from benchmarks.harness.paths import RESULTS
from benchmarks.harness.plans import (
    add_control,
    bundled_plan,
    inference_args,
    keep_result,
    reused_result,
    set_data,
    train_args,
)
from benchmarks.harness.report import add_report_options, command_line, fmt, write_section
from benchmarks.harness.rows import append_rows

if TYPE_CHECKING:
    from vad.detector import Detector

WORK = RESULTS / "ood"
OK_LABEL = "good"
CELLS = "mono cells"
BATCH = 8
CRITERIA = {"others_flagged": 99.0, "own_flagged": 1.0, "cost": 5.0}  # issue 29: percentages
EXPORT_RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Dataset:
    """A dataset the benchmark trains on and scores.

    Attributes:
        name: Its name in the tables.
        train: Its ``train/`` folder (the train CSV with its split column).
        test_csv: Its labelled test CSV (``image_path`` relative to the CSV, ``label``; OK is ``good``).
    """

    name: str
    train: Path
    test_csv: Path

    def test_images(self) -> tuple[list[Path], np.ndarray]:
        """The test images and which are NG.

        Returns:
            The files, in the CSV's order, and a bool array (True: NG).
        """
        table = pd.read_csv(self.test_csv, dtype=str, keep_default_na=False)
        files = [self.test_csv.parent / path for path in table["image_path"]]
        return files, (table["label"] != OK_LABEL).to_numpy()


def datasets(products: Sequence[str], cells: bool) -> list[Dataset]:
    """The products' folders (generated, or reused while their stamp matches) and the cells' split 0.

    Args:
        products: Product names of :data:`benchmarks.harness.data.PRODUCTS`.
        cells: Add the monocrystalline cells (needs the ``elpv-dataset`` package).

    Returns:
        The datasets.
    """
    built = dataset.build((RESULTS / "data").resolve(), tuple(products))
    found = [
        Dataset(product, folder / "train", folder / "test" / "inference.csv") for (product, _), folder in built.items()
    ]
    if cells:
        from benchmarks import real_defects  # the cells' reader: mono only

        split = real_defects.build_split(
            (RESULTS / "real_defects" / "data" / "split0").resolve(), real_defects.cells(), 0
        )
        found.append(Dataset(CELLS, split / "train", split / "test" / "test.csv"))
    return found


def make_plan(data: Dataset, export: bool) -> dict:
    """The bundled plan trained on a dataset: no heatmaps, no tracking, and no exports unless asked for.

    Pictures and exported graphs change no score and no check; they only cost time (as ``real_defects --fast``).

    Args:
        data: The dataset.
        export: Keep the bundled plan's exports (and their parity gates).

    Returns:
        The plan.
    """
    plan = add_control(set_data(bundled_plan(), data.train, data.test_csv.parent), tracking=False)
    args = train_args(plan)
    args["save_validation_heatmap"] = False
    if not export:
        args["export"] = []
    inference_args(plan)["save_anomaly_maps"] = False
    return plan


def train(work: Path, data: Dataset, export: bool, reuse: bool) -> dict:
    """Train a dataset's model through ``main.py --mode train`` (or reuse a finished run of the same plan).

    Args:
        work: The run's folder (plan, artifacts, result).
        data: The dataset.
        export: Keep the bundled plan's exports.
        reuse: Reuse a finished run whose plan is unchanged.

    Returns:
        ``train_s`` and ``models`` (the models folder), or ``error``.
    """
    models = work / "train_artifacts" / "models"
    reused = reused_result(work, make_plan(data, export), reuse)
    if reused is not None and models.is_dir():
        return reused
    done, seconds = run_timed(main_py("--mode", "train", "--config", str(work / "experimental_plan.yaml")))
    if done.returncode != 0:
        return {"error": error_tail(done, 1)}
    print(f"  {data.name}: trained in {seconds:.0f} s", flush=True)
    return keep_result(work, {"train_s": seconds, "models": str(models)})


def ood_scores(detector: Detector, pictures: Sequence[Image.Image]) -> np.ndarray:
    """The ``ood_score`` of images, as ``Detector.predict`` gives it.

    Args:
        detector: The loaded model (with a check).
        pictures: Decoded images.

    Returns:
        (N,) scores.
    """
    found = [p.ood_score for batch in detector.iter_predict(pictures, BATCH) for p in batch.predictions]
    return np.array([np.nan if value is None else value for value in found], dtype=np.float64)


def flagged_percent(scores: np.ndarray) -> float:
    """Percentage of images out of distribution (``ood_score`` at least 1; NaN counts as outside, as in scoring).

    Args:
        scores: ``ood_score`` values.

    Returns:
        The percentage (NaN for no images).
    """
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(~(scores < 1.0)) * 100) if len(scores) else float("nan")


def flag_row(model: str, scores: dict[str, np.ndarray], is_ng: dict[str, np.ndarray]) -> dict:
    """One trained model's figures from the ``ood_score`` of every dataset's test images.

    Args:
        model: The dataset it was trained on.
        scores: Dataset name -> its test images' scores.
        is_ng: Dataset name -> which of those images are NG.

    Returns:
        ``model``, ``own_ok`` and ``own_ng`` (% flagged), ``others`` (dataset -> % flagged), ``others_all``
        (% of all other datasets' images pooled), ``other_min`` (smallest score among them), ``own_ok_max``,
        ``own_ng_max``, and the image counts.
    """
    own, ng = scores[model], is_ng[model]
    others = {name: values for name, values in scores.items() if name != model}
    pooled = np.concatenate(list(others.values())) if others else np.zeros(0)
    return {
        "model": model,
        "own_ok": flagged_percent(own[~ng]),
        "own_ng": flagged_percent(own[ng]),
        "own_ok_max": float(np.nanmax(own[~ng])) if (~ng).any() else float("nan"),
        "own_ng_max": float(np.nanmax(own[ng])) if ng.any() else float("nan"),
        "others": {name: flagged_percent(values) for name, values in others.items()},
        "others_all": flagged_percent(pooled),
        "other_min": float(np.nanmin(pooled)) if len(pooled) else float("nan"),
        "images": {"own_ok": int((~ng).sum()), "own_ng": int(ng.sum()), "others": len(pooled)},
    }


def flag_table(rows: Sequence[dict]) -> str:
    """The flag rates as a markdown table: a row per trained model, a column per other dataset.

    Args:
        rows: :func:`flag_row` rows.

    Returns:
        The table.
    """
    names = list(dict.fromkeys([*(row["model"] for row in rows), *(name for row in rows for name in row["others"])]))
    head = (
        "| trained on | own OK flagged % | own NG flagged % | "
        + " | ".join(f"{name} flagged %" for name in names)
        + " | all others flagged % | smallest ood_score, others | largest ood_score, own OK / NG |"
    )
    lines = [head, "|" + "---|" * (len(names) + 6)]
    for row in rows:
        cells = [fmt(row["others"][name]) if name in row["others"] else "-" for name in names]
        lines.append(
            f"| {row['model']} | {fmt(row['own_ok'])} | {fmt(row['own_ng'])} | {' | '.join(cells)} | "
            f"{fmt(row['others_all'])} | {fmt(row['other_min'], 2)} | "
            f"{fmt(row['own_ok_max'], 2)} / {fmt(row['own_ng_max'], 2)} |"
        )
    return "\n".join(lines)


def _seconds(call: Callable[[int], object], index: int) -> float:
    started = time.perf_counter()
    call(index)
    return time.perf_counter() - started


def cost_rounds(
    plain: Callable[[int], object], checked: Callable[[int], object], batches: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds of two calls over the same batches, interleaved batch by batch (which runs first alternates).

    Each batch is scored both ways back to back, so that the machine's load, which drifts on shared cores,
    falls on both alike; a round sums each side's seconds over every batch.

    Args:
        plain: Scores batch ``i``.
        checked: Scores batch ``i`` and checks it.
        batches: How many batches a round holds.
        rounds: Measured rounds (after one unmeasured warm-up of the first batch each way).

    Returns:
        The plain and the checked seconds, a value per round.
    """
    plain(0)
    checked(0)
    plain_s, checked_s = [], []
    for _ in range(rounds):
        plain_total = checked_total = 0.0
        for index in range(batches):
            if index % 2:
                checked_total += _seconds(checked, index)
                plain_total += _seconds(plain, index)
            else:
                plain_total += _seconds(plain, index)
                checked_total += _seconds(checked, index)
        plain_s.append(plain_total)
        checked_s.append(checked_total)
    return plain_s, checked_s


def cost_row(model: str, runtime: str, images: int, plain_s: Sequence[float], checked_s: Sequence[float]) -> dict:
    """The check's cost from paired rounds: median images/s each, and the median of the rounds' cost.

    Args:
        model: The dataset it was trained on.
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        images: Images scored per round.
        plain_s: Seconds of each round, scores only.
        checked_s: Seconds of each round, scores and check.

    Returns:
        ``model``, ``runtime``, ``plain_rate``, ``checked_rate`` (images/s), ``cost`` (% of scoring time, median
        of the rounds) and ``cost_min``, ``cost_max``.
    """
    costs = [(checked / plain - 1) * 100 for plain, checked in zip(plain_s, checked_s, strict=True)]
    return {
        "model": model,
        "runtime": runtime,
        "plain_rate": images / statistics.median(plain_s),
        "checked_rate": images / statistics.median(checked_s),
        "cost": statistics.median(costs),
        "cost_min": min(costs),
        "cost_max": max(costs),
        "rounds": len(costs),
    }


def cost_table(rows: Sequence[dict]) -> str:
    """The cost as a markdown table.

    Args:
        rows: :func:`cost_row` rows.

    Returns:
        The table.
    """
    lines = [
        "| trained on | runtime | descriptors from | scores only, images/s | scores + check, images/s "
        "| check's cost, % of scoring time (rounds' min to max) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['runtime']} | {row.get('pass', 'n/a')} | {fmt(row['plain_rate'])} | "
            f"{fmt(row['checked_rate'])} | {row['cost']:+.1f} ({row['cost_min']:+.1f} to {row['cost_max']:+.1f}) |"
        )
    return "\n".join(lines)


def _worst(figures: Sequence[tuple[float, str]], pick: Callable[..., float]) -> tuple[float, str]:
    """The worst figure and where it is (or how many share it, where several do)."""
    if not figures:
        return float("nan"), "none"
    value = pick(figure for figure, _ in figures)
    where = [name for figure, name in figures if figure == value]
    return value, where[0] if len(where) == 1 else f"{len(where)} of {len(figures)}"


def verdicts(flags: Sequence[dict], costs: Sequence[dict]) -> str:
    """Issue 29's three criteria against the figures, one line each.

    Args:
        flags: :func:`flag_row` rows.
        costs: :func:`cost_row` rows.

    Returns:
        The lines (markdown list).
    """

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    others = [(value, f"{row['model']} model, {name}") for row in flags for name, value in row["others"].items()]
    own = [(row[key], f"{row['model']} {kind}") for row in flags for key, kind in (("own_ok", "OK"), ("own_ng", "NG"))]
    lowest, lowest_at = _worst(others, min)
    highest, highest_at = _worst(own, max)
    lines = [
        f"- Another dataset's images flagged, at least {CRITERIA['others_flagged']:.0f}%: lowest {fmt(lowest)}% "
        f"({lowest_at}): {met(lowest >= CRITERIA['others_flagged'])}.",
        f"- Own held-out OK and NG images flagged, at most {CRITERIA['own_flagged']:.0f}%: highest {fmt(highest)}% "
        f"({highest_at}): {met(highest <= CRITERIA['own_flagged'])}.",
    ]
    for runtime in dict.fromkeys(row["runtime"] for row in costs):
        cost, at = max((row["cost"], row["model"]) for row in costs if row["runtime"] == runtime)
        lines.append(
            f"- Cost in {runtime}, at most {CRITERIA['cost']:.0f}% of scoring time: highest median {fmt(cost)}% "
            f"({at} model): {met(cost <= CRITERIA['cost'])}."
        )
    return "\n".join(lines)


def cost_note(rows: Sequence[dict]) -> str:
    """What the "descriptors from" column means for the rows measured (empty when no row runs a second pass).

    Args:
        rows: :func:`cost_row` rows with their ``pass``.

    Returns:
        The paragraph.
    """
    second = [f"{row['model']} in {row['runtime']}" for row in rows if row.get("pass") == "second backbone pass"]
    if not second:
        return ""
    return (
        f"Second backbone pass ({', '.join(second)}): scoring handed the check no feature maps, so "
        "`score_described` ran the backbone again in torch for the descriptors. PatchCore's torch scorer on the "
        "CPU runs its backbone and patch embedding as one ONNX Runtime graph that outputs the embedding only "
        "(`PatchcoreScorer.prepare`), so the tap in `GraphScorer.features` never sees its feature maps; the "
        "exported graphs return the descriptor as an extra output of the same pass."
    )


def measure_cost(detector: Detector, model: str, pictures: Sequence[Image.Image], rounds: int) -> dict:
    """The check's cost on one loaded model (see :func:`cost_rounds`).

    Args:
        detector: The loaded model (with a check).
        model: The dataset it was trained on.
        pictures: The decoded images scored each round.
        rounds: Measured rounds.

    Returns:
        A :func:`cost_row` row.
    """
    trained, check = detector.trained, detector.trained.ood
    assert check is not None, "the model has no out-of-distribution check"
    batches = [list(pictures[start : start + BATCH]) for start in range(0, len(pictures), BATCH)]

    def plain(index: int) -> None:
        trained.score_images(batches[index], maps=False)

    def checked(index: int) -> None:
        _, _, descriptors = trained.score_described(batches[index], maps=False)
        assert descriptors is not None, "the scorer gave no descriptors"
        check.scores(descriptors)

    plain_s, checked_s = cost_rounds(plain, checked, len(batches), rounds)
    return {**cost_row(model, trained.runtime, len(pictures), plain_s, checked_s), "pass": descriptor_pass(detector)}


def descriptor_pass(detector: Detector) -> str:
    """Where a loaded model's descriptors come from: its scoring pass, or a backbone pass of their own.

    An exported graph returns them as an extra output. In torch the scorer hands the feature maps of its scoring
    pass to an open tap (:mod:`vad.ood.descriptor`); where scoring taps none (PatchCore on the CPU runs its
    backbone and patch embedding as one ONNX Runtime graph, which gives the embedding only),
    ``score_described`` runs the backbone again for them.

    Args:
        detector: The loaded model.

    Returns:
        ``graph output``, ``scoring pass`` or ``second backbone pass``.
    """
    from vad.ood.descriptor import descriptor_tap

    trained = detector.trained
    if trained.runtime != "torch":
        return "graph output"
    picture = Image.new("RGB", (64, 64))
    with descriptor_tap() as tapped:
        trained.score_images([picture], maps=False)
    return "scoring pass" if len(tapped) == 1 else "second backbone pass"


def section_body(
    command: str,
    export: str,
    counts: dict[str, tuple[int, int]],
    trained_s: dict[str, float],
    flags: Sequence[dict],
    costs: Sequence[dict],
    args: argparse.Namespace,
) -> str:
    """The section's text: what ran, the flag table, the cost table and the criteria.

    Args:
        command: The command line.
        export: The product trained with exports ('' none).
        counts: Dataset -> its test images (OK, NG).
        trained_s: Dataset -> seconds its training took.
        flags: :func:`flag_row` rows.
        costs: :func:`cost_row` rows.
        args: The options (``cost_images``, ``rounds``).

    Returns:
        The markdown.
    """
    images = ", ".join(f"{name} {ok} OK + {ng} NG" for name, (ok, ng) in counts.items())
    trained = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in trained_s.items())
    note = cost_note(costs)
    return (
        f"Command: `{command}`\n\n"
        "Each model is the bundled plan's default (PatchCore, tf_efficientnet_lite0, 320 px, coreset 0.1) trained by "
        "`main.py --mode train` on one dataset's `train/` folder (heatmaps off; exports only for "
        f'{export or "none"}), loaded with `Detector.load(..., runtime="torch")`, scoring the held-out test '
        f"images of every dataset: {images}. Flagged: `in_distribution` False (`ood_score` at least 1). "
        f"Training took {trained} (wall time of `main.py` when each model was trained; `--reuse` keeps them).\n\n"
        + flag_table(flags)
        + "\n\nThe check's cost, in the same process on the same model: `score_images(batch, maps=False)` against "
        "`score_described(batch, maps=False)` and the check's `scores`, batches of 8, "
        f"{args.cost_images} of the model's own test images a round, {args.rounds} rounds, each batch scored both "
        "ways back to back (which first alternating); images/s are the rounds' medians, the cost is the median of "
        "each round's checked over plain seconds, minus 1 (a ratio, on 2 shared cores).\n\n"
        + cost_table(costs)
        + (f"\n\n{note}" if note else "")
        + "\n\nIssue 29's criteria:\n\n"
        + verdicts(flags, costs)
    )


def main() -> None:
    """Train each dataset's model, score every dataset with it, time the check, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", nargs="+", default=list(dataset.PRODUCTS), choices=dataset.PRODUCTS)
    parser.add_argument("--cells", action="store_true", help="add the monocrystalline cells (elpv-dataset)")
    parser.add_argument(
        "--export", default="gravel", help="the product trained with the bundled exports, timed in them too ('' none)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds of the cost, each side")
    parser.add_argument("--cost-images", type=int, default=64, help="own test images scored per cost round")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--reuse", action="store_true", help="reuse trained models whose plan is unchanged")
    add_report_options(parser, "Out-of-distribution check")
    args = parser.parse_args()
    if args.export and args.export not in args.products:
        parser.error(f"--export {args.export!r} is not one of the --products")

    from vad.detector import Detector
    from vad.images import read_image

    found = datasets(args.products, args.cells)
    tests = {data.name: data.test_images() for data in found}
    pictures = {name: [read_image(file) for file in files] for name, (files, _) in tests.items()}
    is_ng = {name: ng for name, (_, ng) in tests.items()}
    log = RESULTS / "ood-rows.jsonl"
    flags, costs, trained_s, per_image = [], [], {}, []
    for data in found:
        work = args.work.resolve() / data.name.replace(" ", "-")
        result = train(work, data, data.name == args.export, args.reuse)
        if "error" in result:
            raise SystemExit(f"{data.name}: training failed: {result['error']}")
        trained_s[data.name] = result["train_s"]
        detector = Detector.load(Path(result["models"]), runtime="torch")
        if not detector.has_ood_check:
            raise SystemExit(f"{data.name}: the trained model has no out-of-distribution check")
        scores = {name: ood_scores(detector, images) for name, images in pictures.items()}
        for name, values in scores.items():
            files = tests[name][0]
            per_image += [
                {"model": data.name, "dataset": name, "image": str(file), "is_ng": bool(ng), "ood_score": value}
                for file, ng, value in zip(files, is_ng[name], values, strict=True)
            ]
        flags.append(flag_row(data.name, scores, is_ng))
        own = pictures[data.name][: args.cost_images]
        costs.append(measure_cost(detector, data.name, own, args.rounds))
        if data.name == args.export:
            for runtime in EXPORT_RUNTIMES:
                costs.append(
                    measure_cost(Detector.load(Path(result["models"]), runtime=runtime), data.name, own, args.rounds)
                )
        append_rows(log, [flags[-1], *(row for row in costs if row["model"] == data.name)])
    args.work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(per_image).to_csv(args.work / "scores.csv", index=False)
    counts = {name: (int((~ng).sum()), int(ng.sum())) for name, ng in is_ng.items()}
    body = section_body(command_line("benchmarks.ood"), args.export, counts, trained_s, flags, costs, args)
    write_section(args.benchmarks_file, args.section, body)
    print(body)


if __name__ == "__main__":
    main()
