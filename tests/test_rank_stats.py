"""The per-image statistics of analysis.rank (intervals, paired tests against the best and the baseline trial,
the resolved Pareto front), the refusal of trials validated on different images (analysis.rank,
analysis.compare), and the split column of the search summary. Tiny synthetic experiments whose saved
predictions (hiercls.evidence.save_predictions) have hand-chosen per-image mistakes; no Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_analysis import spec_dict as synthetic_spec

from analysis import compare as compare_cli
from analysis import rank as rank_cli
from analysis import significance
from analysis.experiment import load_experiment, split_problem
from analysis.rank import build_table
from analysis.stats import bootstrap_ratio_ci, mcnemar_exact, paired_bootstrap_diff_ci
from hiercls.evidence import (
    Predictions,
    load_predictions,
    per_image,
    recompute_metrics,
    save_predictions,
    split_sha256,
)
from hiercls.hierarchy import load_cifar100_hierarchy

N = 400  # validation images
OBJECTIVE = "val_top1_error + 0.1 * val_mistake_severity"
INDICES = np.arange(N, dtype=np.int64) * 7 + 3  # positions in the training set, ascending
SPLIT = split_sha256(INDICES)
OTHER_SPLIT = split_sha256(INDICES + 1)
HIERARCHY = load_cifar100_hierarchy("cifar100-l5")

# id: (loss, searched values, index, wrong images (range end), far mistakes?, predictions saved?)
# near mistakes are at LCA height 1 (a sibling class), far ones at 5 (the hierarchy's largest)
TRIALS = {
    "aaaa0001": ("hierarchical-cross-entropy", {"alpha": 0.3}, 0, 100, False, True),  # best: 0.25, sev 1
    "bbbb0002": ("soft-labels", {"beta": 5.0}, 1, 102, False, True),  # A + 2 mistakes: tied with A
    "cccc0003": ("cross-entropy", {}, 2, 160, True, True),  # the baseline: 0.40, sev 5, resolved worse
    "dddd0004": ("hierarchical-cross-entropy", {"alpha": 0.6}, 3, 80, True, True),  # fewer, worse mistakes
    "eeee0005": ("soft-labels", {"beta": 10.0}, 4, 130, False, True),  # more mistakes, same severity as A
    "ffff0006": ("hierarchical-cross-entropy", {"alpha": 0.1}, 5, 110, False, False),  # no predictions
}


def spec_dict(storage: Path, name: str, num_samples: int) -> dict:
    """tests/test_analysis.py's synthetic spec, 2 epochs, one split (``split_seed`` 0), N validation images
    and no training subset."""
    spec = synthetic_spec(storage, num_samples)
    train = {k: v for k, v in spec["train"].items() if k != "max_train_samples"}
    return {**spec, "name": name, "epochs": 2, "split_seed": 0, "train": {**train, "val_size": N}}


def rankings(wrong: int, far: bool) -> tuple[torch.Tensor, None, torch.Tensor]:
    """Labels ``i % 100`` for image i; images ``0..wrong-1`` are top-1 mistakes (a sibling class first, or
    with ``far`` the farthest class), the others right; every row ranks the other classes nearest first."""
    distances = HIERARCHY.distances.numpy()
    labels = np.arange(N) % 100
    rows = []
    for i, label in enumerate(labels):
        order = [int(c) for c in np.argsort(distances[label], kind="stable")]  # the label first
        if i < wrong:
            first = order[-1] if far else order[1]
            order = [first, *[c for c in order if c != first]]
        rows.append(order[:20])
    return torch.tensor(rows, dtype=torch.long), None, torch.from_numpy(labels).long()


def write_trial(folder: Path, spec: dict, trial_id: str, loss: str, params: dict, index: int, wrong: int,
                far: bool, saved: bool, split: str | None) -> None:
    from hiercls.config import TrainConfig
    from hiercls.tune.spec import SearchSpec, parse_objective
    from hiercls.tune.trainable import trial_seed

    path = folder / f"trial_{trial_id}"
    path.mkdir(parents=True)
    searched = {"loss": loss, "lr": 0.05, **params}
    (path / "params.json").write_text(json.dumps({**searched, "trial_index": index}))
    base = SearchSpec.from_dict(spec).base_config()
    values = {**base, **searched, "seed": trial_seed(spec["seed"], index), "out_folder": str(path)}
    if split is None:  # a search of a hiercls before the split was recorded
        values.pop("split_seed", None)
    else:
        values["val_split_sha256"] = split
    (path / "config.yaml").write_text(TrainConfig.from_dict(values).resolved().to_yaml())
    ranked, _, labels = rankings(wrong, far)
    if saved:
        save_predictions(path, 2, (ranked, None, labels), torch.from_numpy(INDICES), split or SPLIT)
    pred = Predictions(topk=ranked.numpy().astype(np.uint8), crm_topk=None,
                       labels=labels.numpy().astype(np.uint8), indices=INDICES.astype(np.int32),
                       val_split_sha256=split or SPLIT, epoch=2)
    metrics = recompute_metrics(pred, HIERARCHY)  # the records the engine would write
    records = []
    for epoch, shift in ((1, 0.2), (2, 0.0)):  # epoch 2 is the best and the last
        record = {**metrics, "val_top1_error": metrics["val_top1_error"] + shift, "epoch": epoch,
                  "status": "ok", "lr": 0.05}
        if split is not None:
            record["val_split_sha256"] = split
        record["objective"] = parse_objective(OBJECTIVE)(record)
        records.append(record)
    (path / "all_epoch_results.json").write_text(json.dumps(records))


def make_experiment(storage: Path, name: str = "stats", splits: dict | None = None,
                    trials: dict = TRIALS) -> Path:
    """An experiment of ``trials``, every trial validated on :data:`SPLIT` unless ``splits`` says
    otherwise (``{trial_id: hash or None}``)."""
    spec = spec_dict(storage, name, len(trials))
    folder = storage / name
    folder.mkdir(parents=True)
    (folder / "search_spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for trial_id, (loss, params, index, wrong, far, saved) in trials.items():
        split = (splits or {}).get(trial_id, SPLIT)
        write_trial(folder, spec, trial_id, loss, params, index, wrong, far, saved, split)
    return folder


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> Path:
    return make_experiment(tmp_path_factory.mktemp("tune"))


@pytest.fixture(scope="module")
def table(experiment_dir) -> pd.DataFrame:
    return build_table(load_experiment(experiment_dir), bootstrap=300, bootstrap_seed=7)


def rows(table: pd.DataFrame) -> dict:
    return {r["trial_id"]: r for r in table.to_dict("records")}


def terms(folder: Path, trial_id: str) -> dict:
    return per_image(load_predictions(folder / f"trial_{trial_id}" / "val_predictions" / "epoch_0002.npz"),
                     HIERARCHY)


# ---------------------------------------------------------------------------------------------- intervals
def test_intervals_equal_analysis_stats_on_the_same_images_and_seed(experiment_dir, table):
    r = rows(table)
    assert list(table["trial_id"][:2]) == ["aaaa0001", "bbbb0002"]
    assert r["aaaa0001"]["val_split"] == SPLIT[:12]
    best = terms(experiment_dir, "aaaa0001")
    for trial_id in ("aaaa0001", "bbbb0002", "cccc0003", "dddd0004", "eeee0005"):
        mine = terms(experiment_dir, trial_id)
        for metric in ("val_top1_error", "val_mistake_severity", "val_hdist@5"):
            low, high = bootstrap_ratio_ci(*mine[metric], n_boot=300, seed=7)
            assert (r[trial_id][f"{metric}_low"], r[trial_id][f"{metric}_high"]) == (low, high)
            assert low - 1e-12 <= r[trial_id][metric] <= high + 1e-12
        assert r[trial_id]["vs_best_top1_p"] == mcnemar_exact(mine["val_top1_error"][0],
                                                              best["val_top1_error"][0])[2]
        for short, metric in (("severity", "val_mistake_severity"), ("hdist@5", "val_hdist@5")):
            _, low, high = paired_bootstrap_diff_ci(*mine[metric], *best[metric], n_boot=300, seed=7)
            assert (r[trial_id][f"vs_best_{short}_low"], r[trial_id][f"vs_best_{short}_high"]) == (low, high)
    info = table.attrs["statistics"]
    assert info["best"] == "aaaa0001" and info["images"] == [N] and (info["n_boot"], info["seed"]) == (300, 7)


def test_resolved_and_tied_against_the_best(table):
    r = rows(table)
    assert r["aaaa0001"]["tied_with_best"] is True and r["aaaa0001"]["vs_best_top1_p"] == 1.0
    # 2 images apart: McNemar p = 0.5, equal severity: tied
    assert r["bbbb0002"]["vs_best_top1_p"] == 0.5 and r["bbbb0002"]["tied_with_best"] is True
    assert r["bbbb0002"]["vs_best_severity_low"] <= 0 <= r["bbbb0002"]["vs_best_severity_high"]
    # 60 images apart, every mistake 4 LCA levels worse: resolved
    assert r["cccc0003"]["vs_best_top1_p"] < 1e-10 and r["cccc0003"]["tied_with_best"] is False
    assert r["cccc0003"]["vs_best_severity_low"] == r["cccc0003"]["vs_best_severity_high"] == 4.0
    assert r["dddd0004"]["tied_with_best"] is False and r["eeee0005"]["tied_with_best"] is False


def test_the_baseline_is_the_best_cross_entropy_trial_or_the_one_named(experiment_dir, table):
    r = rows(table)
    base = terms(experiment_dir, "cccc0003")
    mine = terms(experiment_dir, "aaaa0001")
    assert table.attrs["statistics"]["baseline"] == "cccc0003"
    assert r["aaaa0001"]["vs_baseline_top1_p"] == mcnemar_exact(mine["val_top1_error"][0],
                                                                base["val_top1_error"][0])[2]
    _, low, high = paired_bootstrap_diff_ci(*mine["val_hdist@5"], *base["val_hdist@5"], n_boot=300, seed=7)
    a = r["aaaa0001"]
    assert (a["vs_baseline_hdist@5_low"], a["vs_baseline_hdist@5_high"]) == (low, high)
    assert r["cccc0003"]["vs_baseline_top1_p"] == 1.0
    named = rows(build_table(load_experiment(experiment_dir), bootstrap=50, baseline="bbbb0002"))
    assert named["aaaa0001"]["vs_baseline_top1_p"] == 0.5 and named["bbbb0002"]["vs_baseline_top1_p"] == 1.0


def test_a_trial_without_predictions_has_empty_statistics_and_a_note(table):
    f = rows(table)["ffff0006"]
    assert f["compared"] and not math.isnan(f["val_top1_error"])
    assert all(math.isnan(f[c]) for c in (*significance.INTERVAL_COLUMNS, *significance.PAIRED_COLUMNS))
    assert pd.isna(f["tied_with_best"]) and pd.isna(f["pareto_resolved"])
    notes = table.attrs["statistics"]["notes"]
    assert len(notes) == 1 and notes[0].startswith("1 of 6 compared trials have no saved per-image "
                                                   "predictions for the epoch the scope selected (ffff0006)")


def test_the_resolved_front_drops_only_resolved_dominated_trials(table):
    r = rows(table)
    point = {t for t in r if r[t]["pareto_error_severity"]}
    assert point == {"aaaa0001", "dddd0004"}
    resolved = {t: r[t]["pareto_resolved"] for t in r}
    # B (2 more mistakes, p = 0.5) and E (30 more, p < 0.05, but the same severity: the interval of the
    # difference is [0, 0]) are point-dominated by A, not resolved-dominated; C is (60 more mistakes, and
    # each 4 levels worse); F has no predictions: unknown
    assert {t for t, v in resolved.items() if v is True} == {"aaaa0001", "bbbb0002", "dddd0004", "eeee0005"}
    assert resolved["cccc0003"] is False and pd.isna(resolved["ffff0006"])


def test_no_bootstrap_no_statistics(experiment_dir):
    plain = build_table(load_experiment(experiment_dir))  # what export and the plots of other tools call
    assert plain.attrs["statistics"] is None and plain["tied_with_best"].isna().all()
    assert plain[list(significance.INTERVAL_COLUMNS)].isna().all().all()
    assert list(plain.columns) == list(build_table(load_experiment(experiment_dir), bootstrap=20).columns)


# ---------------------------------------------------------------------------------------------- the CLI
def test_the_same_command_prints_the_same_intervals(experiment_dir, tmp_path, capsys):
    outputs = []
    for out in (tmp_path / "one", tmp_path / "two"):
        assert rank_cli.main([str(experiment_dir), "--out", str(out), "--no-plots", "--bootstrap", "500",
                              "--bootstrap-seed", "3"]) == 0
        printed = capsys.readouterr().out
        outputs.append((printed.split("wrote:")[0], (out / "trials.csv").read_text()))
    assert outputs[0] == outputs[1]
    printed, csv = outputs[0]
    table = pd.read_csv(tmp_path / "one" / "trials.csv")
    a = table[table["trial_id"] == "aaaa0001"].iloc[0]
    low, high = bootstrap_ratio_ci(*terms(experiment_dir, "aaaa0001")["val_top1_error"], n_boot=500, seed=3)
    assert (a["val_top1_error_low"], a["val_top1_error_high"]) == (low, high)
    assert f"0.250 [{low:.3f}, {high:.3f}]" in printed
    assert "Intervals: 95% percentile bootstrap over 400 validation images (500 resamples, seed 3)" in printed
    header = next(line for line in printed.splitlines() if line.startswith("#  "))
    assert header.split()[-2:] == ["resolved", "front"] and " tied " in header
    assert "note: 1 of 6 compared trials have no saved" in printed
    md = (tmp_path / "one" / "trials.md").read_text()
    assert "Intervals: 95% percentile bootstrap" in md and "## Notes" in md


def test_mixed_splits_are_refused_in_one_line(tmp_path, capsys):
    trials = {k: TRIALS[k] for k in ("aaaa0001", "bbbb0002", "cccc0003")}
    folder = make_experiment(tmp_path / "tune", "mixed", {"cccc0003": OTHER_SPLIT}, trials)
    out = tmp_path / "out"
    assert rank_cli.main([str(folder), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert (f"trials were validated on 2 different validation splits ({SPLIT[:12]}: 2 trials, "
            f"{OTHER_SPLIT[:12]}: 1 trial): ranks between them mix real differences with which images each "
            "trial drew; rank one split with --split HASH_PREFIX, or pass --allow-mixed-splits") in err

    assert rank_cli.main([str(folder), "--out", str(out), "--no-plots", "--allow-mixed-splits"]) == 0
    captured = capsys.readouterr()
    assert "ranked anyway (--allow-mixed-splits)" in captured.err
    table = pd.read_csv(out / "trials.csv")
    c = table[table["trial_id"] == "cccc0003"].iloc[0]
    assert not math.isnan(c["val_top1_error_low"]) and math.isnan(c["vs_best_top1_p"])  # not paired
    assert "validation splits: paired tests" in captured.out

    one = tmp_path / "one-split"
    assert rank_cli.main([str(folder), "--out", str(one), "--no-plots", "--split", SPLIT[:6].upper()]) == 0
    assert sorted(pd.read_csv(one / "trials.csv")["trial_id"]) == ["aaaa0001", "bbbb0002"]
    capsys.readouterr()
    assert rank_cli.main([str(folder), "--no-plots", "--split", "zz"]) == 2
    assert rank_cli.main([str(folder), "--no-plots", "--split", "0" * 20]) == 2
    assert "matches no validation split" in capsys.readouterr().err


def test_an_experiment_without_split_hashes_gets_its_one_line(tmp_path, capsys):
    trials = {k: (*TRIALS[k][:5], False) for k in ("aaaa0001", "cccc0003")}
    folder = make_experiment(tmp_path / "tune", "old", dict.fromkeys(trials), trials)
    experiment = load_experiment(folder)
    assert [t.val_split_sha256 for t in experiment.trials] == [None, None]
    assert split_problem(experiment.trials).startswith("2 of 2 compared trials were made before hiercls "
                                                       "recorded validation splits (no val_split_sha256)")
    out = tmp_path / "out"
    assert rank_cli.main([str(folder), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "each trial was validated on its own images" in err and not out.exists()
    assert rank_cli.main([str(folder), "--out", str(out), "--no-plots", "--allow-mixed-splits"]) == 0
    assert "none of the 2 compared trials has saved per-image predictions" in capsys.readouterr().out


def test_trial_split_comes_from_config_else_the_last_record(experiment_dir):
    trial = load_experiment(experiment_dir).trial("aaaa0001")
    assert trial.val_split_sha256 == SPLIT
    trial.config = None
    assert trial.val_split_sha256 == SPLIT  # the record's
    trial.records = []
    assert trial.val_split_sha256 is None


def test_plots_draw_intervals_and_the_resolved_front(experiment_dir, table, tmp_path):
    from analysis.plots import plot_tradeoff

    for pair in ("pareto_error_severity", "pareto_error_hdist5"):
        path = plot_tradeoff(table, pair, tmp_path / f"{pair}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = build_table(load_experiment(experiment_dir))
    assert plot_tradeoff(plain, "pareto_error_severity", tmp_path / "plain.png").is_file()


# ---------------------------------------------------------------------------------------------- compare
def test_compare_refuses_runs_validated_on_different_images(tmp_path, capsys):
    from hiercls.config import TrainConfig

    def run(name: str, seed: int, split: str | None) -> str:
        folder = tmp_path / name
        folder.mkdir()
        values = {"seed": seed, "lr": 0.05, "out_folder": str(folder), "epochs": 2,
                  "val_split_sha256": split}
        (folder / "config.yaml").write_text(TrainConfig.from_dict(values).resolved().to_yaml())
        results = {"metrics": {"top1_error": 0.3}, "epoch": 2}
        (folder / "final_test_results.json").write_text(json.dumps(results))
        return str(folder)

    same = [run("s0", 0, SPLIT), run("s1", 1, SPLIT)]
    assert compare_cli.main(same) == 0  # two seeds on one split
    other, old = run("o", 2, OTHER_SPLIT), run("old", 3, None)
    assert compare_cli.main([*same, other]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "validated on 2 different validation splits" in err
    assert compare_cli.main([*same, old]) == 2
    assert "1 of 3 runs record no val_split_sha256" in capsys.readouterr().err
    assert compare_cli.main([*same, other, "--allow-mixed-splits"]) == 0
    assert "compared anyway (--allow-mixed-splits)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- summary
def test_the_search_summary_names_the_split_and_warns_once(tmp_path):
    from hiercls.tune.summary import SearchOutcome, split_warning, write_summary

    def row(trial_id: str, split: str | None, epochs: int = 2) -> dict:
        return {"trial_id": trial_id, "loss": "cross-entropy", "lr_schedule": "cosine", "params": {"lr": 0.1},
                "objective": 0.5, "val_top1_error": 0.4, "val_mistake_severity": 2.0, "epochs": epochs,
                "status": "ok", "stopped_early": False, "path": str(tmp_path / trial_id), "constraints": {},
                "feasible": None, "val_split": split and split[:12]}

    one = [row("a", SPLIT), row("b", SPLIT), row("c", None, epochs=0)]  # c never reported
    assert split_warning(one) is None and split_warning([row("a", None), row("b", None)]) is None
    two = [*one, row("d", OTHER_SPLIT)]
    warning = split_warning(two)
    shown = ", ".join(sorted([SPLIT[:12], OTHER_SPLIT[:12]]))
    assert warning.startswith(f"the trials were validated on 2 validation splits ({shown}): ")
    assert "\n" not in warning and "--split PREFIX" in warning
    assert "1 trial(s) recording none" in split_warning([row("a", SPLIT), row("b", None)])
    outcome = SearchOutcome(experiment_dir=tmp_path, rows=two, best=None, interrupted=False, seconds=1.0)
    assert outcome.split_warning == warning
    write_summary(outcome)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0].endswith(",val_split,path") and f",{OTHER_SPLIT[:12]}," in lines[4]


def test_export_names_the_split_and_retrain_full_drops_it(experiment_dir, tmp_path):
    """The exported config replays the search's split (its val_split_sha256 checked by the run); a
    --retrain-full config has no validation split, so it records none (it would be refused otherwise)."""
    from analysis import export as export_cli
    from hiercls.config import TrainConfig

    assert export_cli.main([str(experiment_dir), "--out", str(tmp_path / "best.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["val_split_sha256"] == SPLIT
    assert export_cli.main([str(experiment_dir), "--out", str(tmp_path / "full.yaml"), "--retrain-full"]) == 0
    values = yaml.safe_load((tmp_path / "full.yaml").read_text())
    values.pop("source", None)
    assert values["val_size"] == 0 and values["val_split_sha256"] is None
    TrainConfig.from_dict(values).validate()


def test_a_write_failure_is_one_line_with_the_write_status(experiment_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert rank_cli.main([str(experiment_dir), "--out", str(blocker / "analysis"), "--no-plots"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "Traceback" not in err[0], err
