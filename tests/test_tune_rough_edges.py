"""Issue 22, item 8: rough edges of the search command. A space that searches nothing is refused; the
summary names the scheduler in use and speaks of early stops only under ASHA; a bad word-vectors file is
one line, not one per checked config; Ray's own resume hint gives way to hiercls's. (Item 8's ranking by
the search's objective is in tests/test_analysis.py.)"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import tune_main
from hiercls.tune.spec import SearchSpec, SpecError

ROOT = Path(__file__).resolve().parents[1]
PROG = "python tune_main.py: error:"
LR = {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}


def _write(path: Path, values: dict | str) -> Path:
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values, sort_keys=False))
    return path


def _refused(capsys, *args: str) -> list[str]:
    """Run ``tune_main.main(args)``: it must exit 2; the problem lines (``  - ...``) of its error."""
    assert tune_main.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith(PROG), err
    return [ln.removeprefix("  - ") for ln in err.splitlines() if ln.startswith("  - ")]


# ---------------------------------------------------------------------------------------------- empty space
NOTHING_SEARCHED = ("search: has no searched parameter (every value is fixed), so every trial would train "
                    "the same config; a space needs at least one distribution, choice or grid entry under "
                    "search:")


@pytest.mark.parametrize("content", [
    "",                                                                   # an empty file
    "# nothing here yet\n# search: {lr: ...}\n",                          # only comments
    {"epochs": 3, "grace_period": 1, "train": {"architecture": "plainnet", "lr": 0.05}},   # fixed keys only
    {"epochs": 3, "grace_period": 1, "search": {"lr": 0.05, "loss": "cross-entropy"}},    # fixed values only
], ids=["empty", "comments", "train-only", "fixed-search"])
def test_a_space_that_searches_nothing_is_refused_in_one_line(tmp_path, capsys, content):
    """Today such a file runs 20 identical trials without a word. Refused, by --check and by the search
    itself before anything is written, in one line that names the file and what a space needs."""
    space = _write(tmp_path / "space.yaml", content)
    storage = tmp_path / "storage"
    for extra in (["--check"], []):
        problems = _refused(capsys, "--space", str(space), "--trainable", "toy", "--storage-path",
                            str(storage), *extra)
        assert problems == [f"{space.resolve()}: {NOTHING_SEARCHED}, e.g. lr: {{type: loguniform, low: 0.01, "
                            "high: 0.2} (see search_spaces/default.yaml); to repeat one config over seeds, "
                            "train it with python -m hiercls.train --seed N"], problems
    assert not storage.exists()  # nothing was started


def test_a_space_with_one_searched_value_or_a_grid_is_not_refused(tmp_path):
    """One distribution, one choice inside a branch, or a grid (even of one point) is a search; a spec built
    in Python (no space file) may repeat one config over seeds on purpose."""
    spaces = {
        "range": {"search": LR},
        "branch": {"search": {"loss": {"type": "choice", "values": {
            "hierarchical-cross-entropy": {"alpha": {"type": "choice", "values": [0.1, 0.4]}}}}}},
        "grid": {"search": {"loss": {"type": "grid", "values": ["cross-entropy"]}}},
    }
    for name, values in spaces.items():
        spec = SearchSpec.load(_write(tmp_path / f"{name}.yaml", {"epochs": 4, "grace_period": 1, **values}))
        problems, _ = spec.problems()
        assert not any("no searched parameter" in p for p in problems), (name, problems)
    assert SearchSpec.load(tmp_path / "grid.yaml").resolved().num_samples == 1
    in_python = SearchSpec.from_dict({"name": "seeds", "epochs": 4, "grace_period": 1, "num_samples": 3})
    assert in_python.validate() == []


def test_pb2_without_a_range_says_so_once(tmp_path):
    """PB2 has its own line for a space without a range to move; the generic one is not added beside it."""
    space = _write(tmp_path / "pb2.yaml", {"scheduler": "pb2", "epochs": 8, "train": {"lr": 0.05}})
    with pytest.raises(SpecError) as info:
        SearchSpec.load(space).validate()
    assert not any("no searched parameter" in p for p in info.value.problems), info.value.problems
    assert any(p.startswith("scheduler pb2 needs at least one searched range among") for p in
               info.value.problems), info.value.problems


# ---------------------------------------------------------------------------------------------- the summary
def _row(trial_id: str, epochs: int, stopped_early: bool, status: str = "ok") -> dict:
    return {"trial_id": trial_id, "loss": "cross-entropy", "lr_schedule": "cosine", "params": {"lr": 0.05},
            "objective": 0.5, "val_top1_error": 0.5, "val_mistake_severity": 2.0, "epochs": epochs,
            "status": status, "stopped_early": stopped_early, "path": f"/nowhere/trial_{trial_id}",
            "constraints": {}, "feasible": None}


SPECS = {
    "asha": {"search": LR},
    "none": {"search": LR, "scheduler": "none"},
    "grid": {"search": {"lr": {"type": "grid", "values": [0.01, 0.1]}}},
    "pb2": {"search": LR, "scheduler": "pb2", "perturbation_interval": 2},
}


@pytest.mark.parametrize("mode, scheduler", [("asha", "asha"), ("none", "none"), ("grid", "none"),
                                             ("pb2", "pb2")])
def test_the_summary_names_the_scheduler_and_early_stops_only_under_asha(tmp_path, mode, scheduler):
    """Today every summary says "N stopped early by ASHA" and marks short trials "(ASHA stop)", also for a
    grid (scheduler none) and for PB2, which never stop a trial early."""
    from hiercls.tune.runner import format_table
    from hiercls.tune.summary import SearchOutcome

    spec = SearchSpec.from_dict({"name": "t", "storage_path": str(tmp_path), "epochs": 4, "grace_period": 1,
                                 **SPECS[mode]}).resolved()
    spec.validate()
    assert spec.scheduler_in_use() == scheduler
    rows = [_row("aaaa0001", 4, False), _row("bbbb0002", 2, True), _row("cccc0003", 1, False, "nan")]
    outcome = SearchOutcome(experiment_dir=tmp_path / "t", rows=rows, best=None, interrupted=False,
                            seconds=3.0)
    lines = format_table(outcome, spec)
    counts = next(ln for ln in lines if ln.startswith("3 trials"))
    statuses = [ln.split()[-1] if "ASHA" not in ln else ln.rsplit("  ", 1)[-1]
                for ln in lines if re.match(r"\d  (aaaa|bbbb)", ln)]
    if scheduler == "asha":
        assert counts == "3 trials: 1 stopped early by ASHA, 1 went NaN, 0 errored; 3 s"
        assert statuses == ["ok", "ok (ASHA stop)"]
    else:
        assert counts == f"3 trials (scheduler {scheduler}): 1 went NaN, 0 errored; 3 s"
        assert statuses == ["ok", "ok"] and not any("ASHA" in ln for ln in lines), lines


# ---------------------------------------------------------------------------------------------- word vectors
DEVISE = {
    "epochs": 4, "grace_period": 1,
    "train": {"architecture": "plainnet", "hierarchy": "cifar100-wordnet", "devise": True},
    "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
               "loss": {"type": "choice", "values": {
                   "ranking-loss": {"margin": {"type": "uniform", "low": 0.05, "high": 0.5}},
                   "cosine-distance": {}}}},
}


@pytest.mark.parametrize("vectors, problem", [
    ("missing.bin", "no such file"),
    ("bad.vec",
     "neither a fastText model nor a .vec file (its first line is not two positive integers 'N D')"),
])
def test_a_bad_word_vectors_file_is_one_line_before_ray_starts(tmp_path, capsys, vectors, problem):
    """Today the same word-vectors error is printed 4 times: the search checks each branch of the space at
    both ends of its ranges (2 x 2 configs), and each reads the one fixed file. One line, exit 2."""
    (tmp_path / "bad.vec").write_text("not word vectors\n")
    path = tmp_path / vectors
    train = {**DEVISE["train"], "word_vectors": str(path)}
    space = _write(tmp_path / "devise.yaml", {**DEVISE, "train": train})
    storage = tmp_path / "storage"
    for extra in (["--check"], []):
        problems = _refused(capsys, "--space", str(space), "--trainable", "toy", "--storage-path",
                            str(storage), *extra)
        assert problems == [f"search, all 4 configs checked: word vectors {path}: {problem}; expected a "
                            "fastText .bin model or a .vec text file (first line 'N D', then 'word v1 ... "
                            "vD')"]
    assert not storage.exists()
    # a grid of 4 points on the same file: one line too
    grid = {**DEVISE, "train": train, "search": {
        "loss": {"type": "grid", "values": ["ranking-loss", "cosine-distance"]},
        "lr": {"type": "grid", "values": [0.01, 0.1]}}}
    with pytest.raises(SpecError) as info:
        SearchSpec.load(_write(tmp_path / "grid.yaml", grid)).validate()
    assert info.value.problems == [f"search, all 4 configs checked: word vectors {path}: {problem}; expected "
                                   "a fastText .bin model or a .vec text file (first line 'N D', then "
                                   "'word v1 ... vD')"]


def test_a_problem_of_some_configs_keeps_where_it_was_found():
    """A problem shared by some of the checked configs (not all) is one line naming the first and how many
    more; a problem of one config keeps its own place."""
    spec = SearchSpec.from_dict({
        "name": "t", "epochs": 4, "grace_period": 1,
        "train": {"architecture": "plainnet", "lr_schedule": "cyclic", "min_lr": 0.05},
        "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
                   "loss": {"type": "choice", "values": {"cross-entropy": {}, "soft-labels": {}}}},
    })
    with pytest.raises(SpecError) as info:
        spec.validate()
    problems = [p for p in info.value.problems if "min_lr" in p]
    assert len(problems) == 1, info.value.problems
    assert problems[0].startswith("search (loss=cross-entropy), low end of the ranges and 1 more of the 4 "
                                  "configs checked: "), problems


# ---------------------------------------------------------------------------------------------- Ray's hint
RAY_HINT = ("Experiment has been interrupted, but the most recent state was saved.\n"
            "Resume experiment with: Tuner.restore(path=\"/x/joint\", trainable=...)")


def test_rays_resume_hint_is_dropped_while_the_search_runs():
    """Ray's ``tune.run`` logs its own "Resume experiment with: Tuner.restore(...)" after an interrupt,
    before hiercls prints its resume command; the guard around the search drops it (only it)."""
    from hiercls.tune.contracts import CONTRACTS, broken_contracts
    from hiercls.tune.guard import ray_log_guard

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    logger, kept = logging.getLogger("ray.tune.tune"), Keep()
    logger.addHandler(kept)
    try:
        logger.warning(RAY_HINT)  # outside a search: untouched
        with ray_log_guard(lambda err: None):
            logger.warning(RAY_HINT)
            logger.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.")
    finally:
        logger.removeHandler(kept)
    assert kept.messages == [RAY_HINT, "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."]
    # the text relied on is a contract with the installed Ray
    assert any("Resume experiment with" in c.name and "ray_log_guard" in c.used_for for c in CONTRACTS)
    assert broken_contracts() == []


@pytest.mark.slow
def test_an_interrupted_search_prints_only_hierclss_resume_command(ray_session, tmp_path):
    """A real Ctrl-C (a subprocess: the signal and the exit status are the point): exit 130, hiercls's
    resume command, and no "Resume experiment with: Tuner.restore(...)" from Ray before it."""
    space = _write(tmp_path / "toy.yaml", {
        "num_samples": 4, "epochs": 6, "grace_period": 6, "max_concurrent": 2, "cpus_per_trial": 0.5,
        "train": {"architecture": "plainnet"}, "search": LR})
    storage, log = tmp_path / "storage", tmp_path / "out.log"
    folder = storage / "hint"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tune_main.py"), "--space", str(space), "--trainable", "toy",
             "--toy-sleep", "1.0", "--name", "hint", "--storage-path", str(storage),
             "--address", ray_session.get_runtime_context().gcs_address],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            while not any(folder.glob("trial_*/checkpoint_000000")):
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]
    assert f"python tune_main.py --name hint --storage-path {storage} --resume" in text, text[-3000:]
    assert "Resume experiment with" not in text and "Tuner.restore(" not in text, text[-3000:]
