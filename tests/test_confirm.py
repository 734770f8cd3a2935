"""Seed-repeat confirmation (``hiercls-confirm``) on the toy trainable: the K best configurations and the
cross-entropy baseline, S new seeds each, as one Ray Tune grid on the search's split; the test set scored
once per run; ``runs.csv`` and ``table.csv`` equal to hand computations; the paper table; refusals of bad
input in one line with nothing written; Ctrl-C and ``--resume`` without rerunning finished runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from test_tune_faults import _driver_output

from analysis import confirm as confirm_cli
from analysis import export as export_cli
from analysis import report as report_cli
from hiercls.experiment.layout import trial_seed
from hiercls.tune.toy import toy_test_results

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "epochs": 2, "seed": 5, "max_concurrent": 2, "cpus_per_trial": 0.5, "objective": "val_top1_error",
    "train": {"architecture": "plainnet"},
    "search": {"loss": {"type": "grid", "values": {
        "cross-entropy": {},
        "hierarchical-cross-entropy": {"alpha": {"type": "grid", "values": [0.1, 0.4]}},
        "soft-labels": {"beta": {"type": "grid", "values": [4]}},
    }}},
}


def driver_lines(stderr: str) -> list[str]:
    """The driver's own non-empty stderr lines (:func:`test_tune_faults._driver_output`: Ray forwards its
    workers' output at any time, e.g. "Exception ignored" from a worker its SIGTERM handler stopped)."""
    return [ln for ln in _driver_output(stderr).splitlines() if ln.strip()]


def _search(tmp_path: Path, name: str = "toy", **changes) -> Path:
    import tune_main

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **changes, "name": name}))
    storage = tmp_path / "storage"
    assert tune_main.main(["--space", str(path), "--storage-path", str(storage), "--trainable", "toy"]) == 0
    return storage / name


@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory):
    return _search(tmp_path_factory.mktemp("confirm"))


def _expected(values: dict, seed: int) -> dict:
    return toy_test_results({**values, "seed": seed}, 2)["metrics"]


def test_confirm_runs_the_grid_once_and_writes_the_table(searched, tmp_path, capsys):
    experiment = tmp_path / "experiment"
    shutil.copytree(searched, experiment)
    assert confirm_cli.main([str(experiment), "--top", "2", "--seeds", "3", "--trainable", "toy"]) == 0
    out = capsys.readouterr().out
    assert "confirming 3 configuration(s) x 3 seeds (9 runs)" in out
    confirm = experiment / "confirm"
    chosen = json.loads((confirm / "candidates.json").read_text())
    seeds = [trial_seed(5, f"confirm-{j}") for j in range(3)]
    assert chosen["seeds"] == seeds
    roles = [(c["role"], c["values"]) for c in chosen["candidates"]]
    assert [c["search_rank"] for c in chosen["candidates"]] == [4, 1, 2]  # 4 trials, CE the worst
    assert "  baseline: cross-entropy (search rank 4)" in out and "note: the search's best" not in out
    # the toy's HXE sits 0.2 below cross-entropy, its error growing with alpha; soft labels 0.1 below:
    # the two best besides the baseline are HXE alpha 0.1 and 0.4
    assert roles == [("baseline", {"loss": "cross-entropy"}),
                     ("candidate", {"loss": "hierarchical-cross-entropy", "alpha": 0.1}),
                     ("candidate", {"loss": "hierarchical-cross-entropy", "alpha": 0.4})]
    # one Ray Tune experiment of 9 runs, each scoring the test set exactly once
    runs = pd.read_csv(confirm / "runs.csv")
    assert len(runs) == 9 and set(runs["status"]) == {"complete"}
    tests = (confirm / "search" / "toy_tests.log").read_text().split()
    assert len(tests) == 9 and len(set(tests)) == 9
    spec = yaml.safe_load((confirm / "search" / "search_spec.yaml").read_text())
    assert spec["evaluate_test"] is True and spec["split_seed"] == 5 and spec["epochs"] == 2
    assert len({s for s in runs["path"]}) == 9
    for _, run in runs.iterrows():
        values = next(c["values"] for c in chosen["candidates"] if c["label"] == run["label"])
        expected = _expected(values, int(run["seed"]))
        assert run["test_top1_error"] == pytest.approx(expected["top1_error"], abs=1e-12)
        assert run["test_hdist@5"] == pytest.approx(expected["hdist@5"], abs=1e-12)
    # the table: mean, std and t-interval over seeds; paired differences to the baseline
    table = pd.read_csv(confirm / "table.csv")
    base = [_expected({"loss": "cross-entropy"}, s)["top1_error"] for s in seeds]
    hxe = [_expected({"loss": "hierarchical-cross-entropy", "alpha": 0.1}, s)["top1_error"] for s in seeds]
    row = table[table["role"] == "baseline"].iloc[0]
    half = stats.t.ppf(0.975, 2) * np.std(base, ddof=1) / math.sqrt(3)
    assert row["top1_error_mean"] == pytest.approx(np.mean(base))
    assert row["top1_error_std"] == pytest.approx(np.std(base, ddof=1))
    assert row["top1_error_ci_high"] == pytest.approx(np.mean(base) + half)
    row = table.iloc[1]
    diff = np.subtract(hxe, base)  # the seeds' noise cancels in the pairs: a constant difference
    assert row["diff_top1_error_mean"] == pytest.approx(diff.mean())
    assert row["diff_top1_error_ci_low"] == pytest.approx(diff.mean(), abs=1e-9)
    assert table["winner"].tolist() == [False, True, False]  # alpha 0.1: the lowest validation error
    # the paper table from the confirmed experiment
    assert report_cli.main([str(experiment)]) == 0
    markdown = (confirm / "report" / "table.md").read_text()
    assert "hierarchical-cross-entropy (alpha=0.4)" in markdown and "±" in markdown
    # analysis.export exports the confirmed winner
    assert export_cli.main([str(experiment), "--out", str(tmp_path / "best.yaml")]) == 0
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["loss"] == "hierarchical-cross-entropy" and exported["alpha"] == 0.1
    assert "confirmed" in capsys.readouterr().out
    # a confirm folder that exists: refused in one line, nothing changed
    before = (confirm / "runs.csv").read_bytes()
    assert confirm_cli.main([str(experiment), "--trainable", "toy"]) == 2
    err = driver_lines(capsys.readouterr().err)
    assert len(err) == 1 and "already exists: pass --resume" in err[0]
    assert (confirm / "runs.csv").read_bytes() == before
    # a resume continues the plan: another --top is refused
    assert confirm_cli.main([str(experiment), "--resume", "--top", "3"]) == 2
    assert "cannot change" in capsys.readouterr().err
    assert (confirm / "runs.csv").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--top", "0"], "--top 0: confirm at least 1"),
    (["--seeds", "1"], "--seeds 1: fewer than 2 seeds give no interval"),
    (["--baseline", "nope"], "trial 'nope' is not in experiment"),
    (["--baseline", "x", "--no-baseline"], "exclude each other"),
    (["--resume"], "nothing to resume"),
])
def test_bad_arguments_are_one_line_and_write_nothing(searched, tmp_path, capsys, argv, message):
    experiment = tmp_path / "experiment"
    shutil.copytree(searched, experiment)
    assert confirm_cli.main([str(experiment), *argv, "--trainable", "toy"]) == 2
    err = driver_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err
    assert not (experiment / "confirm").exists()


def test_a_best_trial_as_the_baseline_is_said_and_the_next_best_confirmed(searched, tmp_path, capsys):
    experiment = tmp_path / "experiment"
    shutil.copytree(searched, experiment)
    best = next(t.name.removeprefix("trial_") for t in experiment.glob("trial_*")
                if json.loads((t / "params.json").read_text()).get("alpha") == 0.1)
    assert confirm_cli.main([str(experiment), "--baseline", best, "--top", "1", "--seeds", "2",
                             "--trainable", "toy"]) == 0
    out = capsys.readouterr().out
    assert "(search rank 1)" in out and "note: the search's best trial is the baseline itself" in out
    chosen = json.loads((experiment / "confirm" / "candidates.json").read_text())["candidates"]
    assert [(c["role"], c["search_rank"], c["values"].get("alpha")) for c in chosen] == [
        ("baseline", 1, 0.1), ("candidate", 2, 0.4)]


def test_an_experiment_without_a_finished_trial_or_a_baseline_is_refused(searched, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(searched / "search_spec.yaml", empty / "search_spec.yaml")
    assert confirm_cli.main([str(empty), "--trainable", "toy"]) == 2
    assert "has no finished trial" in capsys.readouterr().err
    # no cross-entropy trial: name a baseline or confirm without one
    experiment = tmp_path / "no_ce"
    shutil.copytree(searched, experiment)
    for folder in experiment.glob("trial_*"):
        params = json.loads((folder / "params.json").read_text())
        if params["loss"] == "cross-entropy":
            shutil.rmtree(folder)
    for state in experiment.glob("experiment_state-*.json"):
        state.unlink()
    assert confirm_cli.main([str(experiment), "--trainable", "toy"]) == 2
    err = capsys.readouterr().err
    assert "no complete cross-entropy trial to be the baseline" in err and "--no-baseline" in err
    assert not (experiment / "confirm").exists()


def test_mixed_splits_are_refused(ray_session, tmp_path, capsys):
    """A search whose trials each drew their own split (split_seed: trial, as before splits were shared)
    cannot say what to confirm."""
    experiment = _search(tmp_path, name="mixed", split_seed="trial")
    assert confirm_cli.main([str(experiment), "--trainable", "toy"]) == 2
    err = driver_lines(capsys.readouterr().err)
    assert len(err) == 1 and "different validation splits" in err[0] and "confirm needs one split" in err[0]
    assert not (experiment / "confirm").exists()


def test_an_experiment_from_before_recorded_splits_is_refused(searched, tmp_path, capsys):
    """Trials without val_split_sha256 (a hiercls before splits were recorded) were each validated on their
    own images."""
    experiment = tmp_path / "old"
    shutil.copytree(searched, experiment)
    for path in experiment.glob("trial_*/result.json"):  # one JSON record per line
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for record in records:
            assert record.pop("val_split_sha256")
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert confirm_cli.main([str(experiment), "--trainable", "toy"]) == 2
    err = driver_lines(capsys.readouterr().err)
    assert len(err) == 1 and "made before hiercls recorded validation splits" in err[0], err
    assert not (experiment / "confirm").exists()


@pytest.mark.slow  # a driver process with its own Ray, interrupted and resumed: about a minute
def test_ctrl_c_then_resume_runs_no_finished_run_again(searched, tmp_path):
    experiment = tmp_path / "experiment"
    shutil.copytree(searched, experiment)
    command = [sys.executable, "-m", "analysis.confirm", str(experiment), "--top", "2", "--seeds", "3",
               "--trainable", "toy", "--toy-sleep", "1.5", "--max-concurrent", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "err.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        tested = experiment / "confirm" / "search" / "toy_tests.log"
        while not (tested.is_file() and len(tested.read_text().split()) >= 2):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert f"python -m analysis.confirm {experiment} --resume" in log.read_text()
    done = set(tested.read_text().split())
    assert not (experiment / "confirm" / "runs.csv").exists()
    resumed = subprocess.run([*command[:3], str(experiment), "--resume", "--trainable", "toy"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    tests = tested.read_text().split()
    assert len(tests) == 9 and len(set(tests)) == 9 and done <= set(tests)  # each run scored the test once
    epochs = yaml.safe_load((experiment / "confirm" / "space.yaml").read_text())["epochs"]
    search = experiment / "confirm" / "search"
    starts = [line.split() for line in (search / "toy_starts.log").read_text().splitlines()]
    trained = [json.loads(line)["trial_id"] for line in (search / "toy_epochs.log").read_text().splitlines()]
    for trial_id in done:  # a run that had scored the test set trained no epoch again; Ray may restart it
        # (interrupted after its test, before Ray recorded its end) with nothing left to do
        assert trained.count(trial_id) == epochs
        assert [first for t, first in starts if t == trial_id] in (["1"], ["1", str(epochs + 1)])
    assert len(pd.read_csv(experiment / "confirm" / "runs.csv")) == 9


@pytest.mark.slow  # a toy TPE search, then its growth: about 30 s
def test_a_grown_search_keeps_its_split(ray_session, tmp_path):
    import tune_main
    from analysis.experiment import load_experiment

    space = {"num_samples": 2, "epochs": 1, "grace_period": 1, "seed": 3, "max_concurrent": 2,
             "cpus_per_trial": 0.5, "startup_trials": 1, "train": {"architecture": "plainnet"},
             "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}}
    path = tmp_path / "grow.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = tmp_path / "storage"
    argv = ["--space", str(path), "--storage-path", str(storage), "--trainable", "toy", "--name", "grow"]
    assert tune_main.main(argv) == 0
    assert tune_main.main(["--name", "grow", "--storage-path", str(storage), "--resume", "--num-samples",
                           "4"]) == 0
    trials = load_experiment(storage / "grow").trials
    assert len(trials) == 4
    assert len({t.val_split_sha256 for t in trials}) == 1 and trials[0].val_split_sha256 is not None


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.slow  # 4 real plainnet runs of 2 epochs, each scoring the 10,000 test images: a few minutes
def test_confirm_on_the_real_smoke_search(smoke_search, tmp_path, capsys):
    """``hiercls-confirm --top 1 --seeds 2`` on the finished real smoke search: the baseline and the best
    configuration, 2 new seeds each, 4 real runs as one Ray Tune experiment on the search's split and at its
    length, each scoring the official test set once; then the paper table (the toy tests cover more
    configurations and seeds)."""
    from analysis.experiment import load_experiment

    experiment = tmp_path / "smoke"
    shutil.copytree(smoke_search["outcome"].experiment_dir, experiment)
    spec = smoke_search["spec"]
    split = {load_experiment(experiment).trials[0].val_split_sha256}
    assert confirm_cli.main([str(experiment), "--top", "1", "--seeds", "2"]) == 0
    assert "confirming 2 configuration(s) x 2 seeds (4 runs)" in capsys.readouterr().out
    confirm = experiment / "confirm"
    chosen = json.loads((confirm / "candidates.json").read_text())
    assert [c["role"] for c in chosen["candidates"]] == ["baseline", "candidate"]
    assert chosen["candidates"][0]["values"]["loss"] == "cross-entropy"
    runs = pd.read_csv(confirm / "runs.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"complete"}
    assert sorted(set(runs["seed"])) == sorted(trial_seed(spec.seed, f"confirm-{j}") for j in range(2))
    trials = load_experiment(confirm / "search").trials  # one Ray Tune experiment of the 4 runs
    assert len(trials) == 4 and {t.val_split_sha256 for t in trials} == split
    for _, run in runs.iterrows():
        folder = Path(run["path"])
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["epochs"] == spec.epochs and config["split_seed"] == spec.seed
        assert config["max_train_samples"] == 2000 and config["evaluate_test"] is True
        records = json.loads((folder / "all_epoch_results.json").read_text())
        assert len(records) == spec.epochs and not any(k.startswith("test_") for r in records for k in r)
        test = json.loads((folder / "final_test_results.json").read_text())
        assert run["test_top1_error"] == test["metrics"]["top1_error"]
        assert 0 < run["test_top1_error"] < 1 and math.isfinite(run["test_mistake_severity"])
    table = pd.read_csv(confirm / "table.csv")
    assert table["n_seeds"].tolist() == [2, 2] and table["winner"].sum() == 1
    assert table.iloc[1:]["diff_top1_error_ci_low"].notna().all()
    assert report_cli.main([str(experiment)]) == 0
    for name in ("table.md", "table.tex", "table.csv", "tradeoff.png"):
        assert (confirm / "report" / name).stat().st_size > 0
