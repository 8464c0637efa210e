"""The benchmarks' shared harness: sections of BENCHMARKS.md, plans, rows, timed processes, workers, data."""

from __future__ import annotations

import argparse
import sys

import pytest

from benchmarks.harness import data, measure, plans, report, rows, workers


def test_a_section_is_replaced_or_appended_and_the_others_are_kept(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nold b\n", encoding="utf-8")
    report.write_section(path, "A", "new a, with a backslash: \\d \\1")
    report.write_section(path, "C", "new c")
    text = path.read_text(encoding="utf-8")
    assert "old a" not in text and "new a, with a backslash: \\d \\1" in text
    assert text.index("## A") < text.index("## B") < text.index("## C")
    assert "## B\n\nold b\n" in text and text.rstrip().endswith("new c")


def test_report_options_point_the_section_at_a_scratch_file(tmp_path):
    parser = argparse.ArgumentParser()
    report.add_report_options(parser, "Default title")
    args = parser.parse_args(["--benchmarks-file", str(tmp_path / "x.md"), "--section", "Scratch"])
    assert args.benchmarks_file == tmp_path / "x.md" and args.section == "Scratch"
    defaults = parser.parse_args([])
    assert defaults.benchmarks_file.name == "BENCHMARKS.md" and defaults.section == "Default title"
    bare = argparse.ArgumentParser()
    report.add_report_options(bare)
    assert not hasattr(bare.parse_args([]), "section")


def test_numbers_and_the_command_line():
    assert report.fmt(1.25) == "1.2" and report.fmt(2.0, 0) == "2" and report.fmt(float("nan")) == "n/a"
    assert report.fmt(None, missing="") == ""
    assert report.command_line("benchmarks.x", ["--a", "1"]) == "python -m benchmarks.x --a 1"
    assert report.command_line("benchmarks.x", []) == "python -m benchmarks.x"


def test_plans_are_the_bundled_plan_with_the_changes_asked_for(tmp_path):
    plan = plans.set_data(plans.bundled_plan(), tmp_path / "train", tmp_path / "test")
    plans.add_control(plan, tracking=False)
    assert plan["external_path"] == [
        {"load_train_data_path": str(tmp_path / "train")},
        {"load_inference_data_path": str(tmp_path / "test")},
    ]
    assert plan["control"][-1] == {"tracking": False}
    plans.train_args(plan)["model_name"] = "padim"
    plans.inference_args(plan)["save_anomaly_maps"] = False
    path = plans.save_plan(plan, tmp_path / "project")
    assert path == tmp_path / "project" / "experimental_plan.yaml"
    again = plans.reused_result(tmp_path / "project", plan, reuse=True)
    assert again is None, "no result kept yet"
    plans.keep_result(tmp_path / "project", {"auroc": 1.0})
    assert plans.reused_result(tmp_path / "project", plan, reuse=True) == {"auroc": 1.0}
    plans.train_args(plan)["model_name"] = "fastflow"
    assert plans.reused_result(tmp_path / "project", plan, reuse=True) is None, "another plan runs again"
    with pytest.raises(KeyError):
        plans.step_args(plan, "train", "nowhere")


def test_rows_are_appended_and_the_latest_of_each_is_read(tmp_path):
    log = tmp_path / "rows.jsonl"
    rows.append_rows(log, [{"name": "a", "x": 1}, {"name": "b", "x": 2}], echo=False)
    rows.append_rows(log, [{"name": "a", "x": 3}], echo=False)
    assert rows.latest_rows(log) == {"a": {"x": 3}, "b": {"x": 2}}
    assert rows.utc_stamp(minutes=True).endswith(" UTC")


def test_a_timed_process_reports_its_seconds_or_its_last_lines():
    assert set(measure.timed([sys.executable, "-c", "pass"])) == {"seconds"}
    failed = measure.timed([sys.executable, "-c", "import sys; print('a\\nb\\nc\\nd', file=sys.stderr); sys.exit(2)"])
    assert failed["error"] == "b\nc\nd" and failed["seconds"] > 0
    assert measure.timed([sys.executable, "-c", "raise SystemExit(5)"])["error"] == "exit 5"
    runs = measure.repeated([sys.executable, "-c", "pass"], 3)
    assert len(runs["runs"]) == 3 and runs["seconds"] > 0
    assert measure.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 3.0
    assert measure.summary_ms([0.001, 0.003])["mean_ms"] == pytest.approx(2.0)


def test_a_worker_hands_its_row_back_or_its_error(tmp_path):
    out = tmp_path / "row.json"
    workers.answer(out, {"x": 1})
    assert out.read_text() == '{"x": 1}'
    # a worker that fails (too few arguments): the row is its error's last lines, with the wall seconds
    row = workers.spawn_worker("benchmarks.speed", "work", out=out, wall_key="process_seconds")
    assert "TypeError" in row["error"] and row["process_seconds"] > 0 and not out.exists()


def test_generated_data_is_reused_while_its_stamp_matches(tmp_path):
    counts = {"n_train": 3, "n_valid": 1, "n_bad": 1, "n_inf_ok": 1, "n_inf_ng": 1}
    built = []

    def build(target):
        built.append(target)
        data.generate(target, 5, counts)

    for _ in range(2):
        folder = data.stamped(tmp_path / "gravel", {"seed": 5, **counts}, build)
    assert len(built) == 1 and (folder / "test" / "inference.csv").is_file()
    images = data.ok_training_images(folder / "train")
    assert len(images) == 3
    linked = data.link_files(images, tmp_path / "linked")
    assert sorted(p.name for p in linked.iterdir()) == sorted(p.name for p in images)
    data.stamped(tmp_path / "gravel", {"seed": 6, **counts}, build)
    assert len(built) == 2, "another stamp builds again"
