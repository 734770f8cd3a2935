"""The search plan and the capability table, without Ray: which searcher and scheduler a spec gets, every
refusal and warning the table generates, the trainable's reported metrics, resume and growth decided from
an experiment folder, and the plan module's imports."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from docpages import generator

from hiercls.experiment.manifest import adopt
from hiercls.experiment.study import STUDY_FILE, JournalError, open_storage
from hiercls.tune import modes
from hiercls.tune.modes import (
    NO_EFFECT,
    REFUSE,
    SCHEDULER_SETTINGS,
    SCHEDULERS,
    SEARCHER_SETTINGS,
    SEARCHERS,
    WARN,
)
from hiercls.tune.plan import make_plan
from hiercls.tune.spec import SearchSpec, SpecError

ROOT = Path(__file__).resolve().parents[1]
LR = {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}
GRID = {"lr": {"type": "grid", "values": [0.01, 0.1]}}


def spec(tmp_path: Path, **values) -> SearchSpec:
    base = {"name": "p", "storage_path": str(tmp_path), "epochs": 6, "train": {"architecture": "plainnet"},
            "search": LR}
    return SearchSpec.from_dict({**base, **values})


@pytest.mark.parametrize(("space", "overrides", "searcher", "scheduler"), [
    ("smoke", {}, "tpe", "asha"),
    ("default", {"scheduler": "none"}, "tpe", "none"),
    ("seed_comparison", {}, "grid", "none"),
    ("seed_comparison", {"scheduler": "asha", "epochs": 10}, "grid", "asha"),
    ("pb2_simple_hierarchy", {}, "pb2", "pb2"),
    ("hxe", {"multi_objective": True}, "nsga2", "none"),
])
def test_each_shipped_kind_of_search_gets_its_searcher_and_scheduler(tmp_path, space, overrides, searcher,
                                                                       scheduler):
    plan = make_plan(SearchSpec.load(space, {"storage_path": str(tmp_path), **overrides}), trainable="toy")
    assert (plan.searcher.name, plan.scheduler.name) == (searcher, scheduler)
    assert not plan.resume and plan.grow is None and not plan.restore_last
    assert [p.folder for p in plan.parts] == [plan.experiment_dir]
    assert not plan.experiment_dir.exists()  # a plan writes nothing


def test_the_capability_table_is_total():
    """Every searcher and scheduler says, for every setting of its kind, that it takes it or what happens
    to it; every searcher runs with schedulers that exist; every row has a Ray builder."""
    from hiercls.tune.builders import SCHEDULER_BUILDERS, SEARCHER_BUILDERS

    for table, settings, builders in ((SEARCHERS, SEARCHER_SETTINGS, SEARCHER_BUILDERS),
                                      (SCHEDULERS, SCHEDULER_SETTINGS, SCHEDULER_BUILDERS)):
        for mode in table.values():
            for key in settings:
                assert key in mode.takes or mode.rules[key].action in (REFUSE, WARN, NO_EFFECT), (mode, key)
            assert mode.name in builders
    for mode in SEARCHERS.values():
        assert mode.schedulers and set(mode.schedulers) <= set(SCHEDULERS), mode
    assert list(SEARCHERS)[-1] == "tpe"  # the default comes last: its select always holds


# a value for each mode-dependent setting that is given, and the space that selects each mode
GIVEN = {"startup_trials": 3, "points_to_evaluate": [{"lr": 0.05}], "constraints": ["val_top1_error <= 0.5"],
         "optuna_storage": "sqlite:///never-opened.db", "multi_objective": True, "grace_period": 2,
         "reduction_factor": 2.0, "perturbation_interval": 2}
SELECT = {"tpe": {"searcher": "tpe"}, "grid": {"search": GRID}, "nsga2": {"multi_objective": True},
          "pb2": {"scheduler": "pb2",
                  "train": {"architecture": "plainnet", "loss": "hierarchical-cross-entropy"},
                  "search": {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9}, **LR}}}


@pytest.mark.parametrize("searcher", sorted(SELECT))
def test_every_rule_of_the_table_is_what_a_search_says(tmp_path, searcher):
    """For each searcher (and its default scheduler), each setting it does not take, given alone: a
    refused one is a problem with the row's text, a warned one a warning, one of no effect neither."""
    mode = SEARCHERS[searcher]
    scheduler = SCHEDULERS[mode.schedulers[0]]
    for key, row in [*((k, mode) for k in SEARCHER_SETTINGS), *((k, scheduler) for k in SCHEDULER_SETTINGS)]:
        if key in row.takes or (key == "multi_objective" and searcher == "nsga2"):
            continue
        rule = row.rules[key]
        given = {**SELECT[searcher], key: GIVEN[key]}
        if key == "points_to_evaluate" and searcher == "pb2":
            given[key] = [{"alpha": 0.1, "lr": 0.05}]
        problems, notes = spec(tmp_path, **given).problems()
        text = rule.why.format(row.name)
        assert (text in problems, text in notes) == (rule.action == REFUSE, rule.action == WARN), (
            searcher, key, problems, notes)
    # the same settings at their defaults, not given: nothing said
    problems, notes = spec(tmp_path, **SELECT[searcher]).problems()
    assert problems == [] and not any(r.why.format(mode.name) in notes for r in mode.rules.values())


def test_pb2_ignores_nothing_silently(tmp_path):
    """What PB2 cannot use: --optuna-storage is refused (there is no study), --grace-period and
    --reduction-factor are warned about, and so is --perturbation-interval without PB2."""
    pb2 = SELECT["pb2"]
    problems, _ = spec(tmp_path, **pb2, optuna_storage="sqlite:///x.db").problems()
    assert any("so nothing to keep at --optuna-storage" in p for p in problems), problems
    with pytest.raises(SpecError, match="--optuna-storage"):
        make_plan(spec(tmp_path, **pb2, optuna_storage="sqlite:///x.db"))
    plan = make_plan(spec(tmp_path, **pb2, grace_period=2), trainable="toy")
    assert any(n.startswith("grace_period has no effect with PB2") for n in plan.notes), plan.notes
    notes = spec(tmp_path, perturbation_interval=2).validate()
    assert any("perturbation_interval is PB2's" in n and "scheduler asha" in n for n in notes), notes
    # given by the command line over a space file counts as given too
    path = tmp_path / "pb2.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in spec(tmp_path, **pb2).to_dict().items()
                                    if k in ("epochs", "scheduler", "train", "search")}))
    notes = SearchSpec.load(path, {"grace_period": 5}).validate()
    assert any("grace_period has no effect with PB2" in n for n in notes), notes
    assert not any("grace_period" in n for n in SearchSpec.load(path).validate())


def test_a_saved_spec_holds_every_setting_but_none_counts_as_given(tmp_path):
    """A resume reads the experiment's search_spec.yaml, which writes every setting; only the command
    line's count as given, so a PB2 experiment resumes without a warning about its saved grace_period."""
    saved = spec(tmp_path, **SELECT["pb2"]).resolved()
    path = tmp_path / "search_spec.yaml"
    path.write_text(saved.to_yaml() + yaml.safe_dump({"trainable": "toy"}))
    loaded = SearchSpec.load(path, ignore=("trainable",))
    assert loaded.given == frozenset() and loaded.validate() == []
    assert SearchSpec.load(path, {"top": 3}, ignore=("trainable",)).given == {"top"}


def test_unknown_searcher_and_scheduler_combinations_are_refused(tmp_path):
    problems, _ = spec(tmp_path, searcher="bayes").problems()
    assert problems == ["searcher='bayes' is unknown; valid: pb2, grid, nsga2, tpe"]
    problems, _ = spec(tmp_path, searcher="tpe", scheduler="pb2").problems()
    assert "scheduler='pb2' with searcher tpe: it runs with asha or none" in problems
    problems, _ = spec(tmp_path, searcher="tpe", search=GRID).problems()
    assert any("a type: grid entry needs searcher grid" in p for p in problems), problems
    problems, _ = spec(tmp_path, searcher="grid").problems()
    assert any("searcher 'grid' runs the points of type: grid entries" in p for p in problems), problems


def test_the_objective_and_constraints_must_be_reported_by_the_trainable(tmp_path):
    """The toy trainable reports no coarse error: a constraint on it would never be judged ("0 of 0")."""
    points = [{"lr": 0.05}]
    constrained = spec(tmp_path, constraints=["val_coarse_error <= baseline"], points_to_evaluate=points)
    with pytest.raises(SpecError) as info:
        make_plan(constrained, trainable="toy")
    assert info.value.problems == [
        "constraint 'val_coarse_error <= baseline' reads val_coarse_error, which the toy trainable never "
        "reports (it reports val_top1_error, val_mistake_severity, val_hdist@1, val_hdist@5)"]
    assert make_plan(constrained, trainable="train").trainable == "train"
    for objective in ("val_hdist@5", "val_top1_error + 0.1 * val_mistake_severity"):
        make_plan(spec(tmp_path, objective=objective), trainable="toy")


def test_max_concurrent_auto_undoes_a_space_file(tmp_path):
    import tune_main

    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump({"max_concurrent": 4, "epochs": 4, "search": LR}))
    args = tune_main.build_parser().parse_args(["--space", str(path), "--max-concurrent", "auto"])
    loaded = tune_main.spec_from_args(args)
    assert loaded.max_concurrent is None and "max_concurrent" in loaded.given
    plain = tune_main.spec_from_args(tune_main.build_parser().parse_args(["--space", str(path)]))
    assert plain.max_concurrent == 4
    with pytest.raises(SystemExit):
        tune_main.build_parser().parse_args(["--max-concurrent", "1.5"])
    assert make_plan(loaded.__class__.from_dict({**loaded.to_dict(), "storage_path": str(tmp_path)}),
                     trainable="toy").max_concurrent is None


def _saved_experiment(tmp_path: Path, spec_: SearchSpec, trials: int, status: str = "TERMINATED") -> Path:
    """A folder as Ray leaves it (tuner.pkl, a state file with ``trials`` trials), without Ray."""
    folder = spec_.experiment_dir
    folder.mkdir(parents=True)
    saved = spec_.resolved().to_yaml() + yaml.safe_dump({"trainable": "toy"})
    (folder / "search_spec.yaml").write_text(saved)
    (folder / "tuner.pkl").write_bytes(pickle.dumps(None))
    trial_data = [[json.dumps({"trial_id": f"t{i}", "status": status, "config": {}}), json.dumps({})]
                  for i in range(trials)]
    state = json.dumps({"trial_data": trial_data, "runner_data": {}})
    (folder / "experiment_state-2026.json").write_text(state)
    adopt(folder)  # its pickles recorded as this user's, as a search records what it writes
    import optuna  # the TPE search's study, in its journal

    optuna.create_study(study_name=spec_.name, storage=open_storage(folder))
    return folder


def test_resume_and_growth_are_decided_from_the_experiment(tmp_path):
    four = spec(tmp_path, num_samples=4)
    folder = _saved_experiment(tmp_path, four, trials=4)
    plan = make_plan(spec(tmp_path, num_samples=4), resume=True)
    assert plan.trainable == "toy" and plan.resume and plan.grow is None
    assert plan.restore_last  # nothing to grow: Ray restores (and finds nothing left to run)
    grown = make_plan(spec(tmp_path, num_samples=6), resume=True)
    assert grown.grow is not None and grown.grow.folder == folder / "grow-1" and grown.grow.num_samples == 2
    assert not grown.restore_last  # the first part is done: only the growth runs
    assert grown.sampler_seed(grown.grow) == 7919 and grown.sampler_seed(grown.parts[0]) == 0
    assert grown.points(grown.grow) is None
    with pytest.raises(SpecError, match="--num-samples 3 is below the search's 4 trials"):
        make_plan(spec(tmp_path, num_samples=3), resume=True)
    with pytest.raises(SpecError, match="experiment .* already exists"):
        make_plan(spec(tmp_path, num_samples=4))
    with pytest.raises(SpecError, match="the search specification changed in 1 key"):
        make_plan(spec(tmp_path, num_samples=4, epochs=7), resume=True)


def test_a_resume_without_its_study_journal_is_refused(tmp_path):
    folder = _saved_experiment(tmp_path, spec(tmp_path, num_samples=4), trials=4)
    (folder / STUDY_FILE).unlink()
    with pytest.raises(JournalError, match="its Optuna journal .* is missing .*nothing was changed"):
        make_plan(spec(tmp_path, num_samples=4), resume=True)
    assert not (folder / STUDY_FILE).exists()


def test_an_unfinished_part_is_restored_before_it_grows(tmp_path):
    _saved_experiment(tmp_path, spec(tmp_path, num_samples=4), trials=4, status="RUNNING")
    plan = make_plan(spec(tmp_path, num_samples=6), resume=True)
    assert plan.restore_last and plan.grow is not None


def test_a_grid_cannot_grow(tmp_path):
    grid = spec(tmp_path, search=GRID)
    _saved_experiment(tmp_path, grid, trials=2)
    with pytest.raises(SpecError, match="num_samples=3 differs from the grid's 2 points"):
        make_plan(spec(tmp_path, search=GRID, num_samples=3), resume=True)


def test_the_plan_and_the_table_import_no_ray():
    code = ("import sys, hiercls.tune.plan, hiercls.tune.modes, hiercls.tune.spec, tune_main; "
            "print(sorted(m for m in ('ray', 'optuna', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_registered_mode_gets_its_refusals_and_its_docs_row(tmp_path):
    """A throwaway searcher row: refusals of what it does not take are generated, and the modes table
    of the docs lists it (the Ray half, a builder and a search, is tests/test_tune.py's)."""
    row = modes.register(modes.Mode("budget", "random draws, a fixed budget", "searcher: budget",
                                    takes=("points_to_evaluate",), schedulers=("none",)))
    try:
        problems, _ = spec(tmp_path, searcher="budget", constraints=["val_top1_error <= 0.5"]).problems()
        assert "constraints: searcher budget does not use it; drop it" in problems
        row_text = "| `budget` | random draws, a fixed budget | searcher: budget | none |"
        assert row_text in generator().modes_page()
        assert spec(tmp_path, searcher="budget").validate() == []
    finally:
        modes.unregister(row.name)
    assert "budget" not in generator().modes_page()


def test_a_searcher_saved_before_the_ask_and_tell_searcher_restores(tmp_path):
    """An experiment started before hiercls ran Optuna through its own searcher saved Ray's OptunaSearch
    state (its pickled ``__dict__``: Trial objects, completed ids, the sampler); a resume converts it: the
    finished trial is not told again, the running one is told when it ends, and the sampler goes on."""
    import optuna
    from optuna.trial import TrialState

    from hiercls.experiment.study import STUDY_FILE, load_study, open_storage
    from hiercls.tune.space import DefineByRun, SearchAlgorithm

    spec_ = spec(tmp_path, name="old")
    folder = tmp_path / "old"
    storage = open_storage(folder)
    study = optuna.create_study(storage=storage, study_name="old", sampler=optuna.samplers.TPESampler(seed=0))
    done, running = study.ask(), study.ask()
    for trial in (done, running):
        DefineByRun(spec_.params())(trial)
    study.tell(done, 0.5)
    old_state = {"_ot_trials": {"aaaa": done, "bbbb": running}, "_completed_trials": {"aaaa"},
                 "_sampler": study.sampler, "_storage": storage, "_ot_study": study, "_bounds": None}
    (folder / "searcher-state-old.pkl").write_bytes(pickle.dumps(old_state))
    restored = SearchAlgorithm(DefineByRun(spec_.params()), "objective", "min", storage=open_storage(folder),
                               study_name="old", experiment_dir=str(folder))
    restored.restore(str(folder / "searcher-state-old.pkl"))
    restored.on_trial_complete("aaaa", {"objective": 0.9, "epoch": 6, "training_iteration": 6})
    restored.on_trial_complete("bbbb", {"objective": 0.25, "epoch": 6, "training_iteration": 6})
    assert (folder / STUDY_FILE).is_file()
    trials = load_study(folder).trials
    assert [(t.state, t.value) for t in trials] == [(TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.25)]
    assert restored.suggest("cccc") is not None and len(load_study(folder).trials) == 3


def test_a_pb2_point_on_a_loguniform_key_is_run_exactly(tmp_path):
    """PB2 carries a loguniform value as ``log10(key)`` (so it moves it in log space); a
    ``points_to_evaluate`` point given on the plain key goes in under the log key and comes back as
    written, 15 significant digits exact, like every value decoded from a log key."""
    import math

    from ray.tune.search import BasicVariantGenerator

    from hiercls.experiment.layout import searched_values
    from hiercls.tune.builders import pb2_population

    pb2 = {**SELECT["pb2"], "points_to_evaluate": [{"alpha": 0.1, "lr": 0.05}], "num_samples": 3}
    plan = make_plan(spec(tmp_path, **pb2), trainable="toy")
    built = pb2_population(plan, plan.parts[0])
    assert isinstance(built.search_alg, BasicVariantGenerator) and built.num_samples == 3
    built.search_alg.add_configurations({"pb2": {"run": lambda config: None, "config": built.param_space,
                                                 "num_samples": built.num_samples}})
    configs = []
    while (trial := built.search_alg.next_trial()) is not None:
        configs.append(trial.config)
    assert len(configs) == 3 and all("lr" not in c and "log10(lr)" in c for c in configs)
    assert searched_values(configs[0]) == {"alpha": 0.1, "lr": 0.05}
    assert all(0.01 <= searched_values(c)["lr"] <= 0.2 for c in configs[1:])
    assert searched_values({"log10(lr)": math.log10(0.0123456789)}) == {"lr": 0.0123456789}


def test_the_search_package_stays_small():
    """The issue's bounds on the search package: ``run_search`` under 60 lines, and no function with more
    than about 20 decision points (each if, loop, comprehension, conditional expression, except, with,
    assert, and each extra operand of and/or), so a new mode is a row of the table, not an if."""
    import ast

    counted = (ast.If, ast.IfExp, ast.For, ast.While, ast.ExceptHandler, ast.Assert, ast.With)
    worst = []
    for path in sorted((ROOT / "hiercls" / "tune").glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            points = sum(isinstance(n, counted) + (len(n.values) - 1 if isinstance(n, ast.BoolOp) else 0)
                         + (1 + len(n.ifs) if isinstance(n, ast.comprehension) else 0) for n in ast.walk(fn))
            worst.append((points, f"{path.name}:{fn.name}"))
            if fn.name == "run_search":
                assert fn.end_lineno - fn.lineno + 1 < 60, fn.end_lineno - fn.lineno + 1
    assert max(worst)[0] <= 22, sorted(worst)[-5:]
