"""``main.py --mode tune``: the Optuna study over the plan's ``tuning:`` section, its plan copy, its resume."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from conftest import ROOT, load_default_plan, make_dataset, set_external, step_args, write_plan
from mlflow.tracking import MlflowClient

import main

pytestmark = pytest.mark.slow  # end-to-end: make test-all (CI) runs these, make test does not

SPACE = {"model_parameters.patchcore_coreset_sampling_ratio": {"low": 0.05, "high": 0.5}}


@pytest.fixture
def tune_project(tmp_path):
    """PatchCore on tiny images with 10 NG validation images (enough to judge on AUROC)."""
    make_dataset(tmp_path / "data" / "train", n_train=20, n_valid_ok=8, n_valid_ng=10)
    plan = copy.deepcopy(load_default_plan(tracking=True))  # the study and its trials as MLflow runs
    set_external(plan, "load_train_data_path", "data/train")
    set_external(plan, "load_inference_data_path", "data/train")
    step_args(plan, "train", "train").update({"img_size": [64, 64], "batch_size": 8, "model_name": "patchcore"})
    plan["tuning"] = {"objective": "auroc", "n_trials": 2, "seed": 0, "resamples": 2, "space": dict(SPACE)}
    return {"root": tmp_path, "plan": plan}


def _study(root) -> optuna.Study:
    storage = f"sqlite:///{root / 'tuning' / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_a_two_trial_tune_writes_the_best_plan_beside_the_plan_and_tracks_each_trial(tune_project, capsys):
    root, plan = tune_project["root"], tune_project["plan"]
    path = write_plan(root, plan)
    before = path.read_text()
    assert main.main(["--mode", "tune", "--config", str(path)]) == 0
    assert path.read_text() == before, "the user's plan is never edited"
    (best,) = root.glob("experimental_plan.tuned-*.yaml")
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    (shared,) = re.findall(r"feature cache: (\d+) hit\(s\), (\d+) miss", captured.err)
    hits, misses = map(int, shared)
    assert hits >= misses > 0, "the second trial reads the features the first one extracted"
    assert out[0].split()[:3] == ["trial", "state", "auroc"] and sum(" *" in line for line in out[1:3]) == 1
    assert any(line.startswith("+") and "patchcore_coreset_sampling_ratio" in line for line in out) or any(
        "changes nothing" in line for line in out
    )
    study = _study(root)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    assert complete[0].user_attrs.get("default") is True, "the plan's own values are trial 0"
    assert complete[0].params["model_parameters.patchcore_coreset_sampling_ratio"] == 0.1
    assert all(len(t.user_attrs["per_resample"]) == 2 for t in complete)
    chosen = yaml.safe_load(best.read_text())
    ratio = step_args(chosen, "train", "train")["model_parameters"]["patchcore_coreset_sampling_ratio"]
    assert ratio in [t.params["model_parameters.patchcore_coreset_sampling_ratio"] for t in complete]
    assert (root / "tuning").is_dir() and list((root / "tuning").glob("*/trials.csv"))
    assert not (root / "train_artifacts").exists(), "trials train in their own folders"
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vad")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.pipeline = 'tune'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and all("objective" in c.data.metrics for c in children)


def test_an_interrupted_tune_resumes_where_it_stopped(tune_project):
    root, plan = tune_project["root"], tune_project["plan"]
    plan["tuning"]["n_trials"] = 3
    path = write_plan(root, plan)
    command = [sys.executable, "main.py", "--mode", "tune", "--config", str(path)]
    log = (root / "tune.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            # trial 1's folder: trial 0 is complete (the test stays off the study's database while it is created)
            if list((root / "tuning").glob("*/trial-001")):
                break
            time.sleep(0.2)
        assert process.poll() is None, (root / "tune.log").read_text()[-3000:]
        os.kill(process.pid, signal.SIGTERM)  # as a shutdown or a closed terminal stops it (SIGINT may be ignored)
        assert process.wait(timeout=120) != 0
    finally:
        if process.poll() is None:
            process.kill()
    first = [t for t in _study(root).trials if t.state.name == "COMPLETE"]
    assert 1 <= len(first) < 3 and not list(root.glob("experimental_plan.tuned-*.yaml"))
    assert main.main(["--mode", "tune", "--config", str(path)]) == 0
    trials = _study(root).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3, [t.state.name for t in trials]
    kept = {t.number: t.value for t in first}
    assert {t.number: t.value for t in complete if t.number in kept} == kept, "finished trials are not run again"
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert list(root.glob("experimental_plan.tuned-*.yaml"))


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"model_parameters.nope": [1]}, "'nope' is not a model parameter"),
        ({"img_size": []}, "tuning.space.img_size is an empty list"),
        ({"model_parameters.patchcore_coreset_sampling_ratio": {"low": 0.3, "high": 0.1}}, "empty range"),
        ({"model_parameters.fastflow_flow_steps": [4, 8]}, "has no effect: model_name is only patchcore"),
        ({"accelerator": ["cpu"]}, "is not a train arg a search can change"),
        ({"img_size": [16]}, "tuning.space.img_size"),
    ],
)
def test_a_bad_tuning_section_is_one_plan_error(tune_project, capsys, space, expected):
    root, plan = tune_project["root"], tune_project["plan"]
    plan["tuning"]["space"] = space
    assert main.main(["--mode", "tune", "--config", str(write_plan(root, plan))]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0 and "Traceback" not in err
    assert not (root / "tuning").exists()


def test_too_few_ng_images_stops_instead_of_tuning_on_noise(tmp_path, capsys):
    make_dataset(tmp_path / "data" / "train", n_valid_ng=3)
    plan = copy.deepcopy(load_default_plan())
    set_external(plan, "load_train_data_path", "data/train")
    plan["tuning"] = "auto"
    assert main.main(["--mode", "tune", "--config", str(write_plan(tmp_path, plan))]) != 0
    err = capsys.readouterr().err
    assert "3 NG image(s)" in err and "at least 8" in err


def _result(number, mean, per, speed, default=False):
    from vad.tuning.study import TrialResult

    std = (sum((v - mean) ** 2 for v in per) / (len(per) - 1)) ** 0.5 if len(per) > 1 else 0.0
    return TrialResult(number, "COMPLETE", {"n": number}, mean, std, per, speed, default)


def test_the_choice_goes_to_the_plan_within_one_standard_error_else_to_the_fastest():
    from vad.tuning.study import choose

    plan = _result(0, 0.90, [0.88, 0.92], 30.0, default=True)
    noisy_best = _result(1, 0.91, [0.86, 0.96], 10.0)  # within its own standard error of the plan
    assert choose([plan, noisy_best]).number == 0, "a tie goes to the plan's own values"
    clear_best = _result(2, 0.99, [0.99, 0.99], 5.0)
    assert choose([plan, noisy_best, clear_best]).number == 2
    fast = _result(3, 0.99, [0.99, 0.99], 50.0)
    assert choose([plan, clear_best, fast]).number == 3, "among tied trials (not the plan), the fastest"
    assert choose([]) is None


def test_a_difference_under_the_validation_splits_step_is_a_tie():
    from vad.tuning.study import choose, resolution

    step = resolution("auroc", 20, 10)
    assert step == pytest.approx(0.005) and resolution("f1", 20, 10) == pytest.approx(0.05)
    plan = _result(0, 0.9925, [0.99, 0.995], 25.0, default=True)
    close = _result(1, 0.995, [0.995, 0.995], 24.0)  # two resamples that agree: a standard error of 0
    assert choose([plan, close]).number == 1, "without the step, a zero standard error decides"
    assert choose([plan, close], step).number == 0, "half an OK/NG pair is no measured difference"
    clear = _result(2, 1.0, [1.0, 1.0], 20.0)
    assert choose([plan, clear], step).number == 2


def test_a_fastflow_trial_that_falls_behind_is_pruned_at_its_epoch():
    from vad.tuning.study import _EpochReporter

    class Trial:
        def __init__(self):
            self.reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) >= 2

    trial = Trial()
    reporter = _EpochReporter(trial, "auroc")
    reporter(1, {"image_AUROC": 0.6, "loss": 1.0})
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        reporter(2, {"image_AUROC": 0.55})
    assert trial.reported == [(1, 0.6), (2, 0.55)]


def test_a_fastflow_trial_reports_each_epoch_to_the_study_and_a_pruned_one_ends_pruned(tune_project, monkeypatch):
    """A real study of FastFlow trials: epoch values reach Optuna's storage; a prune stops the trial's training."""
    root, plan = tune_project["root"], tune_project["plan"]
    step_args(plan, "train", "train").update({"model_name": "fastflow", "max_epochs": 3})
    plan["tuning"].update(
        {"n_trials": 3, "resamples": 1, "space": {"model_parameters.fastflow_flow_steps": {"low": 2, "high": 4}}}
    )
    from optuna.trial import Trial

    asked = []

    def should_prune(trial):  # the study's pruner, made to prune trial 1 at its second epoch
        asked.append((trial.number, max(trial.storage.get_trial(trial._trial_id).intermediate_values)))
        return trial.number == 1 and asked[-1][1] >= 2

    monkeypatch.setattr(Trial, "should_prune", should_prune)
    path = write_plan(root, plan)
    assert main.main(["--mode", "tune", "--config", str(path)]) == 0
    trials = {t.number: t for t in _study(root).trials}
    assert [trials[n].state.name for n in sorted(trials)] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert sorted(trials[1].intermediate_values) == [1, 2], "pruned at its second epoch, not trained to the third"
    for number in (0, 2):
        epochs = trials[number].intermediate_values
        assert sorted(epochs) == list(range(1, len(epochs) + 1)) and len(epochs) >= 2
        assert all(0.0 <= v <= 1.0 for v in epochs.values())
    (folder,) = (root / "tuning").glob("*/trial-001/r0")
    record = json.loads(next(folder.glob("history/train/*/log/experimental_history.json")).read_text())
    assert record["status"] == "error" and "TrialPruned" in record["error"]
    best = yaml.safe_load(next(root.glob("experimental_plan.tuned-*.yaml")).read_text())
    chosen = step_args(best, "train", "train")["model_parameters"].get("fastflow_flow_steps", 8)
    assert chosen in {
        trials[0].params["model_parameters.fastflow_flow_steps"],
        trials[2].params["model_parameters.fastflow_flow_steps"],
    }


def test_tuning_auto_searches_the_registered_models_end_to_end(tune_project):
    """``tuning: auto`` on real data: the plan's own values first, then other models and backbones, a best plan."""
    root, plan = tune_project["root"], tune_project["plan"]
    step_args(plan, "train", "train")["max_epochs"] = 2  # FastFlow trials stay short
    plan["tuning"] = {"space": "auto", "n_trials": 4, "resamples": 1, "seed": 1}
    path = write_plan(root, plan)
    assert main.main(["--mode", "tune", "--config", str(path)]) == 0
    trials = _study(root).trials
    states = [t.state.name for t in trials]
    assert len(states) == 4 and states[0] == "COMPLETE", states
    assert set(states) <= {"COMPLETE", "PRUNED"}, "a FastFlow trial behind the others may be pruned, none fails"
    assert trials[0].user_attrs.get("default") is True and trials[0].params["model_name"] == "patchcore"
    keys = set().union(*(t.params for t in trials))
    assert {"model_name", "img_size", "supervised"} <= keys, "the supervised mode is a lever of the auto space"
    from vad.models import MODELS

    tried = {t.params["model_name"] for t in trials}
    assert tried <= set(MODELS) and len(tried) >= 2, "the space holds every registered model, not only the plan's"
    for trial in trials:  # a model's own parameters only in its own trials
        model = trial.params["model_name"]
        assert all(k.split(".")[-1].startswith(model) for k in trial.params if k.startswith("model_parameters."))
    (best,) = root.glob("experimental_plan.tuned-*.yaml")
    chosen = step_args(yaml.safe_load(best.read_text()), "train", "train")
    assert chosen["model_name"] in MODELS
    assert (root / "tuning").is_dir() and list((root / "tuning").glob("*/trials.csv"))


def test_a_trial_plan_keeps_every_train_arg_whatever_the_args_layout(tune_project):
    """Args split over one-key maps (ALO's layout) reach the trial's plan whole, with the trial's changes on top."""
    from alo.plan import load_plan
    from vad.tuning.resample import SPLIT_COLUMN
    from vad.tuning.study import _trial_plan

    root, plan = tune_project["root"], tune_project["plan"]
    train = next(s for b in plan["user_parameters"] for s in b.get("train_pipeline", []) if s["step"] == "train")
    train["args"] = [{key: value} for key, value in train["args"][0].items()]  # one map per key
    loaded = load_plan(write_plan(root, plan))
    changes = {"model_parameters": {"patchcore_coreset_sampling_ratio": 0.3}, "img_size": [96, 96]}
    path = _trial_plan(loaded, root / "trial", root / "data" / "train", changes)
    args = dict(next(s for s in load_plan(path).pipelines["train"] if s.name == "train").args)
    assert args["batch_size"] == 8 and args["model_name"] == "patchcore", "the user's own train args are kept"
    assert args["img_size"] == [96, 96] and args["model_parameters"]["patchcore_coreset_sampling_ratio"] == 0.3
    assert args["export"] == [] and args["save_validation_heatmap"] is False
    steps = {s.name: s.args for s in load_plan(path).pipelines["train"]}
    assert steps["input"]["encoding"] == "utf-8", "the resample CSVs are UTF-8 whatever the user's encoding"
    assert steps["readiness"]["train_validate_column"] == SPLIT_COLUMN


def test_every_kind_of_choice_comes_back_from_optuna_as_it_was_given():
    """Lists and maps are stored as JSON text; each trial's values are the choices themselves, maps included."""
    from vad.tuning.space import Dimension
    from vad.tuning.study import _results, _suggest

    dimension = Dimension("model_parameters.x", choices=([64, 64], {"a": 1}, "[not json", 3))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    picked = []
    for _ in range(12):
        trial = study.ask()
        picked.append(_suggest(trial, dimension))
        study.tell(trial, 0.5)
    assert all(value in dimension.choices for value in picked) and {"a": 1} in picked
    assert [r.values["model_parameters.x"] for r in _results(study, [dimension])] == picked
