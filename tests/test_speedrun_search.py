"""The speedrun recipe inside a search: ``train: {config: speedrun}`` expands before Ray starts, and a
speednet trial exports and replays as a plain training run, like every other model's; and
``benchmarks/fidelity.py --quick`` (CI's run of the fidelity benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hiercls.config import ConfigError
from hiercls.tune.spec import SearchSpec, SpecError, expand_train

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- fast
def test_the_shipped_speedrun_space_expands_the_recipe():
    spec = SearchSpec.load("speedrun")
    assert "config" not in spec.train
    assert spec.train["architecture"] == "speednet" and spec.train["whiten_init"] is True
    assert spec.train["flip"] == "alternate" and spec.train["batch_size"] == 512
    # the search's own keys and the searched ones give way; the null unsets the recipe's value
    assert not {"epochs", "loss", "label_smoothing"} & set(spec.train)
    assert spec.base_config()["epochs"] == spec.epochs == 6
    assert spec.problems() == ([], [])


def test_expand_train_rules(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("architecture: speednet\nepochs: 9\nseed: 3\nlr: 0.3\nloss: cross-entropy\n"
                      "label_smoothing: 0.1\n")
    expanded = expand_train({"config": str(recipe), "lr": 0.2, "label_smoothing": None,
                             "max_train_samples": None}, searched=["loss"])
    assert expanded == {"architecture": "speednet", "lr": 0.2, "max_train_samples": None}
    with pytest.raises(ConfigError, match=r"is not a shipped recipe: speedrun"):
        expand_train({"config": "nosuch"})


def test_null_under_train_unsets_a_parameter_with_or_without_a_recipe(tmp_path):
    """``label_smoothing: null`` under ``train:`` unsets it, as ``--set label_smoothing=null`` does for a
    training run; left set (from the recipe), a branch that cannot take it is one problem, not one per
    checked config, and says how to unset it."""
    branches = ("search:\n  loss:\n    type: choice\n    values:\n      cross-entropy: {}\n"
                "      soft-labels: {beta: {type: loguniform, low: 2, high: 30}}\n")
    for train in ("{architecture: plainnet, label_smoothing: null}",
                  "{config: speedrun, label_smoothing: null}"):
        space = tmp_path / "s.yaml"
        space.write_text(f"train: {train}\n{branches}")
        spec = SearchSpec.load(space)
        assert "label_smoothing" not in spec.train and spec.problems()[0] == []
    space.write_text(f"train: {{config: speedrun}}\n{branches}")
    problems = SearchSpec.load(space).problems()[0]
    assert problems == [
        "train.label_smoothing: a parameter the selected loss 'soft-labels' does not take; move it under the "
        "branch that uses it, or unset it ('label_smoothing: null' under train:, also when a recipe named by "
        "train.config sets it)"]


def test_a_misspelled_key_in_a_recipe_names_the_file_and_the_key_it_resembles(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("architecture: speednet\nwidht: 32\n")
    with pytest.raises(ConfigError) as err:
        expand_train({"config": str(recipe)})
    assert str(err.value) == (
        f"config file {str(recipe)!r}: unknown key 'widht' (did you mean 'width'?); "
        "the valid keys: docs/reference/parameters.md and python -m hiercls.train --help")
    from hiercls.config import load_config

    with pytest.raises(ConfigError, match=r"unknown key 'widht' \(did you mean 'width'\?\)"):
        load_config(recipe)


def test_an_unknown_recipe_in_a_space_is_one_problem(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("train: {config: speedrum}\nsearch:\n  lr: {type: loguniform, low: 0.01, high: 0.1}\n")
    with pytest.raises(SpecError) as err:
        SearchSpec.load(space)
    assert err.value.problems == [
        "train.config: config file 'speedrum' does not exist (and is not a shipped recipe: speedrun)"]


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.realdata
def test_a_speednet_search_trial_exports_and_replays(ray_session, cifar_dir, tmp_path):
    """Two speednet trials (the recipe, narrowed), the best exported and trained from the exported file
    with the train CLI's reading of it: the same validation metrics at the exported epoch."""
    import torch

    from analysis.experiment import load_experiment
    from analysis.export import export
    from hiercls.engine import fit
    from hiercls.train import build_parser, config_from_args
    from hiercls.tune.runner import run_search

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "num_samples": 2, "epochs": 2, "grace_period": 1, "max_concurrent": 1, "cpus_per_trial": 2,
        "objective": "val_hdist@1", "startup_trials": 2,
        "train": {"config": "speedrun", "label_smoothing": None, "width": 8, "max_train_samples": 500,
                  "val_size": 200, "batch_size": 100, "eval_batch_size": 200},
        "search": {"loss": {"type": "choice", "values": {
            "cross-entropy": {"label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.3}},
            "hierarchical-cross-entropy": {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9}}}}},
        "points_to_evaluate": [{"loss": "cross-entropy", "label_smoothing": 0.2}],
    }))
    spec = SearchSpec.load(space, {"data_dir": str(cifar_dir), "storage_path": str(tmp_path / "tune"),
                                   "name": "speed"})
    outcome = run_search(spec, echo=lambda line: None)
    folder = outcome.experiment_dir
    experiment = load_experiment(folder)
    assert len(experiment.trials) == 2
    assert all(t.config["architecture"] == "speednet" for t in experiment.trials)
    out = tmp_path / "best.yaml"
    _, source, _ = export(folder, out, scope="best")
    trial = experiment.trial(source["trial_id"])
    reference = trial.record(source["epoch"])
    config = config_from_args(build_parser().parse_args(
        ["--config", str(out), "--out_folder", str(tmp_path / "run"), "--no-test"]))
    assert (config.architecture, config.width, config.whiten_init, config.flip_tta) == (
        "speednet", 8, True, True)
    threads = torch.get_num_threads()
    try:
        result = fit(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    rerun = result["history"][source["epoch"] - 1]
    assert rerun["val_split_sha256"] == reference["val_split_sha256"]  # the same validation images
    keys = [k for k in reference if k.startswith("val_") and k != "val_split_sha256"]
    diffs = {k: abs(float(rerun[k]) - float(reference[k])) for k in keys}
    assert max(diffs.values()) <= 1e-6, diffs


@pytest.mark.slow
@pytest.mark.realdata
def test_fidelity_benchmark_quick(cifar_dir, tmp_path):
    """``benchmarks/fidelity.py --quick`` (a real process, as CI runs a benchmark): every model trains on the
    same split, the report holds each curve and the summary's figures follow from the curves."""
    report = tmp_path / "fidelity.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--quick", "--data-dir",
                           str(cifar_dir), "--threads", "2", "--report", str(report)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(report.read_text())
    assert [m["architecture"] for m in data["models"]] == ["speednet", "plainnet", "resnet18"]
    for model in data["models"]:
        assert model["config"]["max_train_samples"] == 1000 and model["config"]["val_size"] == 200
        assert model["train_seconds"] >= 8.0 or model["curve"][-1]["epochs"] == model["schedule_epochs"]
        seconds = [p["train_seconds"] for p in model["curve"]]
        assert seconds == sorted(seconds) and 0 <= model["final_val_top1"] <= 1
        assert model["final_val_top1"] == model["curve"][-1]["val_top1"]
    goal = data["summary"]["plainnet_goal"]
    plain = data["models"][1]
    assert goal["plainnet_final_val_top1"] == plain["final_val_top1"]
    speed = data["models"][0]
    target = plain["final_val_top1"]
    first = next((p["train_seconds"] for p in speed["curve"] if p["val_top1"] >= target), None)
    assert goal["speednet_seconds_to_it"] == first
    assert goal["met"] is None and data["summary"]["speednet_40_percent"]["met"] is None  # not in --quick
    assert "plainnet time / speednet time" in done.stdout and "goal 3x: not judged in --quick" in done.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--architectures", "vgg"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "valid: speednet, plainnet, resnet18" in bad.stderr
    assert "Traceback" not in bad.stderr
    script = str(ROOT / "benchmarks" / "fidelity.py")
    for args, message in ((["--report", str(tmp_path / "no" / "such" / "r.json")], "cannot be written"),
                          (["--speedrun-set", "nonsense"], "--speedrun-set 'nonsense': expected KEY=VALUE"),
                          (["--speedrun-set", "widht=8"], "unknown key 'widht'"),
                          (["--architectures", "speednet,speednet"], "valid: speednet, plainnet")):
        bad = subprocess.run([sys.executable, script, "--quick", "--data-dir", str(cifar_dir), *args],
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
        assert "training for up to" not in bad.stdout and "Traceback" not in bad.stderr


def test_fidelity_gpu_figures_on_the_cpu(tmp_path):
    """The figures fidelity.py adds on CUDA, computed on the CPU by the same code: the FLOPs of one
    training step (the run's weights and statistics untouched) and the 70 % goal from a curve."""
    import importlib.util

    import torch
    from inprocess import synthetic_cifar

    from hiercls.config import load_config
    from hiercls.engine import build_run

    spec = importlib.util.spec_from_file_location("fidelity", ROOT / "benchmarks" / "fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    run = build_run(load_config("speedrun", {"width": 8, "val_size": 100, "batch_size": 25, "device": "cpu",
                                             "evaluate_test": False}), synthetic_cifar())
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    flops = fidelity.step_flops(run)
    assert isinstance(flops, int) and flops > 0
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    curve = [{"train_seconds": 10.0, "val_top1": 0.5}, {"train_seconds": 20.0, "val_top1": 0.71}]
    models = [{"architecture": "speednet", "curve": curve, "tflops_per_second": 1.0}]
    assert fidelity.summary(models, (0.7,), 40.0)["speednet_70_percent"] == {
        "seconds": 20.0, "goal_seconds": 25, "met": True}
    assert fidelity.summary(models, (0.7,), 40.0, judged=False)["speednet_70_percent"]["met"] is None
