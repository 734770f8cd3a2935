"""Search specifications: parsing, CLI precedence, and every validation error (no Ray, no data)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml

from hiercls.tune.spec import SearchSpec, SpecError, parse_objective, spec_differences

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def make(**values) -> SearchSpec:
    base = {"name": "t", "epochs": 10, "grace_period": 2, "train": {"architecture": "plainnet"}}
    base.update(values)
    return SearchSpec.from_dict(base)


def problems_of(spec: SearchSpec) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec.validate()
    return info.value.problems


def test_shipped_spaces_are_valid():
    names = {p.stem for p in SPACES}
    assert {"default", "hxe", "soft_labels", "simple_hierarchy", "lr_schedules", "joint", "smoke"} <= names
    for path in SPACES:
        if path.stem != "devise":  # needs a word-vectors file: test_devise_space_needs_its_word_vectors
            SearchSpec.load(path).validate()


def test_devise_space_needs_its_word_vectors(tmp_path, monkeypatch):
    from hiercls.hierarchy import CIFAR100_CLASSES

    monkeypatch.chdir(tmp_path)
    space = ROOT / "search_spaces/devise.yaml"
    assert any("cc.en.300.bin: no such file" in p for p in problems_of(SearchSpec.load(space)))
    words = sorted({w for name in CIFAR100_CLASSES for w in name.split("_")})
    rng = random.Random(0)
    rows = [f"{w} " + " ".join(f"{rng.uniform(-1, 1):.4f}" for _ in range(5)) for w in words]
    # fastText's text format under the .bin name the space expects (the format is read from the content)
    (tmp_path / "cc.en.300.bin").write_text(f"{len(words)} 5\n" + "\n".join(rows) + "\n")
    spec = SearchSpec.load(space)
    spec.validate()
    assert spec.train["devise"] is True and set(spec.search["loss"]["values"]) == {"ranking-loss",
                                                                                   "cosine-distance"}


def test_shipped_space_contents():
    hxe = SearchSpec.load(ROOT / "search_spaces/hxe.yaml").resolved()
    assert hxe.search["alpha"] == {"type": "uniform", "low": 0.0, "high": 0.9}
    soft = SearchSpec.load(ROOT / "search_spaces/soft_labels.yaml").resolved()
    assert soft.search["beta"] == {"type": "loguniform", "low": 1.0, "high": 30.0}
    simple = SearchSpec.load(ROOT / "search_spaces/simple_hierarchy.yaml", {"epochs": 40}).resolved()
    assert simple.search["coarse_loss_start_epoch"]["high"] == 20.0  # half the run, from --epochs
    assert simple.search["coarse_loss_ramp_epochs"]["high"] == pytest.approx(12.0)
    assert simple.train["fine_loss_start_epoch"] == 0
    for lam in ("lambda_fine", "lambda_coarse"):
        assert (simple.search[lam]["low"], simple.search[lam]["high"]) == (0.0, 2.0)
    schedules = SearchSpec.load(ROOT / "search_spaces/lr_schedules.yaml").resolved()
    assert set(schedules.search["lr_schedule"]["values"]) == {"cosine", "cyclic", "cutout"}
    joint = SearchSpec.load(ROOT / "search_spaces/joint.yaml").resolved()
    branches = joint.search["loss"]["values"]
    assert set(branches["hierarchical-cross-entropy"]) == {"alpha"}
    assert set(branches["soft-labels"]) == {"beta"}
    bd = branches["cosine-plus-xent"]
    assert bd["barzdenzler"] is True and "xent_weight" in bd
    assert set(branches["yolo-v2"]) == {"alpha"}
    assert "alpha" not in joint.search and "beta" not in joint.search
    smoke = SearchSpec.load(ROOT / "search_spaces/smoke.yaml")
    assert smoke.train["architecture"] == "plainnet" and smoke.epochs == 2
    assert smoke.train["max_train_samples"] == 2000 and smoke.train["val_size"] == 500
    assert smoke.num_samples >= 4 and smoke.grace_period < smoke.epochs


def test_command_line_wins_and_name_defaults_to_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"num_samples": 7, "epochs": 12, "seed": 3}))
    spec = SearchSpec.load(path, {"num_samples": 9, "epochs": None})
    assert (spec.num_samples, spec.epochs, spec.seed, spec.name) == (9, 12, 3, "mine")


def test_cli_help_shows_defaults(capsys):
    import tune_main

    with pytest.raises(SystemExit):
        tune_main.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "search_spaces/default.yaml" in text and "(default: 20)" in text and "NSGA-II" in text


def test_cli_invalid_space_exits_2_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    import tune_main

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called on invalid input")

    monkeypatch.setattr(ray, "init", no_ray)
    path = tmp_path / "bad.yaml"
    bad = {"bogus": 1, "search": {"alpha": {"type": "uniform", "low": 1, "high": 0}}}
    path.write_text(yaml.safe_dump(bad))
    assert tune_main.main(["--space", str(path), "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err


def test_all_problems_listed_at_once_and_ray_not_started(monkeypatch, tmp_path):
    import ray

    from hiercls.tune.runner import run_search

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called on invalid input")

    monkeypatch.setattr(ray, "init", no_ray)
    spec = make(
        storage_path=str(tmp_path),
        train={"architecture": "resnet999", "loss": "soft-labels", "colour": "red"},
        search={
            "lr": {"type": "loguniform", "low": 0.0, "high": 0.1},
            "alpha": {"type": "uniform", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "uniform", "low": 0.01, "high": 0.01},
            "momentum": {"type": "uniform", "low": 0.9, "high": 0.5},
            "wobble": {"type": "uniform", "low": 0, "high": 1},
        },
        objective="accuracy",
    )
    with pytest.raises(SpecError) as info:
        run_search(spec, trainable="toy")
    text = str(info.value)
    for needle in ("resnet999", "colour", "log-scale range needs low > 0", "alpha", "empty range",
                   "inverted range", "wobble", "objective 'accuracy'"):
        assert needle in text, needle
    assert len(info.value.problems) >= 8


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"bogus_setting": 1}, "unknown setting 'bogus_setting'"),
        ({"train": {"nonsense": 1}}, "unknown config key 'nonsense'"),
        ({"search": {"nonsense": {"type": "uniform", "low": 0, "high": 1}}}, "unknown config key 'nonsense'"),
        ({"search": {"lr": {"type": "uniform", "low": 0.1, "high": 0.2, "step": 2}}}, "unknown key(s) step"),
        ({"search": {"lr": {"type": "normal", "low": 0.1, "high": 0.2}}}, "unknown distribution type"),
        ({"search": {"lr": {"type": "uniform", "low": 0.1, "high": 0.1}}}, "empty range"),
        ({"search": {"lr": {"type": "uniform", "low": 0.2, "high": 0.1}}}, "inverted range"),
        ({"search": {"batch_size": {"type": "int", "low": 256, "high": 64}}}, "inverted range"),
        ({"search": {"lr": {"type": "loguniform", "low": -1, "high": 0.1}}}, "needs low > 0"),
        ({"search": {"lr": {"type": "choice", "values": []}}}, "non-empty list"),
        ({"search": {"epochs": {"type": "int", "low": 1, "high": 3}}}, "set by the search itself"),
        ({"train": {"loss": "fancy-loss"}}, "loss 'fancy-loss' is unknown"),
        ({"train": {"architecture": "vgg99"}}, "vgg99"),
        ({"train": {"lr_schedule": "sawtooth"}}, "lr_schedule 'sawtooth' is unknown"),
        ({"search": {"loss": {"type": "choice", "values": ["cross-entropy", "fancy"]}}},
         "loss 'fancy' is unknown"),
        ({"train": {"loss": "soft-labels"}, "search": {"alpha": {"type": "uniform", "low": 0, "high": 0.5}}},
         "selects loss 'soft-labels'"),
        ({"search": {"loss": {"type": "choice", "values": {
            "cross-entropy": {}, "soft-labels": {"alpha": {"type": "uniform", "low": 0, "high": 0.5}}}}}},
         "selects loss 'soft-labels'"),
        ({"search": {"loss": {"type": "choice", "values": ["cross-entropy", "soft-labels"]},
                     "beta": {"type": "uniform", "low": 1, "high": 5}}}, "selects loss 'cross-entropy'"),
        ({"train": {"lr_schedule": "cyclic"}, "search": {"t0": {"type": "uniform", "low": 1, "high": 5}}},
         "selects lr_schedule 'cyclic'"),
        ({"train": {"loss": "cross-entropy", "alpha": 0.3}}, "train.alpha"),
        ({"train": {"loss": "simple-hierarchy"}, "grace_period": 4,
          "search": {"coarse_loss_start_epoch": {"type": "uniform", "low": 0, "high": 5}}},
         "grace_period=4 is not above the largest start epoch"),
        ({"train": {"loss": "simple-hierarchy"},
          "search": {"lambda_fine": {"type": "choice", "values": [0.0, 1.0]},
                     "lambda_coarse": {"type": "choice", "values": [0.0, 1.0]}}},
         "every loss term of simple-hierarchy can be switched off"),
        ({"train": {"loss": "simple-hierarchy"}, "grace_period": 5,
          "search": {"fine_loss_start_epoch": {"type": "uniform", "low": 0, "high": 3},
                     "coarse_loss_start_epoch": {"type": "uniform", "low": 0, "high": 3}}},
         "every loss term of simple-hierarchy can be switched off"),
        ({"objective": "val_top5_error"}, "objective 'val_top5_error' is not accepted"),
        ({"objective": "val_top1_error + -2 * val_mistake_severity"}, "is not accepted"),
        ({"grace_period": 11}, "grace_period=11 is out of range"),
        ({"reduction_factor": 1}, "reduction_factor=1.0 is out of range"),
        ({"evaluate_test": True}, "evaluate_test: true with scheduler asha"),
        ({"num_samples": 0}, "num_samples=0 is out of range"),
        ({"search": {"lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
          "points_to_evaluate": [{"lr": 0.5}]}, "outside its distribution"),
        ({"search": {"lr": {"type": "uniform", "low": 0.01, "high": 0.1}},
          "points_to_evaluate": [{"momentum": 0.5}]}, "'momentum' is not a searched key"),
        ({"search": {"loss": {"type": "choice", "values": {
            "cross-entropy": {}, "soft-labels": {"beta": {"type": "uniform", "low": 1, "high": 5}}}}},
          "points_to_evaluate": [{"loss": "cross-entropy", "beta": 2.0}]}, "belongs to a branch"),
        ({"search": {"lr": {"type": "uniform", "low": 0.01, "high": 0.1}}, "train": {"lr": 0.05}},
         "also fixed under train"),
        ({"search": {"min_lr": {"type": "uniform", "low": 0.001, "high": 0.05}},
          "train": {"lr_schedule": "cyclic", "lr": 0.01}}, "high end of the ranges"),
    ],
)
def test_each_validation_error(values, needle):
    if "bogus_setting" in values:
        with pytest.raises(SpecError, match="bogus_setting"):
            make(**values)
        return
    problems = problems_of(make(**values))
    assert any(needle in p for p in problems), problems


def test_mistake_severity_objective_warns():
    notes = make(objective="val_mistake_severity").validate()
    assert any("many small mistakes" in n for n in notes)


def test_objectives():
    record = {"val_top1_error": 0.4, "val_mistake_severity": 2.5, "val_hdist@1": 1.0, "val_hdist@5": 2.0}
    assert parse_objective("val_top1_error")(record) == 0.4
    assert parse_objective("val_hdist@1")(record) == 1.0
    assert parse_objective("val_hdist@5")(record) == 2.0
    weighted = parse_objective("val_top1_error + 0.2 * val_mistake_severity")
    assert weighted(record) == pytest.approx(0.9)
    assert math.isnan(weighted({"val_top1_error": math.nan, "val_mistake_severity": 1.0}))
    with pytest.raises(ValueError, match="not accepted"):
        parse_objective("val_loss")


def test_spec_differences_list_changed_keys():
    a = make(search={"alpha": {"type": "uniform", "low": 0.0, "high": 0.9}},
             train={"loss": "hierarchical-cross-entropy"}).resolved().to_dict()
    b = make(search={"alpha": {"type": "uniform", "low": 0.0, "high": 0.5}},
             train={"loss": "hierarchical-cross-entropy"}, max_concurrent=9).resolved().to_dict()
    diffs = spec_differences(a, b)
    assert len(diffs) == 1 and diffs[0].startswith("search.alpha.high")  # max_concurrent may change


def test_define_by_run_keeps_inactive_parameters_out():
    import optuna
    from spaces import draw

    from hiercls.tune.space import TRIAL_INDEX, DefineByRun

    spec = SearchSpec.load(ROOT / "search_spaces/joint.yaml")
    params = spec.params()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = DefineByRun(params)
    owners = {"alpha": {"hierarchical-cross-entropy", "yolo-v2"}, "beta": {"soft-labels"},
              "lambda_fine": {"simple-hierarchy"}, "xent_weight": {"cosine-plus-xent"},
              "barzdenzler": {"cosine-plus-xent"}}
    sched_owner = {"t0": "cosine", "step_size": "cyclic", "gamma": "cutout"}
    seen_losses = set()
    for _ in range(60):
        trial = study.ask()
        fixed = space(trial)
        config = {**trial.params, **fixed}
        study.tell(trial, 0.0)
        seen_losses.add(config["loss"])
        for key, losses in owners.items():
            assert (key in config) == (config["loss"] in losses)
        for key, schedule in sched_owner.items():
            assert (key in config) == (config["lr_schedule"] == schedule)
        assert config[TRIAL_INDEX] == trial.number
    assert len(seen_losses) == 6
    sample = draw(params, random.Random(0))
    assert "loss" in sample and "lr" in sample


def test_large_searches_need_allow_large_search(tmp_path, capsys):
    import tune_main
    from hiercls.tune.spec import MAX_SAMPLES

    problems = problems_of(make(num_samples=MAX_SAMPLES + 1))
    assert any("--allow-large-search" in p and "10,000" in p for p in problems), problems
    make(num_samples=MAX_SAMPLES).validate()
    make(num_samples=MAX_SAMPLES + 1, allow_large_search=True).validate()
    # a runtime setting: a resume may add or drop it without "the search specification changed"
    saved = make(num_samples=50_000, allow_large_search=True).resolved().to_dict()
    assert spec_differences(saved, make(num_samples=50_000).resolved().to_dict()) == []
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"num_samples": 20_000, "epochs": 4, "grace_period": 1,
                                    "train": {"architecture": "plainnet"}}))
    assert tune_main.main(["--space", str(path), "--storage-path", str(tmp_path), "--trainable", "toy"]) == 2
    assert "--allow-large-search" in capsys.readouterr().err
    args = tune_main.build_parser().parse_args(["--space", str(path), "--allow-large-search"])
    assert tune_main.spec_from_args(args).allow_large_search is True


def test_grace_period_equal_to_epochs_warns():
    notes = make(epochs=10, grace_period=10).validate()
    assert any("grace_period=10 equals epochs" in n and "ASHA stops no trial" in n for n in notes), notes
    assert not any("equals epochs" in n for n in make(epochs=10, grace_period=9).validate())
    assert not any("equals epochs" in n for n in make(epochs=10, grace_period=10,
                                                       multi_objective=True).validate())
    assert any("grace_period=11 is out of range" in p for p in problems_of(make(epochs=10, grace_period=11)))


def test_resume_reads_a_saved_spec_that_records_its_trainable(tmp_path):
    """``--resume`` without --space loads STORAGE/NAME/search_spec.yaml, which also holds ``trainable:``
    (the README's resume command failed with "unknown setting 'trainable'")."""
    import tune_main

    spec = make(storage_path=str(tmp_path), name="old", num_samples=7).resolved()
    folder = spec.experiment_dir
    folder.mkdir()
    (folder / "search_spec.yaml").write_text(spec.to_yaml() + yaml.safe_dump({"trainable": "toy"}))
    args = tune_main.build_parser().parse_args(["--name", "old", "--storage-path", str(tmp_path), "--resume"])
    loaded = tune_main.spec_from_args(args)
    assert loaded.num_samples == 7 and loaded.name == "old"
    assert spec_differences(spec.to_dict(), loaded.resolved().to_dict()) == []
    # the saved spec given as --space (e.g. copied to start a similar search) is read as well
    args = tune_main.build_parser().parse_args(["--space", str(folder / "search_spec.yaml"), "--name", "new"])
    assert tune_main.spec_from_args(args).num_samples == 7
    with pytest.raises(SpecError, match="unknown setting 'trainable'"):  # elsewhere it stays an error
        other = tmp_path / "space.yaml"
        other.write_text(yaml.safe_dump({"trainable": "toy"}))
        SearchSpec.load(other)


def test_cli_help_documents_resume_trust_and_exit_statuses(capsys):
    import tune_main

    with pytest.raises(SystemExit):
        tune_main.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    needles = ("--trust-experiment", "--allow-large-search", "unpickles",
               "--name NAME --storage-path DIR --resume", "Exit status: 0 done",
               "3 an OS error while writing", "130 interrupted", "never 1")
    for needle in needles:
        assert needle in text, needle
    assert "Exit status" in tune_main.__doc__ and "130" in tune_main.__doc__


# ---------------------------------------------------------------------------------------------- grids
SEED_POINTS = {("cross-entropy", None), ("cosine-distance", None)} | {
    ("hierarchical-cross-entropy", a) for a in (0.1, 0.2, 0.4, 0.6, 0.9)} | {
    ("soft-labels", b) for b in (4, 8, 15, 20, 30)}


def point_key(point: dict) -> tuple:
    """(loss, its alpha or beta): how the seed's comparison names a point."""
    return point["loss"], point.get("alpha", point.get("beta"))


def grid(values) -> dict:
    return {"type": "grid", "values": values}


LOSS_GRID = {"loss": grid({
    "cross-entropy": {},
    "hierarchical-cross-entropy": {"alpha": grid([0.1, 0.5]), "normalize": True},
    "soft-labels": {"beta": grid([4, 30])},
})}


def test_grid_expansion_counts_and_order():
    """Each branch's grid is its own combination, the points are the union of the branches' points, and a
    top-level grid multiplies them; plain values (top level or in a branch) are part of the points."""
    spec = make(search={**LOSS_GRID, "lr": grid([0.01, 0.1]), "weight_decay": 0.001})
    spec.validate()
    points = spec.grid_points()
    assert spec.is_grid() and len(points) == (1 + 2 + 2) * 2
    assert points[:3] == [
        {"loss": "cross-entropy", "lr": 0.01, "weight_decay": 0.001},
        {"loss": "cross-entropy", "lr": 0.1, "weight_decay": 0.001},
        {"loss": "hierarchical-cross-entropy", "alpha": 0.1, "normalize": True, "lr": 0.01,
         "weight_decay": 0.001},
    ]
    assert all(("alpha" in p) == (p["loss"] == "hierarchical-cross-entropy") for p in points)
    assert all(("beta" in p) == (p["loss"] == "soft-labels") for p in points)
    assert len({repr(sorted(p.items())) for p in points}) == len(points)  # each point once
    assert spec.grid_points() == points  # a fixed order
    assert spec.resolved().num_samples == 10 and make(search=LOSS_GRID).resolved().num_samples == 5
    # one branch's grid is a product of its own keys; a branch may be a single fixed point
    product = make(train={"loss": "simple-hierarchy"}, grace_period=2,
                   search={"lambda_fine": grid([0.5, 1.0, 2.0]), "lambda_coarse": grid([0.5, 1.0])})
    assert len(product.grid_points()) == 6 and product.validate() == []
    single = make(search={"loss": grid({"cross-entropy": {}})})
    assert single.grid_points() == [{"loss": "cross-entropy"}]
    # a grid over a list-valued key (ints/floats): each list is one value
    lists = make(train={"lr_schedule": "cutout"}, search={"milestones": grid([[3, 6], [5, 8]])})
    assert lists.validate() == [] and lists.grid_points() == [{"milestones": [3, 6]}, {"milestones": [5, 8]}]
    assert SearchSpec.from_dict(lists.resolved().to_dict()).grid_points() == lists.grid_points()
    # a TPE space is no grid, and its num_samples default stays 20
    tpe = make(search={"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}})
    assert not tpe.is_grid() and tpe.grid_points() == [] and tpe.resolved().num_samples == 20


def test_seed_comparison_space_has_exactly_the_seeds_12_points():
    from hiercls.tune.spec import resolve_space, shipped_spaces

    assert "seed_comparison" in shipped_spaces()
    assert resolve_space("seed_comparison") == ROOT / "search_spaces/seed_comparison.yaml"
    spec = SearchSpec.load("seed_comparison")
    spec.validate()
    points = spec.grid_points()
    assert len(points) == 12 and {point_key(p) for p in points} == SEED_POINTS
    barz = [p for p in points if p["loss"] == "cosine-distance"]
    assert barz == [{"loss": "cosine-distance", "barzdenzler": True}]
    assert not any("barzdenzler" in p for p in points if p["loss"] != "cosine-distance")
    assert spec.train == {"architecture": "plainnet", "hierarchy": "cifar100-wordnet",
                          "lr_schedule": "cosine"}
    assert spec.scheduler_in_use() == "none" and spec.resolved().num_samples == 12
    assert spec.epochs == 180  # the seed's length


@pytest.mark.parametrize(("search", "key"), [
    ({**LOSS_GRID, "lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}, "search.lr"),
    ({"loss": grid({"cross-entropy": {}, "soft-labels": {"beta": {"type": "uniform", "low": 1, "high": 5}}})},
     "search[loss=soft-labels].beta"),
    ({"lr": grid([0.01, 0.1]), "weight_decay": {"type": "choice", "values": [0.0001, 0.001]}},
     "search.weight_decay"),
    ({"lr": grid([0.01, 0.1]), "batch_size": {"type": "int", "low": 64, "high": 256}}, "search.batch_size"),
])
def test_grid_mixed_with_a_distribution_is_refused_naming_the_key(search, key):
    problems = problems_of(make(search=search))
    mixed = [p for p in problems if "distribution in a grid search" in p]
    assert len(mixed) == 1 and mixed[0].startswith(f"{key}: "), problems
    assert "\n" not in mixed[0]


def test_grid_refusals_exit_2_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    import tune_main

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called on invalid input")

    monkeypatch.setattr(ray, "init", no_ray)
    path = tmp_path / "mixed.yaml"
    mixed = {**LOSS_GRID, "lr": {"type": "uniform", "low": 0.01, "high": 0.1}}
    path.write_text(yaml.safe_dump({"epochs": 2, "train": {"architecture": "plainnet"}, "search": mixed}))
    argv = ["--space", str(path), "--storage-path", str(tmp_path), "--trainable", "toy"]
    assert tune_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "search.lr: a uniform distribution in a grid search" in err and "Traceback" not in err
    assert tune_main.main([*argv[:2], "--storage-path", str(tmp_path), "--scheduler", "hyperband"]) == 2
    assert "scheduler='hyperband' is unknown; valid: asha, none" in capsys.readouterr().err


def test_grid_num_samples_and_points_to_evaluate():
    make(search=LOSS_GRID, num_samples=5).validate()  # the number of points may be given
    problems = problems_of(make(search=LOSS_GRID, num_samples=20))
    assert any("num_samples=20 differs from the grid's 5 points" in p and "exactly once" in p
               for p in problems), problems
    problems = problems_of(make(search=LOSS_GRID, points_to_evaluate=[{"loss": "cross-entropy"}]))
    assert any("points_to_evaluate[0]: 'loss' is also a grid entry" in p for p in problems), problems
    # configurations at every point of a grid over seeds (what hiercls-confirm runs)
    seeds = {"seed": grid([11, 12, 13])}
    configs = [{"loss": "cross-entropy"}, {"loss": "hierarchical-cross-entropy", "alpha": 0.4}]
    spec = make(search=seeds, points_to_evaluate=configs)
    spec.validate()
    assert spec.resolved().num_samples == 6
    assert spec.grid_points() == [{**c, "seed": s} for c in configs for s in (11, 12, 13)]
    problems = problems_of(make(search=seeds, points_to_evaluate=[{"alpha": 0.4, "epochs": 3}]))
    assert any("'epochs' is set by the search itself" in p for p in problems), problems
    # a grid larger than MAX_SAMPLES needs --allow-large-search, as num_samples does
    big = {"lr": grid([0.01 * (i + 1) for i in range(101)]), "momentum": grid([0.01 * i for i in range(100)])}
    problems = problems_of(make(search=big))
    assert any("grid's 10,100 points are above 10,000" in p for p in problems), problems


@pytest.mark.parametrize(("values", "problem"), [
    ({"search": {"lr": grid([])}}, "grid needs a non-empty list"),
    ({"search": {"loss": grid({})}}, "grid has no values"),
    ({"search": {"lr": grid([0.1, 0.1])}}, "grid values repeat"),
    ({"search": {"lr": grid([{"a": 1}])}}, "grid values must be numbers"),
    ({"search": {"loss": grid(["cross-entropy", "fancy"])}}, "loss 'fancy' is unknown"),
    ({"search": {"loss": grid({"cross-entropy": {"alpha": grid([0.1, 0.2])}})}},
     "selects loss 'cross-entropy'"),
    ({"search": {"lr": grid([0.1, -1.0])}}, "grid point 1 (lr=-1.0)"),
])
def test_bad_grids(values, problem):
    problems = problems_of(make(**values))
    assert any(problem in p for p in problems), problems


def test_scheduler_setting():
    tpe = make(search={"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}})
    assert tpe.scheduler_in_use() == "asha"
    assert make(search=LOSS_GRID).scheduler_in_use() == "none"
    assert make(search=LOSS_GRID, scheduler="asha").scheduler_in_use() == "asha"
    assert make(multi_objective=True).scheduler_in_use() == "none"
    assert make(scheduler="none").scheduler_in_use() == "none"
    problems = problems_of(make(scheduler="hyperband"))
    assert problems == ["scheduler='hyperband' is unknown; valid: asha, none, pb2 (default: asha for a TPE "
                        "search, none for a grid search; pb2: population-based training)"]
    problems = problems_of(make(scheduler="asha", multi_objective=True))
    assert any("scheduler='asha' with --multi-objective" in p for p in problems), problems
    # ASHA's settings are checked only when ASHA runs
    assert any("grace_period=11" in p for p in problems_of(make(search=LOSS_GRID, grace_period=11,
                                                                 scheduler="asha")))
    make(search=LOSS_GRID, grace_period=11).validate()
    make(scheduler="none", grace_period=11, reduction_factor=1).validate()
    assert not any("equals epochs" in n for n in make(search=LOSS_GRID, grace_period=10).validate())


def test_grid_spec_round_trips_for_resume(tmp_path):
    """The saved (resolved) spec of a grid search loads back to the same points, and resuming with the
    space file itself sees no change; a spec saved before ``scheduler`` existed still resumes."""
    import tune_main

    spec = SearchSpec.load("seed_comparison", {"storage_path": str(tmp_path), "epochs": 4}).resolved()
    folder = spec.experiment_dir
    folder.mkdir(parents=True)
    (folder / "search_spec.yaml").write_text(spec.to_yaml() + yaml.safe_dump({"trainable": "toy"}))
    args = tune_main.build_parser().parse_args(["--name", "seed_comparison", "--storage-path", str(tmp_path),
                                                "--resume"])
    loaded = tune_main.spec_from_args(args)
    assert loaded.grid_points() == spec.grid_points() and loaded.num_samples == 12
    assert spec_differences(spec.to_dict(), loaded.resolved().to_dict()) == []
    again = SearchSpec.load("seed_comparison", {"storage_path": str(tmp_path), "epochs": 4}).resolved()
    assert spec_differences(spec.to_dict(), again.to_dict()) == []
    changed = SearchSpec.load("seed_comparison", {"storage_path": str(tmp_path), "epochs": 4,
                                                  "scheduler": "asha"}).resolved()
    assert spec_differences(spec.to_dict(), changed.to_dict()) == ["scheduler: saved 'none', now 'asha'"]
    old = make(search={"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}).resolved().to_dict()
    saved_before = {k: v for k, v in old.items() if k != "scheduler"}
    assert spec_differences(saved_before, old) == []


def test_grid_param_space_gives_each_trial_exactly_its_point():
    """Ray's basic variant generator (no cluster needed) turns the grid's param space into one trial per
    point whose config is exactly that point and its index: flat, only its branch's keys."""
    from ray.tune.search import BasicVariantGenerator

    from hiercls.tune.builders import grid_param_space
    from hiercls.tune.space import TRIAL_INDEX

    spec = SearchSpec.load("seed_comparison")
    generator = BasicVariantGenerator()
    generator.add_configurations({"grid": {"run": lambda config: None, "config": grid_param_space(spec),
                                           "num_samples": 1}})
    configs = []
    while (trial := generator.next_trial()) is not None:
        configs.append(trial.config)
    assert generator.total_samples == 12
    assert configs == [{**point, TRIAL_INDEX: i} for i, point in enumerate(spec.grid_points())]


def test_multi_objective_grid_is_refused_and_word_vectors_made_absolute(tmp_path, monkeypatch):
    grid_space = {"loss": {"type": "grid", "values": {"cross-entropy": {}, "soft-labels": {"beta": 4}}}}
    problems = problems_of(make(search=grid_space, multi_objective=True))
    assert any("--multi-objective with a grid search" in p for p in problems), problems
    monkeypatch.chdir(tmp_path)
    spec = make(search=grid_space, train={"architecture": "plainnet", "word_vectors": "w.vec"})
    assert spec.resolved().train["word_vectors"] == str(tmp_path / "w.vec")
    assert spec.base_config()["word_vectors"] == str(tmp_path / "w.vec")  # trials run in their own folders


# ---------------------------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("text, metric, bound, offset", [
    ("val_top1_error <= 0.235", "val_top1_error", 0.235, 0.0),
    ("val_top1_error<=baseline+0.005", "val_top1_error", None, 0.005),
    ("val_hdist@5 <= baseline - 0.1", "val_hdist@5", None, -0.1),
    ("val_coarse_error <= baseline", "val_coarse_error", None, 0.0),
    ("val_mistake_severity <= 2.5e0", "val_mistake_severity", 2.5, 0.0),
])
def test_constraint_forms(text, metric, bound, offset):
    from hiercls.tune.constraints import merge_bounds, parse_constraint

    c = parse_constraint(text)
    assert (c.metric, c.bound, c.offset, c.relative) == (metric, bound, offset, bound is None)
    resolved = merge_bounds([c], {metric: 0.25})
    assert resolved == {metric: pytest.approx(bound if bound is not None else 0.25 + offset)}


@pytest.mark.parametrize("text, needle", [
    ("val_top1_error < 0.2", "is not accepted"),
    ("val_top1_error >= 0.2", "is not accepted"),
    ("val_top5_error <= 0.2", "unknown metric 'val_top5_error'"),
    ("val_top1_error <= baseline * 2", "is not accepted"),
    ("val_top1_error <= inf", "is not accepted"),
])
def test_bad_constraints_name_the_text_and_the_valid_forms(text, needle):
    problems = problems_of(make(constraints=[text]))
    assert len(problems) == 1 and needle in problems[0] and repr(text) in problems[0], problems
    assert "val_hdist@5" in problems[0]  # the valid metrics are listed


def test_constraint_values_and_the_tightest_bound():
    from hiercls.tune.constraints import constraint_values, is_feasible, merge_bounds, parse_constraint

    cs = [parse_constraint("val_top1_error <= 0.3"), parse_constraint("val_top1_error <= baseline + 0.01"),
          parse_constraint("val_hdist@5 <= 4")]
    bounds = merge_bounds(cs, {"val_top1_error": 0.25})
    assert bounds == {"val_top1_error": pytest.approx(0.26), "val_hdist@5": 4.0}
    values = constraint_values({"val_top1_error": 0.27, "val_hdist@5": 3.5}, bounds)
    assert values == {"val_top1_error": pytest.approx(0.01), "val_hdist@5": pytest.approx(-0.5)}
    assert is_feasible(values) is False
    assert is_feasible(constraint_values({"val_top1_error": 0.26, "val_hdist@5": 4.0}, bounds)) is True
    assert constraint_values({"val_top1_error": math.nan, "val_hdist@5": 1.0}, bounds) is None
    assert is_feasible(None) is None
    with pytest.raises(ValueError, match="baseline trial has no finite val_top1_error"):
        merge_bounds(cs, None)


def test_constraint_settings_are_checked_with_the_rest():
    relative = "val_top1_error <= baseline + 0.005"
    problems = problems_of(make(constraints=[relative]))
    assert any("needs points_to_evaluate" in p for p in problems), problems
    make(constraints=[relative], points_to_evaluate=[{"loss": "cross-entropy"}],
         search={"loss": {"type": "choice", "values": ["cross-entropy", "soft-labels"]}}).validate()
    grid = make(constraints=["val_top1_error <= 0.5"],
                search={"loss": {"type": "grid", "values": ["cross-entropy", "soft-labels"]}})
    assert any("constraints with a grid search" in p for p in problems_of(grid))
    # one constraint may be written as a string in a space file; under it severity alone is not warned about
    spec = make(constraints="val_top1_error <= 0.5", objective="val_mistake_severity")
    assert spec.constraints == ["val_top1_error <= 0.5"] and spec.validate() == []
    assert any("rewards many small mistakes" in n for n in make(objective="val_mistake_severity").validate())
    # a resume with other constraints is a changed search; a spec saved before constraints existed is not
    saved = make().resolved().to_dict()
    assert spec_differences(saved, make(constraints=["val_top1_error <= 0.5"]).resolved().to_dict()) == [
        "constraints: saved [], now ['val_top1_error <= 0.5']"]
    del saved["constraints"]
    assert spec_differences(saved, make().resolved().to_dict()) == []


def test_cli_constraint_flags_repeat_and_bad_ones_exit_2_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    import tune_main

    args = tune_main.build_parser().parse_args(
        ["--constraint", "val_top1_error <= baseline + 0.005", "--constraint", "val_hdist@5 <= 4"])
    assert args.constraints == ["val_top1_error <= baseline + 0.005", "val_hdist@5 <= 4"]

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called on invalid input")

    monkeypatch.setattr(ray, "init", no_ray)
    status = tune_main.main(["--smoke-test", "--storage-path", str(tmp_path), "--trainable", "toy",
                             "--constraint", "val_top1_error <= baseline + 1%"])
    assert status == 2
    err = capsys.readouterr().err
    assert "constraint 'val_top1_error <= baseline + 1%' is not accepted" in err
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- PB2
def test_pb2_space_is_valid_and_its_bounds_are_the_ranges():
    from hiercls.tune.spec import pb2_keys

    spec = SearchSpec.load("pb2_simple_hierarchy")
    assert spec.validate() == [] and spec.scheduler_in_use() == "pb2"
    assert spec.pb2_bounds() == {"lambda_fine": (0.25, 2.0), "lambda_coarse": (0.0, 2.0), "lr": (0.005, 0.2)}
    assert set(pb2_keys()) == {"lr", "alpha", "beta", "lambda_fine", "lambda_coarse"}


@pytest.mark.parametrize("values, needle", [
    ({"constraints": ["val_top1_error <= 0.5"]}, "no constraints"),
    ({"multi_objective": True}, "no NSGA-II"),
    ({"search": {"weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
     "search.weight_decay: PB2 changes only values that may vary during training"),
    ({"train": {"architecture": "plainnet"}, "search": {"loss": {"type": "choice", "values": {
        "cross-entropy": {}, "soft-labels": {"beta": {"type": "uniform", "low": 1.0, "high": 30.0}}}}}},
     "scheduler pb2 searches one loss family"),
    ({"search": {"alpha": {"type": "choice", "values": [0.1, 0.5]}}}, "one loss family with continuous"),
    ({"perturbation_interval": 10}, "perturbation_interval=10 is out of range; valid: 1..epochs-1"),
    ({"perturbation_interval": 3, "train": {"architecture": "plainnet", "checkpoint_every": 2,
                                            "loss": "hierarchical-cross-entropy"}},
     "perturbation_interval=3 is not a multiple of train.checkpoint_every=2"),
    ({"search": {}}, "needs at least one searched range"),
])
def test_pb2_refusals(values, needle):
    base = {"scheduler": "pb2", "perturbation_interval": 2,
            "train": {"architecture": "plainnet", "loss": "hierarchical-cross-entropy"},
            "search": {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9}}}
    problems = problems_of(make(**{**base, **values}))
    assert any(needle in p for p in problems), problems


def test_yaml_exponents_without_a_dot_are_numbers():
    """PyYAML (YAML 1.1) reads ``1e-2`` as text; a range written so is still a range."""
    search = yaml.safe_load("lr: {type: loguniform, low: 1e-2, high: 2e-1}")
    assert search["lr"]["low"] == "1e-2"  # what PyYAML gives
    spec = make(search=search)
    assert spec.validate() == []
    assert (spec.params()["lr"].low, spec.params()["lr"].high) == (0.01, 0.2)
    assert any("low must be a finite number, got 'abc'" in p for p in problems_of(
        make(search={"lr": {"type": "uniform", "low": "abc", "high": 1.0}})))
