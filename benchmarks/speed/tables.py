"""The speed benchmark's BENCHMARKS.md sections: PatchCore, FastFlow and scale, from the rows of a run or the log."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness.report import command_line, fmt, write_section
from benchmarks.harness.rows import latest_rows
from benchmarks.speed.settings import BATCH, FASTFLOW, LOG, PATCHCORE, SIZE

MARKERS = {"PatchCore": "patchcore/anomalib", "FastFlow": "fastflow/ours-train", "scale": "scale/"}


def get(rows: dict, name: str, key: str) -> float:
    """One figure of one row (NaN when missing).

    Args:
        rows: The rows, by name.
        name: The row.
        key: The figure.

    Returns:
        The figure.
    """
    return float(rows.get(name, {}).get(key, float("nan")))


def per_second(rows: dict, name: str, seconds: str = "seconds") -> float:
    """A row's images per second.

    Args:
        rows: The rows, by name.
        name: The row.
        seconds: Its seconds' figure.

    Returns:
        ``images / seconds``.
    """
    return get(rows, name, "images") / get(rows, name, seconds)


def patchcore_lines(rows: dict) -> list[str]:
    """The PatchCore table: ours, plain anomalib and the bare backbone.

    Args:
        rows: The rows, by name.

    Returns:
        Its lines.
    """
    lines: list[str] = []
    ours_fit, their_fit = get(rows, "patchcore/ours-train", "seconds"), get(rows, "patchcore/anomalib", "fit_seconds")
    ours_ips = per_second(rows, "patchcore/ours-unlabelled")
    labelled_ips = per_second(rows, "patchcore/ours-inference")
    their_ips = per_second(rows, "patchcore/anomalib", "predict_seconds")
    bare_ips = per_second(rows, "patchcore/bare")
    bare_cl_ips = per_second(rows, "patchcore/bare", "channels_last_seconds")
    bare_folded_ips = per_second(rows, "patchcore/bare", "folded_seconds")
    auroc_gap = get(rows, "patchcore/ours-inference", "image_auroc") - get(rows, "patchcore/anomalib", "image_auroc")
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
        f"| training peak RSS MB | {fmt(get(rows, 'patchcore/ours-train', 'peak_rss_mb'), 0)} | "
        f"{fmt(get(rows, 'patchcore/anomalib', 'fit_peak_rss_mb'), 0)} | | | |",
        f"| test image AUROC | {fmt(get(rows, 'patchcore/ours-inference', 'image_auroc'), 3)} | "
        f"{fmt(get(rows, 'patchcore/anomalib', 'image_auroc'), 3)} | "
        f"{fmt(auroc_gap, 3)} | | |",
        f"| cold single-image inference s (process start to summary) | "
        f"{fmt(get(rows, 'patchcore/ours-cold-one-image', 'seconds'))} | | | | |",
    ]
    return lines


def fastflow_lines(rows: dict, epochs: int) -> list[str]:
    """The FastFlow tables: ours against plain anomalib, the work per image, the product's default FastFlow.

    Args:
        rows: The rows, by name.
        epochs: The epochs both sides trained.

    Returns:
        Their lines.
    """
    lines: list[str] = []
    ours_epoch = get(rows, "fastflow/ours-train", "epoch_seconds")
    their_epoch = get(rows, "fastflow/anomalib", "epoch_seconds")
    ours_ips = per_second(rows, "fastflow/ours-unlabelled")
    labelled_ips = per_second(rows, "fastflow/ours-inference")
    their_ips = per_second(rows, "fastflow/anomalib", "predict_seconds")
    ours_run, their_run = get(rows, "fastflow/ours-train", "seconds"), get(rows, "fastflow/anomalib", "fit_seconds")
    lines += [
        f"\n**FastFlow** ({FASTFLOW['backbone']} random weights, {' + '.join(FASTFLOW['layers'])}, "
        f"{SIZE}x{SIZE} px, 8 flow steps, batch {BATCH}, {epochs} epochs)\n",
        "| | ours | plain anomalib | ratio |",
        "|---|---|---|---|",
        f"| training seconds per epoch (mean; ours: training + validation on 30 images) | {fmt(ours_epoch)} | "
        f"{fmt(their_epoch)} | {fmt(their_epoch / ours_epoch, 2)}x as fast |",
        f"| training run seconds (ours: main.py train, start to artifacts; anomalib: Engine.fit) | "
        f"{fmt(ours_run)} | {fmt(their_run)} | {fmt(their_run / ours_run, 2)}x as fast |",
        f"| inference images/s (production run: no labels) | {fmt(ours_ips)} | {fmt(their_ips)} | "
        f"{fmt(ours_ips / their_ips)}x |",
        f"| inference images/s (labelled run: + image and pixel metrics) | {fmt(labelled_ips)} | "
        f"{fmt(their_ips)} | {fmt(labelled_ips / their_ips)}x |",
        f"| training peak RSS MB | {fmt(get(rows, 'fastflow/ours-train', 'peak_rss_mb'), 0)} | "
        f"{fmt(get(rows, 'fastflow/anomalib', 'fit_peak_rss_mb'), 0)} | |",
    ]
    work = get(rows, "fastflow/work", "backbone_gmac") + get(rows, "fastflow/work", "flows_gmac")
    our_work = get(rows, "fastflow/work", "backbone_gmac") + get(rows, "fastflow/work", "our_flows_gmac")
    ceiling = get(rows, "fastflow/work", "matmul_gmac_per_s")
    default_ips = per_second(rows, "fastflow/ours-default-inference")
    lines += [
        f"\nWork per image: {fmt(get(rows, 'fastflow/work', 'backbone_gmac'), 2)} GMAC in the backbone + "
        f"{fmt(get(rows, 'fastflow/work', 'flows_gmac'), 2)} GMAC in the flows = {fmt(work, 2)} GMAC. This CPU's "
        f"best fp32 rate (a 2048x2048 matrix product on {fmt(get(rows, 'fastflow/work', 'threads'), 0)} threads) is "
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
        f"{fmt(get(rows, 'fastflow/ours-default-train', 'epoch_seconds'))} | {fmt(their_epoch)} | "
        f"{fmt(their_epoch / get(rows, 'fastflow/ours-default-train', 'epoch_seconds'))}x faster |",
        f"| inference images/s (production run: no labels) | {fmt(default_ips)} | {fmt(their_ips)} | "
        f"{fmt(default_ips / their_ips)}x |",
    ]
    return lines


def scale_lines(rows: dict) -> list[str]:
    """The scale tables: PatchCore training, and production inference, on more images.

    Args:
        rows: The rows, by name (with the 200-image training and 100-image inference rows they compare with).

    Returns:
        Their lines.
    """
    lines: list[str] = []
    scale = sorted(
        ((int(name.split("/")[1].split("-")[0]), row) for name, row in rows.items() if name.startswith("scale/")),
        key=lambda item: item[0],
    )
    inference_scale = [(count, row) for count, row in scale if "images" in row]
    scale = [(count, row) for count, row in scale if "images" not in row]
    base = get(rows, "patchcore/ours-train", "peak_rss_mb")
    lines += [
        "\n**PatchCore training at scale** (ours, same settings)\n",
        "| training images | fit seconds | peak RSS MB | RSS vs 200 images |",
        "|---|---|---|---|",
        f"| 200 | {fmt(get(rows, 'patchcore/ours-train', 'seconds'))} | {fmt(base, 0)} | 1.00x |",
    ]
    for count, row in scale:
        rss = float(row.get("peak_rss_mb", float("nan")))
        lines.append(
            f"| {count} | {fmt(float(row.get('seconds', float('nan'))))} | {fmt(rss, 0)} | {fmt(rss / base, 2)}x |"
        )
    small = get(rows, "patchcore/ours-unlabelled", "peak_rss_mb")
    if inference_scale:
        lines += [
            "\n**Production inference at scale** (no CSV; the 200-image model scores the training images "
            "of the larger set)\n",
            "| images scored | seconds | images/s | peak RSS MB | RSS vs 100 images |",
            "|---|---|---|---|---|",
            f"| {fmt(get(rows, 'patchcore/ours-unlabelled', 'images'), 0)} | "
            f"{fmt(get(rows, 'patchcore/ours-unlabelled', 'seconds'))} | "
            f"{fmt(per_second(rows, 'patchcore/ours-unlabelled'))} | "
            f"{fmt(small, 0)} | 1.00x |",
        ]
    for _, row in inference_scale:
        seconds, rss = float(row.get("seconds", float("nan"))), float(row.get("peak_rss_mb", float("nan")))
        lines.append(
            f"| {row['images']} | {fmt(seconds)} | {fmt(row['images'] / seconds)} | {fmt(rss, 0)} | "
            f"{fmt(rss / small, 2)}x |"
        )
    return lines


def table(rows: dict, epochs: int, part: str) -> str:
    """The markdown report of one part (``PatchCore``, ``FastFlow`` or ``scale``) of a run.

    Args:
        rows: The rows, by name.
        epochs: FastFlow's epochs.
        part: The part.

    Returns:
        The markdown (the failed rows' errors last).
    """
    lines = []
    if part == "PatchCore":
        lines += patchcore_lines(rows)
    if part == "FastFlow":
        lines += fastflow_lines(rows, epochs)
    if part == "scale":
        lines += scale_lines(rows)
    errors = {name: row["error"] for name, row in rows.items() if "error" in row}
    for name, error in errors.items():
        lines.append(f"\n{name} failed: `{error.splitlines()[-1]}`")
    return "\n".join(lines)


def _base(rows: dict, title: str) -> dict:
    """The 200-image training and 100-image inference rows the scale tables compare with."""
    names = ("patchcore/ours-train", "patchcore/ours-unlabelled") if title == "scale" else ()
    return {name: rows[name] for name in names if name in rows}


def logged_rows() -> dict:
    """The latest row of every measurement in ``results/speed-rows.jsonl``.

    Returns:
        The rows, by name.
    """
    return latest_rows(LOG)


def write_tables(
    rows: dict,
    epochs: int,
    path: Path,
    prefix: str = "Speed",
    from_log: bool = False,
    parts: tuple[str, ...] | None = None,
) -> None:
    """Write one section per part present in ``rows`` (or only ``parts``): ``<prefix>: <part>``.

    Args:
        rows: The rows, by name.
        epochs: FastFlow's epochs.
        path: The markdown file (BENCHMARKS.md).
        prefix: The sections' title prefix.
        from_log: The rows come from the log (the sections say so, with the span of their times).
        parts: Only these parts (None: every part present).
    """
    command = f"Command: `{command_line('benchmarks.speed')}`\n\n"
    for title, marker in MARKERS.items():
        if (parts is None or title in parts) and any(name.startswith(marker) for name in rows):
            mine = {name: row for name, row in rows.items() if name.startswith(marker.split("/")[0] + "/")}
            if from_log:
                stamps = sorted(row["finished"] for row in mine.values() if "finished" in row)
                span = f"{stamps[0]} to {stamps[-1]}" if stamps else "earlier runs"
                command = (
                    f"Rows of `python -m benchmarks.speed` runs finished {span} (tables rebuilt by `--from-log`)\n\n"
                )
            body = command + table(mine | _base(rows, title), epochs, title)
            write_section(path, f"{prefix}: {title}", body)
