"""The analysis of finished searches (analysis/): ranking, Pareto fronts, scope, de-duplication, plots,
export of the chosen trial, comparison of seeds; a synthetic experiment folder with hand-chosen values,
and the real smoke search (its exported best trial reproduces the trial's val metrics)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import compare as compare_cli
from analysis import export as export_cli
from analysis import rank as rank_cli
from analysis.experiment import AnalysisError, load_experiment
from analysis.export import export
from analysis.rank import build_table, pareto_mask

OBJECTIVE = "val_top1_error + 0.1 * val_mistake_severity"
NAN = math.nan
MIXED = "--allow-mixed-splits"  # the synthetic trials record no val_split_sha256: rank them anyway


# ---------------------------------------------------------------------------------------------- synthetic
def spec_dict(storage: Path, num_samples: int) -> dict:
    return {
        "name": "synth", "storage_path": str(storage), "num_samples": num_samples, "epochs": 3,
        "grace_period": 1,
        "reduction_factor": 3.0, "max_concurrent": 1, "startup_trials": 3, "gpus_per_trial": 0.0,
        "cpus_per_trial": 1.0, "address": None, "objective": OBJECTIVE, "multi_objective": False, "seed": 0,
        "data_dir": "/nowhere/cifar-100", "max_failures": 1, "top": 5,
        "train": {"architecture": "plainnet", "hierarchy": "cifar100-l5", "max_train_samples": 2000,
                  "val_size": 500, "batch_size": 100, "eval_batch_size": 500, "lr_schedule": "cosine",
                  "amp": False},
        "search": {
            "lr": {"type": "loguniform", "low": 0.001, "high": 0.2},
            "loss": {"type": "choice", "values": {
                "cross-entropy": {},
                "hierarchical-cross-entropy": {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9}},
                "soft-labels": {"beta": {"type": "loguniform", "low": 1.0, "high": 30.0}},
            }},
        },
        "points_to_evaluate": [],
    }


def record(epoch: int, top1: float, sev: float, h5: float, status: str = "ok") -> dict:
    """An engine record; the other metrics are simple functions of (top-1 error, severity, hdist@5)."""
    if status == "nan":
        top1 = sev = h5 = NAN
    return {
        "epoch": epoch, "lr": 0.01, "train_loss": 1.0 + epoch, "val_loss": 2.0 + epoch,
        "val_top1_error": top1, "val_top5_error": top1 / 2, "val_coarse_error": round(top1 / 2, 6),
        "val_mistake_severity": sev, "val_hdist@1": round(top1 * sev, 6), "val_hdist@5": h5,
        "val_hdist@10": h5 + 0.25, "val_hdist@20": h5 + 0.5,
        "val_crm/top1_error": top1 + 0.01, "val_crm/coarse_error": round(top1 / 2 + 0.01, 6),
        "val_crm/mistake_severity": sev - 0.1, "val_crm/hdist@1": round(top1 * sev - 0.05, 6),
        "val_crm/hdist@5": h5 - 0.1, "val_crm/hdist@20": h5 + 0.4,
        "epoch_seconds": 1.0, "images_per_second": 100.0, "status": status,
    }


# id: (loss, searched params, index, per-epoch (top1, severity, hdist@5[, status]), options)
TRIALS = {
    # complete; best epoch by the weighted objective is 2 (0.72), though epoch 3 has the lower error
    "aaaa0001": ("cross-entropy", {"lr": 0.05}, 0,
                 [(0.60, 2.0, 2.5), (0.50, 2.2, 2.4), (0.48, 2.6, 2.3)], {}),
    "bbbb0002": ("hierarchical-cross-entropy", {"lr": 0.01, "alpha": 0.3}, 1,
                 [(0.55, 1.8, 2.2), (0.45, 1.9, 2.0), (0.46, 1.7, 2.3)], {}),
    "cccc0003": ("soft-labels", {"lr": 0.02, "beta": 5.0}, 2,
                 [(0.70, 1.6, 2.6), (0.52, 1.5, 1.9), (0.50, 1.6, 1.8)], {}),
    # resumed: result.json only, epoch 2 reported twice (the first, stale record would win everything)
    "dddd0004": ("cross-entropy", {"lr": 0.1}, 3,
                 [(0.65, 2.1, 2.6), (0.40, 1.0, 1.0), (0.58, 2.3, 2.5), (0.44, 2.5, 2.2)],
                 {"engine": False, "epochs": [1, 2, 2, 3]}),
    # stopped early by ASHA after epoch 1, with the lowest error and severity of all
    "eeee0005": ("hierarchical-cross-entropy", {"lr": 0.05, "alpha": 0.6}, 4, [(0.42, 1.4, 1.7)], {}),
    # went NaN in epoch 2
    "ffff0006": ("soft-labels", {"lr": 0.15, "beta": 20.0}, 5, [(0.80, 3.0, 3.0), (0, 0, 0, "nan")], {}),
    # errored before its first epoch: params.json and error.txt only
    "gggg0007": ("cross-entropy", {"lr": 0.001}, 6, [], {"error": True}),
}


def write_trial(folder: Path, spec: dict, trial_id: str, loss: str, params: dict, index: int,
                epochs: list, options: dict) -> None:
    from hiercls.config import TrainConfig
    from hiercls.tune.spec import SearchSpec
    from hiercls.tune.trainable import trial_seed

    path = folder / f"trial_{trial_id}"
    path.mkdir(parents=True)
    searched = {"loss": loss, **params, "trial_index": index}
    (path / "params.json").write_text(json.dumps(searched))
    base = SearchSpec.from_dict(spec).base_config()
    seed = trial_seed(spec["seed"], index)
    config = TrainConfig.from_dict({**base, "loss": loss, **params, "seed": seed, "out_folder": str(path)})
    if options.get("error"):
        (path / "error.txt").write_text("Failure # 1 (occurred at 2026-01-01)\nRuntimeError: boom\n")
        return
    (path / "config.yaml").write_text(config.resolved().to_yaml())
    numbers = options.get("epochs", list(range(1, len(epochs) + 1)))
    records = [record(e, *values) for e, values in zip(numbers, epochs)]
    lines = []
    for i, r in enumerate(records, start=1):
        from hiercls.tune.spec import parse_objective

        value = parse_objective(OBJECTIVE)(r) if r["status"] == "ok" else NAN
        lines.append(json.dumps({**r, "objective": value, "trial_id": trial_id, "training_iteration": i,
                                 "loss": loss, "lr_schedule": "cosine", "config": searched}))
    (path / "result.json").write_text("\n".join(lines) + "\n")
    if options.get("engine", True):
        (path / "all_epoch_results.json").write_text(json.dumps(records, indent=2))


def make_experiment(storage: Path, trials: dict = TRIALS, name: str = "synth") -> Path:
    spec = spec_dict(storage, len(trials))
    spec["name"] = name
    folder = storage / name
    folder.mkdir(parents=True)
    (folder / "search_spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for trial_id, (loss, params, index, epochs, options) in trials.items():
        write_trial(folder, spec, trial_id, loss, params, index, epochs, options)
    return folder


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    return make_experiment(tmp_path / "tune")


def rows(table) -> dict:
    return {r["trial_id"]: r for r in table.to_dict("records")}


# ---------------------------------------------------------------------------------------------- loading
def test_statuses_and_deduplication(synth):
    experiment = load_experiment(synth)
    status = {t.trial_id: t.status for t in experiment.trials}
    assert status == {"aaaa0001": "complete", "bbbb0002": "complete", "cccc0003": "complete",
                      "dddd0004": "complete", "eeee0005": "stopped early", "ffff0006": "nan",
                      "gggg0007": "error"}
    d = experiment.trial("dddd0004")
    assert [r["epoch"] for r in d.records] == [1, 2, 3] and d.duplicates == 1
    assert d.record(2)["val_top1_error"] == 0.58  # the latest report of epoch 2 wins
    g = experiment.trial("trial_gggg0007")
    assert g.records == [] and g.config_source == "rebuilt" and "boom" in g.error
    assert g.config["lr"] == 0.001 and g.config["epochs"] == 3


def test_records_of_an_earlier_hiercls_are_read_in_todays_spelling(synth):
    """Records written before lr had one spelling (``base_lr`` the value, ``lr`` the scheduled rate), in
    all_epoch_results.json and in Ray's result.json, load as today's: ``lr`` the value, ``scheduled_lr``
    the rate of the epoch's first step."""
    from hiercls.value_schedule import value_schedule_from_history

    rates = {1: 0.04, 2: 0.03, 3: 0.02}
    engine_file = synth / "trial_aaaa0001" / "all_epoch_results.json"
    engine_file.write_text(json.dumps([{**r, "lr": rates[r["epoch"]], "base_lr": 0.05}
                                       for r in json.loads(engine_file.read_text())]))
    ray_file = synth / "trial_dddd0004" / "result.json"  # this trial has no all_epoch_results.json
    lines = [json.loads(line) for line in ray_file.read_text().splitlines()]
    ray_file.write_text("".join(json.dumps({**r, "lr": rates[r["epoch"]], "base_lr": 0.1}) + "\n"
                                for r in lines))
    experiment = load_experiment(synth)
    a, d = experiment.trial("aaaa0001"), experiment.trial("dddd0004")
    assert [(r["lr"], r["scheduled_lr"]) for r in a.records] == [(0.05, 0.04), (0.05, 0.03), (0.05, 0.02)]
    assert [(r["lr"], r["scheduled_lr"]) for r in d.records] == [(0.1, 0.04), (0.1, 0.03), (0.1, 0.02)]
    assert not any("base_lr" in r for t in (a, d) for r in t.records) and not a.problems
    assert value_schedule_from_history(a.records, "cross-entropy") == {1: {"lr": 0.05}}
    # the synthetic engine records of the other trials have lr and no values (as written before the values
    # in effect were recorded): that lr was the scheduled rate
    b = experiment.trial("bbbb0002")
    assert [(r.get("lr"), r["scheduled_lr"]) for r in b.records] == [(None, 0.01)] * 3


def test_pareto_mask_rules():
    pts = [(0.5, 2.0), (0.4, 3.0), (0.5, 2.0), (0.6, 2.0), (NAN, 0.1), (0.3, NAN), (0.45, 2.5)]
    # equal points both stay; (0.6, 2.0) is dominated (<= on both, < on one); NaN rows never on it
    assert pareto_mask(pts).tolist() == [True, True, True, False, False, False, True]


# ---------------------------------------------------------------------------------------------- ranking
def test_rank_scope_best(synth):
    table = build_table(load_experiment(synth), "best")
    # ranked by the search's objective, val_top1_error + 0.1 * val_mistake_severity (0.63, 0.66, 0.69, 0.72),
    # not by top-1 error (d's 0.44 is the lowest)
    assert list(table["trial_id"][:4]) == ["bbbb0002", "cccc0003", "dddd0004", "aaaa0001"]
    r = rows(table)
    assert {k: v["rank_objective"] for k, v in r.items() if v["compared"]} == {
        "bbbb0002": 1, "cccc0003": 2, "dddd0004": 3, "aaaa0001": 4}
    assert [round(v, 6) for v in table["objective"][:4]] == [0.63, 0.66, 0.69, 0.72]
    assert r["aaaa0001"]["epoch"] == 2 and r["aaaa0001"]["val_top1_error"] == 0.50  # lowest objective
    assert r["aaaa0001"]["objective"] == pytest.approx(0.72)
    assert r["bbbb0002"]["epoch"] == 3 and r["dddd0004"]["epoch"] == 3
    assert r["dddd0004"]["val_top1_error"] == 0.44 and r["dddd0004"]["duplicates"] == 1
    ranks = {k: (v["rank_top1_error"], v["rank_mistake_severity"]) for k, v in r.items() if v["compared"]}
    assert ranks == {"dddd0004": (1, 4), "bbbb0002": (2, 2), "aaaa0001": (3, 3), "cccc0003": (3, 1)}
    sev = {k for k, v in r.items() if v["pareto_error_severity"]}
    h5 = {k for k, v in r.items() if v["pareto_error_hdist5"]}
    assert sev == {"dddd0004", "bbbb0002", "cccc0003"}
    assert h5 == {"dddd0004", "cccc0003"}  # b's hdist@5 2.3 is dominated by d's (0.44, 2.2)
    assert {k: r[k]["pareto_index"] for k in sev} == {"dddd0004": 0, "bbbb0002": 1, "cccc0003": 2}
    for k in ("eeee0005", "ffff0006", "gggg0007"):  # not compared: no rank, never on a front
        assert not r[k]["compared"] and not r[k]["pareto_error_severity"] and not r[k]["pareto_error_hdist5"]
        assert r[k]["rank_top1_error"] is None or math.isnan(float(r[k]["rank_top1_error"]))
    assert r["eeee0005"]["status"] == "stopped early" and r["eeee0005"]["epochs_run"] == 1
    assert r["ffff0006"]["epoch"] == 1  # best scope: the last finite epoch before the NaN
    assert math.isnan(r["gggg0007"]["val_top1_error"]) and r["gggg0007"]["status"] == "error"
    assert r["bbbb0002"]["alpha"] == 0.3 and r["cccc0003"]["beta"] == 5.0 and r["aaaa0001"]["t0"] == 12.0
    assert r["aaaa0001"]["val_crm/top1_error"] == pytest.approx(0.51)
    assert r["aaaa0001"]["val_hdist@20"] == pytest.approx(2.9)


def test_rank_scope_last(synth):
    r = rows(build_table(load_experiment(synth), "last"))
    assert r["aaaa0001"]["epoch"] == 3 and r["aaaa0001"]["val_top1_error"] == 0.48
    assert r["aaaa0001"]["val_mistake_severity"] == 2.6
    ranks = {k: (v["rank_top1_error"], v["rank_mistake_severity"]) for k, v in r.items() if v["compared"]}
    assert ranks == {"dddd0004": (1, 3), "bbbb0002": (2, 2), "aaaa0001": (3, 4), "cccc0003": (4, 1)}
    assert {k for k, v in r.items() if v["pareto_error_severity"]} == {"dddd0004", "bbbb0002", "cccc0003"}
    assert r["ffff0006"]["epoch"] == 2 and math.isnan(r["ffff0006"]["val_top1_error"])


def test_include_stopped_changes_ranks_and_fronts(synth):
    r = rows(build_table(load_experiment(synth), "best", include_stopped=True))
    assert r["eeee0005"]["compared"] and r["eeee0005"]["rank_top1_error"] == 1
    assert r["dddd0004"]["rank_top1_error"] == 2
    assert {k for k, v in r.items() if v["pareto_error_severity"]} == {"eeee0005"}
    assert {k for k, v in r.items() if v["pareto_error_hdist5"]} == {"eeee0005"}
    assert not r["ffff0006"]["compared"]  # NaN and errored trials never take part


@pytest.mark.parametrize("objective, order, source", [
    # severity at each trial's best epoch: c 1.5, b 1.7, a 2.0, d 2.1 (by top-1 error b would come first)
    ("val_mistake_severity", ["cccc0003", "bbbb0002", "aaaa0001", "dddd0004"],
     "the search's objective, from search_spec.yaml"),
    (None, ["dddd0004", "bbbb0002", "aaaa0001", "cccc0003"],
     "the fallback: search_spec.yaml records no objective"),
    ("multi", ["dddd0004", "bbbb0002", "aaaa0001", "cccc0003"],
     "the fallback: a multi-objective search has no single objective"),
])
def test_the_first_rank_follows_the_searchs_objective(synth, tmp_path, capsys, objective, order, source):
    """The first rank column (#) ranks by the objective search_spec.yaml records; top-1 error without one
    (or for a multi-objective search), and the header says which."""
    spec = yaml.safe_load((synth / "search_spec.yaml").read_text())
    if objective == "multi":
        spec["multi_objective"] = True
    elif objective is None:
        del spec["objective"]
    else:
        spec["objective"] = objective
    (synth / "search_spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    table = build_table(load_experiment(synth), "best")
    metric = "val_mistake_severity" if objective == "val_mistake_severity" else "val_top1_error"
    assert list(table["trial_id"][:4]) == order and list(table["rank_objective"][:4]) == [1, 2, 3, 4]
    assert list(table["objective"][:4]) == list(table[metric][:4])
    assert rank_cli.main([str(synth), MIXED, "--out", str(tmp_path / "out"), "--top", "1", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert f"# ranks by {metric} ({source}); sev# by val_mistake_severity" in printed
    assert [ln.split()[2] for ln in printed.splitlines() if ln.startswith("1 ")] == [order[0]]


def test_rank_cli_writes_tables_and_prints_top_rows(synth, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert rank_cli.main([str(synth), MIXED, "--out", str(out), "--top", "2", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "7 trials (4 complete, 1 stopped early, 1 nan, 1 error)" in printed
    assert ("# ranks by val_top1_error + 0.1 * val_mistake_severity (the search's objective, from "
            "search_spec.yaml); sev# by val_mistake_severity") in printed
    lines = [ln for ln in printed.splitlines() if ln.startswith(("1 ", "2 "))]
    assert [ln.split()[1:3] for ln in lines] == [["2", "bbbb0002"], ["1", "cccc0003"]]  # #, sev#, trial
    assert "aaaa0001" not in printed.split("wrote:")[0]
    import pandas as pd

    csv = pd.read_csv(out / "trials.csv")
    assert list(csv["trial_id"][:4]) == ["bbbb0002", "cccc0003", "dddd0004", "aaaa0001"] and len(csv) == 7
    for col in ("status", "loss", "alpha", "beta", "lr_schedule", "t0", "epochs_run", "epochs", "epoch",
                "val_top1_error", "val_mistake_severity", "val_hdist@1", "val_hdist@5", "val_hdist@20",
                "val_coarse_error", "val_crm/top1_error", "val_crm/mistake_severity", "rank_objective",
                "rank_top1_error",
                "rank_mistake_severity", "pareto_error_severity", "pareto_error_hdist5"):
        assert col in csv.columns, col
    md = (out / "trials.md").read_text()
    assert "# ranks by val_top1_error + 0.1 * val_mistake_severity (the search's objective" in md
    assert "| # | sev# | trial | status |" in md and "hierarchical-cross-entropy (alpha=0.3" in md
    assert md.count("\n| ") == 8 and "pareto:1" in md  # header + 7 rows; b is pareto:1
    assert rank_cli.main([str(synth), MIXED, "--out", str(out), "--scope", "last", "--no-plots"]) == 0
    assert "last (each trial's last epoch)" in (out / "trials.md").read_text()


def test_experiment_state_statuses(tmp_path):
    """Ray's experiment state (read as JSON) gives unfinished trials of an interrupted search, a trial
    that never started, and ERROR; a retried trial that then finished is complete."""
    trials = {
        "aaaa0001": TRIALS["aaaa0001"],
        "hhhh0008": ("cross-entropy", {"lr": 0.02}, 7, [(0.5, 2.0, 2.0)], {}),
        "iiii0009": ("cross-entropy", {"lr": 0.03}, 8, [(0.5, 2.0, 2.0), (0.45, 2.0, 2.0)], {}),
        "jjjj0010": ("cross-entropy", {"lr": 0.04}, 9, [(0.5, 2.0, 2.0)] * 3, {}),
    }
    folder = make_experiment(tmp_path, trials)
    (folder / "trial_jjjj0010" / "error.txt").write_text("Failure # 1\nRuntimeError: retried\n")

    def entry(trial_id: str, status: str, logdir: str | None, config: dict) -> list:
        trial = {"trial_id": trial_id, "status": status, "relative_logdir": logdir, "config": config,
                 "storage": {"_type": "CLOUDPICKLE_FALLBACK", "value": "80059500"}}
        return [json.dumps(trial), json.dumps({"error_filename": None})]

    state = {"trial_data": [
        entry("aaaa0001", "TERMINATED", "trial_aaaa0001", {}),
        entry("hhhh0008", "RUNNING", "trial_hhhh0008", {}),
        entry("iiii0009", "ERROR", "trial_iiii0009", {}),
        entry("jjjj0010", "TERMINATED", "trial_jjjj0010", {}),
        entry("kkkk0011", "PENDING", None, {"loss": "cross-entropy", "lr": 0.07, "trial_index": 10}),
    ], "runner_data": {}, "stats": {}}
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{not json")  # older, ignored
    (folder / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(state))
    status = {t.trial_id: t.status for t in load_experiment(folder).trials}
    assert status == {"aaaa0001": "complete", "hhhh0008": "unfinished", "iiii0009": "error",
                      "jjjj0010": "complete", "kkkk0011": "unfinished"}
    r = rows(build_table(load_experiment(folder), "best", include_stopped=True))
    assert r["hhhh0008"]["compared"] and not r["iiii0009"]["compared"]
    assert r["kkkk0011"]["lr"] == 0.07 and r["kkkk0011"]["epochs_run"] == 0


# ---------------------------------------------------------------------------------------------- damaged files
def without_ray_config(trial_dir: Path) -> None:
    """Drop Ray's copy of the searched values (``config``) from every line of result.json."""
    path = trial_dir / "result.json"
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in ln.items() if k != "config"}) + "\n"
                            for ln in lines))


def tear_last_line(path: Path, keep: int) -> None:
    """Cut the file inside its last line, ``keep`` characters into it (no newline after: a torn write)."""
    text = path.read_text()
    start = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: start + keep])


def test_damaged_params_json_never_filled_with_defaults(tmp_path, capsys):
    """Issue 10: an empty or torn params.json showed the TrainConfig defaults (lr 0.05, cross-entropy).
    The searched values come from config.yaml (else Ray's copy in result.json); when no file has them
    they are empty cells, the trial is flagged and analysis.export refuses it."""
    folder = make_experiment(tmp_path / "tune")
    b, c, d = (folder / f"trial_{t}" for t in ("bbbb0002", "cccc0003", "dddd0004"))
    (b / "params.json").write_text("")  # 0 bytes; config.yaml fine; no Ray copy either
    without_ray_config(b)
    c_config = yaml.safe_load((c / "config.yaml").read_text())
    (c / "params.json").write_text('{"loss": "soft-labels", "lr": 0.0')  # torn; config.yaml empty
    (c / "config.yaml").write_text("")
    (d / "params.json").write_text('{"loss": "cross-entropy", "lr": 0.')  # torn, nothing else has them
    config_text = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(config_text[: config_text.index("\nlr: ") + 6])  # 'lr: 0' would parse
    without_ray_config(d)

    experiment = load_experiment(folder)
    tb, tc, td = (experiment.trial(t) for t in ("bbbb0002", "cccc0003", "dddd0004"))
    assert tb.params == {"lr": 0.01, "loss": "hierarchical-cross-entropy", "alpha": 0.3}
    assert tb.config_source == "config.yaml" and tb.unknown_params == []
    assert tb.problems == ["params.json: empty; searched values taken from config.yaml"]
    assert tc.params == {"loss": "soft-labels", "lr": 0.02, "beta": 5.0}
    assert tc.config_source == "rebuilt" and tc.config == c_config  # seed from the trial index, out_folder
    assert tc.problems == [
        "params.json: torn: invalid JSON at line 1 column 34; searched values taken from result.json "
        "(Ray's copy)",
        "config.yaml: empty; config rebuilt from search_spec.yaml and the searched values",
    ]
    assert td.params == {} and td.config is None and td.seed is None and td.unknown_params == ["lr", "loss"]
    assert td.status == "complete" and td.epochs == 3  # its records are fine
    assert td.problems == [
        "params.json: torn: invalid JSON at line 1 column 34; searched values unknown (lr, loss): shown "
        "empty, the trial cannot be exported",
        "config.yaml: torn: no newline at the end (cut mid-line); config unknown",
    ]

    r = rows(build_table(experiment))
    assert r["bbbb0002"]["loss"] == "hierarchical-cross-entropy" and r["bbbb0002"]["alpha"] == 0.3
    assert pd.isna(r["dddd0004"]["loss"]) and math.isnan(r["dddd0004"]["lr"])
    assert pd.isna(r["dddd0004"]["seed"])
    assert r["dddd0004"]["problems"] == " | ".join(td.problems) and pd.isna(r["aaaa0001"]["problems"])

    out = tmp_path / "analysis"
    assert rank_cli.main([str(folder), MIXED, "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr()
    assert ("warning: trial dddd0004: params.json: torn: invalid JSON at line 1 column 34; searched values "
            "unknown (lr, loss): shown empty, the trial cannot be exported\n") in printed.err
    assert ("warning: trial bbbb0002: params.json: empty; searched values taken from config.yaml\n"
            in printed.err)
    assert "warning: 3 trial(s) with damaged files or unknown values, marked (!)" in printed.out
    line = next(ln for ln in printed.out.splitlines() if "dddd0004" in ln)
    assert "complete (!)" in line and "cross-entropy" not in line and "0.05" not in line
    csv = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert math.isnan(csv.loc["dddd0004", "lr"])
    assert "searched values unknown" in csv.loc["dddd0004", "problems"]
    md = (out / "trials.md").read_text()
    assert "## Problems" in md and "- trial cccc0003: config.yaml: empty; config rebuilt" in md

    # dddd0004 has the lowest error: export refuses it (one line, exit 2), also when named
    with pytest.raises(AnalysisError, match=r"^trial dddd0004 cannot be exported: its searched values \(lr, "
                       r"loss\) are lost \(params.json: torn: invalid JSON at line 1 column 34, config.yaml: "
                       r"torn: no newline at the end \(cut mid-line\); no other file holds them\), and the "
                       r"training defaults would stand in for them; it is the best trial by val_top1_error: "
                       r"export another one with --trial ID$"):
        export(folder, tmp_path / "x.yaml", rank_by="val_top1_error")
    assert export_cli.main([str(folder), "--out", str(tmp_path / "x.yaml"), "--trial", "dddd0004"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "trial dddd0004 cannot be exported" in err
    assert not (tmp_path / "x.yaml").exists()
    _, source, notes = export(folder, tmp_path / "b.yaml")  # the search's objective: bbbb0002, exportable
    assert source["trial_id"] == "bbbb0002"
    assert notes == ["trial bbbb0002: params.json: empty; searched values taken from config.yaml"]
    _, config = load_exported(tmp_path / "b.yaml")
    assert (config["loss"], config["lr"], config["alpha"]) == ("hierarchical-cross-entropy", 0.01, 0.3)


def test_torn_result_json_is_reported_not_silently_stopped_early(tmp_path, capsys):
    """Issue 10: a result.json torn mid-line turned a complete trial into "stopped early" silently. A
    complete all_epoch_results.json wins; without it, the readable records are kept and the trial is
    flagged: its status is uncertain."""
    folder = make_experiment(tmp_path / "tune")
    a, b, c, d = (folder / f"trial_{t}" for t in ("aaaa0001", "bbbb0002", "cccc0003", "dddd0004"))
    tear_last_line(a / "result.json", 30)  # the engine's file is complete
    engine = (c / "all_epoch_results.json").read_text()
    torn_engine = engine[: engine.index('"epoch": 2') + 40]  # torn inside its second record
    (c / "all_epoch_results.json").write_text(torn_engine)
    (b / "all_epoch_results.json").write_text(torn_engine)  # both damaged:
    tear_last_line(b / "result.json", 30)  # the engine's file has 1 epoch, result.json 2
    tear_last_line(d / "result.json", 30)  # result.json only (epochs 1, 2, 2, 3): epoch 3 torn
    assert (d / "result.json").read_text().splitlines()[-1].startswith('{"epoch": 3, "lr": 0.01, "tra')
    state = {"trial_data": [[json.dumps({"trial_id": "dddd0004", "status": "TERMINATED",
                                         "relative_logdir": "trial_dddd0004", "config": {}}), "{}"]]}
    (folder / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(state))

    experiment = load_experiment(folder)
    ta, tb, tc, td = (experiment.trial(t) for t in ("aaaa0001", "bbbb0002", "cccc0003", "dddd0004"))
    assert ta.status == "complete" and ta.epochs_run == 3
    assert ta.problems == ["result.json: torn: invalid JSON at line 3 of 3; epoch records from "
                           "all_epoch_results.json"]
    assert tc.status == "complete" and tc.epochs_run == 3
    torn_line = torn_engine.count("\n") + 1
    assert tc.problems == [f"all_epoch_results.json: torn: invalid JSON at line {torn_line} column 5; "
                           "epoch records from result.json"]
    assert tb.status == "stopped early" and [r["epoch"] for r in tb.records] == [1, 2]
    assert tb.problems[0].startswith("all_epoch_results.json: torn: invalid JSON at line ")
    assert tb.problems[0].endswith("; epoch records from result.json")
    assert tb.problems[1:] == [
        "result.json: torn: invalid JSON at line 3 of 3; epoch records from its 2 readable record(s)",
        "status 'stopped early' is uncertain: result.json is damaged at its end, so the trial may have run "
        "longer than the 2 epoch(s) read (the damaged record is epoch 3's); it may also be an ASHA stop",
    ]
    assert td.status == "stopped early" and td.ray_status == "TERMINATED" and td.epochs_run == 2
    assert td.duplicates == 1 and td.record(2)["val_top1_error"] == 0.58
    assert td.problems == [
        "result.json: torn: invalid JSON at line 4 of 4; epoch records from its 3 readable record(s)",
        "status 'stopped early' is uncertain: result.json is damaged at its end, so the trial may have run "
        "longer than the 2 epoch(s) read (the damaged record is epoch 3's); Ray's status TERMINATED does not "
        "tell this from an ASHA stop",
    ]

    out = tmp_path / "analysis"
    assert rank_cli.main([str(folder), MIXED, "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr()
    assert ("warning: trial dddd0004: status 'stopped early' is uncertain: result.json is damaged at its "
            "end") in printed.err
    assert "warning: trial aaaa0001: result.json: torn: invalid JSON at line 3 of 3;" in printed.err
    assert "stopped early (!)" in next(ln for ln in printed.out.splitlines() if "dddd0004" in ln)
    csv = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert csv.loc["dddd0004", "status"] == "stopped early" and "uncertain" in csv.loc["dddd0004", "problems"]
    assert csv.loc["aaaa0001", "status"] == "complete"


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("params.json", b"", "params.json: empty; searched values taken from config.yaml"),
    ("params.json", b"\0" * 64, "params.json: blank: 64 bytes of whitespace or NUL bytes, no data; searched "
                                "values taken from config.yaml"),
    ("params.json", b'{"loss": "hier', "params.json: torn: invalid JSON at line 1 column 10; searched values "
                                       "taken from config.yaml"),
    ("params.json", b'{"loss" "x"}', "params.json: corrupt: invalid JSON at line 1 column 9 (Expecting ':' "
                                     "delimiter); searched values taken from config.yaml"),
    ("params.json", b"[1, 2]", "params.json: not a JSON object of searched values; searched values taken "
                               "from config.yaml"),
    ("params.json", b'{"loss": "hierarchical-cross-entropy", "lr": 0.01}',
     "params.json: no value for searched key(s) alpha; searched values taken from config.yaml"),
    ("config.yaml", b"", "config.yaml: empty; config rebuilt from search_spec.yaml and the searched values"),
    ("config.yaml", "cut:lr", "config.yaml: torn: no newline at the end (cut mid-line); config rebuilt from "
                              "search_spec.yaml and the searched values"),  # 'lr: 0' would parse
    ("config.yaml", "lines:14", "config.yaml: torn: ends after key 'loss' (14 of "),
    ("config.yaml", b"lr: [0.1\nloss: x\n", "config.yaml: corrupt: invalid YAML at line 2; config rebuilt"),
    ("config.yaml", "extra", "config.yaml: invalid: unknown key 'bogus'; config rebuilt"),
    ("all_epoch_results.json", b"", "all_epoch_results.json: empty; epoch records from result.json"),
    ("all_epoch_results.json", b'{"epoch": 1}', "all_epoch_results.json: not a JSON list of epoch records; "
                                                "epoch records from result.json"),
    ("result.json", b"", "result.json: empty; epoch records from all_epoch_results.json"),
    ("result.json", "middle", "result.json: corrupt: invalid JSON at line 2 of 3; epoch records from "
                              "all_epoch_results.json"),
])
def test_damaged_file_messages(tmp_path, name, content, problem):
    """Each damaged trial file is named with what is wrong, and the trial keeps its true values."""
    folder = make_experiment(tmp_path / "tune", {"bbbb0002": TRIALS["bbbb0002"]})
    path = folder / "trial_bbbb0002" / name
    text = path.read_text()
    if content == "middle":
        lines = text.splitlines(keepends=True)
        content = (lines[0] + lines[1][:50] + "\n" + lines[2]).encode()
    elif content == "extra":
        content = (text + "bogus: 1\n").encode()
    elif content == "cut:lr":  # inside the value of lr
        content = text[: text.index("\nlr: ") + 6].encode()
    elif isinstance(content, str) and content.startswith("lines:"):
        content = "".join(text.splitlines(keepends=True)[: int(content.split(":")[1])]).encode()
    path.write_bytes(content)
    if name == "params.json":
        without_ray_config(path.parent)  # config.yaml is the only other source
    trial = load_experiment(folder).trial("bbbb0002")
    assert len(trial.problems) == 1 and trial.problems[0].startswith(problem), trial.problems
    assert trial.status == "complete" and trial.epochs_run == 3 and trial.unknown_params == []
    assert trial.loss == "hierarchical-cross-entropy"
    assert (trial.params["lr"], trial.params["alpha"]) == (0.01, 0.3)
    assert (trial.config["lr"], trial.config["alpha"]) == (0.01, 0.3)


def test_damaged_experiment_files(tmp_path, capsys):
    """An empty or torn search_spec.yaml makes the experiment unusable: one line, exit 2. A torn Ray
    state is a warning; a never-started trial whose searched values Ray's state holds only pickled
    shows them empty, not as defaults."""
    folder = make_experiment(tmp_path / "tune", {k: TRIALS[k] for k in ("aaaa0001", "bbbb0002")})
    spec = (folder / "search_spec.yaml").read_text()
    cut = spec[: spec.index("val_mistake_severity") + 5]  # parses: 'objective: val_top1_error + 0.1 * val_m'
    for text, what in (("", "empty"), (cut, "torn: no newline at the end (cut mid-line)")):
        (folder / "search_spec.yaml").write_text(text)
        with pytest.raises(AnalysisError, match=f"search_spec.yaml: {re.escape(what)}; the experiment cannot "
                                                "be analysed without its spec$"):
            load_experiment(folder)
        assert rank_cli.main([str(folder), "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and f"search_spec.yaml: {what}" in err
    (folder / "search_spec.yaml").write_text(spec)

    def entry(trial_id: str, status: str, config: dict) -> list:
        return [json.dumps({"trial_id": trial_id, "status": status, "relative_logdir": None,
                            "config": config}), "{}"]

    pickled = {"_type": "CLOUDPICKLE_FALLBACK", "value": "80059500"}
    state = {"trial_data": [entry("kkkk0011", "PENDING", pickled)]}
    (folder / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(state))
    experiment = load_experiment(folder)
    k = experiment.trial("kkkk0011")
    assert k.status == "unfinished" and k.config is None and k.unknown_params == ["lr", "loss"]
    assert k.problems == ["searched values unknown (lr, loss): the trial never got a folder and Ray's saved "
                          "state holds no plain-JSON config; shown empty, not exportable"]
    r = rows(build_table(experiment, include_stopped=True))
    assert math.isnan(r["kkkk0011"]["lr"]) and pd.isna(r["kkkk0011"]["loss"])  # not 0.05, cross-entropy

    torn = json.dumps(state)[:40]
    (folder / "experiment_state-2026-01-03_00-00-00.json").write_text(torn)  # the newest, torn
    experiment = load_experiment(folder)
    assert [t.trial_id for t in experiment.trials] == ["aaaa0001", "bbbb0002"]
    assert experiment.problems == [
        "experiment_state-2026-01-03_00-00-00.json: torn: invalid JSON at line 1 column 18; Ray's trial "
        "statuses are unknown: statuses come from the trial folders alone (a trial still running when the "
        "search stopped may show as stopped early)"
    ]
    assert rank_cli.main([str(folder), MIXED, "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    assert "warning: experiment_state-2026-01-03_00-00-00.json: torn: invalid JSON" in capsys.readouterr().err

# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors(synth, tmp_path, capsys):
    with pytest.raises(AnalysisError, match="is not an experiment folder: it has no search_spec.yaml"):
        load_experiment(tmp_path)
    with pytest.raises(AnalysisError, match="experiments inside it: synth"):
        load_experiment(synth.parent)
    with pytest.raises(AnalysisError, match="does not exist"):
        load_experiment(tmp_path / "missing")
    assert rank_cli.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not an experiment folder" in err and "Traceback" not in err

    only_bad = {k: TRIALS[k] for k in ("ffff0006", "gggg0007")}
    bad = make_experiment(tmp_path / "bad", only_bad)
    with pytest.raises(AnalysisError, match=r"has no finished trial \(2 trial\(s\): 1 nan, 1 error\)"):
        build_table(load_experiment(bad))
    assert rank_cli.main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert export_cli.main([str(bad), "--out", str(tmp_path / "x.yaml")]) == 2
    assert "has no finished trial" in capsys.readouterr().err
    empty = tmp_path / "empty" / "e"
    empty.mkdir(parents=True)
    (empty / "search_spec.yaml").write_text(yaml.safe_dump(spec_dict(tmp_path, 1)))
    with pytest.raises(AnalysisError, match=r"no finished trial \(0 trial\(s\)\)"):
        build_table(load_experiment(empty))

    out = tmp_path / "best.yaml"
    with pytest.raises(AnalysisError, match=r"Pareto index 3 is out of range.*3 trial\(s\): valid pareto:0 "
                                            r"\.\. pareto:2"):
        export(synth, out, rank_by="pareto:3")
    with pytest.raises(AnalysisError, match="INDEX must be a whole number"):
        export(synth, out, rank_by="pareto:first")
    valid = r"valid: objective, val_top1_error, val_mistake_severity, val_hdist@1.*pareto:INDEX"
    with pytest.raises(AnalysisError, match=r"--rank-by 'accuracy' is unknown; " + valid):
        export(synth, out, rank_by="accuracy")
    assert export_cli.main([str(synth), "--out", str(out), "--rank-by", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert "valid: objective, val_top1_error" in err and "Traceback" not in err
    with pytest.raises(AnalysisError, match="trial 'zzzz' is not in experiment .*trials: aaaa0001, bbbb0002"):
        export(synth, out, trial_id="zzzz")
    with pytest.raises(AnalysisError, match="distinct seeds"):
        export(synth, out, seeds=[1, 1])
    assert not out.exists()
    for wrong in (tmp_path / "best.txt", synth):  # --out: a .yaml file, not a folder
        with pytest.raises(AnalysisError, match="give a .yaml file"):
            export(synth, wrong)
    assert rank_cli.main([str(synth), MIXED, "--out", str(synth / "search_spec.yaml"), "--no-plots"]) == 2
    assert "is a file: give a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rank_cli.main([str(synth), "--top", "0"])
    assert "'0' is not a whole number >= 1" in capsys.readouterr().err
    for module in (rank_cli, export_cli, compare_cli):  # --help works and shows the defaults
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
    assert "(default: best)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- export
def load_exported(path: Path) -> tuple[dict, dict]:
    values = yaml.safe_load(path.read_text())
    return values.pop("source"), values


def test_export_best_and_train_cli_accepts_it(synth, tmp_path):
    from hiercls.config import TrainConfig
    from hiercls.train import build_parser, config_from_args

    _, source, _ = export(synth, tmp_path / "default.yaml")  # default: the search's own objective
    assert (source["metric"], source["trial_id"], source["epoch"]) == ("objective", "bbbb0002", 3)
    assert source["value"] == pytest.approx(0.63)
    out = tmp_path / "best.yaml"
    written, source, _ = export(synth, out, rank_by="val_top1_error")
    assert written == [out]
    block, config = load_exported(out)
    assert block == {"experiment": str(synth.resolve()), "trial_id": "dddd0004", "metric": "val_top1_error",
                     "scope": "best", "epoch": 3, "value": 0.44, "trial_seed": config["seed"]} == source
    trial_config = yaml.safe_load((synth / "trial_dddd0004" / "config.yaml").read_text())
    changed = {k for k in trial_config if trial_config[k] != config[k]}
    assert changed == {"out_folder", "evaluate_test"}
    assert config["out_folder"] == "runs/synth-dddd0004" and config["evaluate_test"] is True
    assert config["epochs"] == 3 and config["num_threads"] == 1 and config["data_dir"] == "/nowhere/cifar-100"
    parsed = config_from_args(build_parser().parse_args(["--config", str(out)]))  # source: is ignored
    assert parsed == TrainConfig.from_dict(config)

    assert export_cli.main([str(synth), "--out", str(out), "--rank-by", "val_top1_error"]) == 2  # kept ...
    argv = [str(synth), "--out", str(out), "--force", "--rank-by", "val_mistake_severity"]
    assert export_cli.main(argv) == 0
    block, _ = load_exported(out)  # ... unless --force
    assert (block["trial_id"], block["epoch"], block["value"]) == ("cccc0003", 3, 1.6)


@pytest.mark.parametrize(("rank_by", "trial", "epoch", "value"), [
    ("val_hdist@1", "bbbb0002", 3, 0.782),
    ("objective", "bbbb0002", 3, pytest.approx(0.63)),
    ("val_crm/hdist@5", "cccc0003", 3, pytest.approx(1.7)),
    ("pareto:0", "dddd0004", 3, {"val_top1_error": 0.44, "val_mistake_severity": 2.5}),
    ("pareto:1", "bbbb0002", 3, {"val_top1_error": 0.46, "val_mistake_severity": 1.7}),
    ("pareto:2", "cccc0003", 3, {"val_top1_error": 0.50, "val_mistake_severity": 1.6}),
])
def test_export_rank_by(synth, tmp_path, rank_by, trial, epoch, value):
    _, source, _ = export(synth, tmp_path / "x.yaml", rank_by=rank_by)
    assert (source["trial_id"], source["metric"], source["epoch"]) == (trial, rank_by, epoch)
    assert source["value"] == value


def test_export_scope_by_trial_id(synth, tmp_path):
    top1 = "val_top1_error"
    _, best, _ = export(synth, tmp_path / "b.yaml", trial_id="aaaa0001", rank_by=top1)
    _, last, _ = export(synth, tmp_path / "l.yaml", trial_id="aaaa0001", scope="last", rank_by=top1)
    assert (best["epoch"], best["value"], best["scope"]) == (2, 0.50, "best")
    assert (last["epoch"], last["value"], last["scope"]) == (3, 0.48, "last")


def test_nan_error_and_stopped_trials_only_by_id(synth, tmp_path):
    for rank_by in ("val_top1_error", "val_mistake_severity", "val_hdist@5"):
        _, source, _ = export(synth, tmp_path / f"{rank_by}.yaml", rank_by=rank_by)
        assert source["trial_id"] not in ("eeee0005", "ffff0006", "gggg0007")  # e has the lowest values
    _, source, notes = export(synth, tmp_path / "e.yaml", trial_id="eeee0005")
    assert source["trial_id"] == "eeee0005" and source["epoch"] == 1
    assert source["metric"] == "objective" and source["value"] == pytest.approx(0.42 + 0.14)
    assert "stopped early (1/3 epochs)" in notes[0]
    _, source, notes = export(synth, tmp_path / "f.yaml", trial_id="ffff0006", scope="last")
    assert source["epoch"] == 2 and source["value"] is None and "is nan" in notes[0]
    _, source, notes = export(synth, tmp_path / "g.yaml", trial_id="gggg0007")
    assert source["epoch"] is None and "is error" in notes[0] and "rebuilt" in notes[1]
    _, config = load_exported(tmp_path / "g.yaml")
    from hiercls.tune.trainable import trial_seed

    assert config["lr"] == 0.001 and config["seed"] == trial_seed(0, 6) and config["t0"] == 12.0

    stopped_only = make_experiment(tmp_path / "s", {k: TRIALS[k] for k in ("eeee0005", "ffff0006")})
    with pytest.raises(AnalysisError, match="no trial of .* ran its full length .*named with --trial"):
        export(stopped_only, tmp_path / "s.yaml")


def test_export_seeds_and_retrain_full(synth, tmp_path):
    out = tmp_path / "cfg" / "best.yaml"
    assert export_cli.main([str(synth), "--out", str(out), "--seeds", "0", "1", "2", "--retrain-full"]) == 0
    assert not out.exists()
    seeds, folders = [], set()
    for seed in (0, 1, 2):
        block, config = load_exported(out.with_name(f"best.seed{seed}.yaml"))
        assert block["trial_id"] == "bbbb0002" and block["epoch"] == 3
        assert config["val_size"] == 0 and config["max_train_samples"] is None and config["epochs"] == 3
        seeds.append(config["seed"])
        folders.add(config["out_folder"])
    assert seeds == [0, 1, 2] and folders == {f"runs/synth-bbbb0002-full-seed{s}" for s in (0, 1, 2)}
    assert export_cli.main([str(synth), "--out", str(out), "--seeds", "2", "3"]) == 2  # seed2 file exists
    assert not out.with_name("best.seed3.yaml").exists()  # nothing written when one target exists


# ---------------------------------------------------------------------------------------------- plots
@pytest.mark.slow
def test_plots_are_written_and_open(tmp_path, capsys):
    import random

    import matplotlib.image

    from analysis.plots import PLOT_FILES

    rng = random.Random(1)
    trials = dict(TRIALS)
    losses = ["cross-entropy", "hierarchical-cross-entropy", "soft-labels"]
    for i in range(10):
        loss = losses[i % 3]
        params = {"lr": round(10 ** rng.uniform(-3, -0.7), 5)}
        params.update({"hierarchical-cross-entropy": {"alpha": round(rng.uniform(0, 0.9), 3)},
                       "soft-labels": {"beta": round(rng.uniform(1, 30), 3)}}.get(loss, {}))
        curve = [tuple(round(rng.uniform(low, high), 3) for low, high in ((0.4, 0.9), (1.2, 3.0), (1.5, 3.0)))
                 for _ in range(3)]
        trials[f"x{i:07d}"] = (loss, params, 10 + i, curve, {})
    folder = make_experiment(tmp_path / "tune", trials)
    out = tmp_path / "plots"
    assert rank_cli.main([str(folder), MIXED, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parameter importances skipped" not in printed
    for name in PLOT_FILES.values():
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100, name

    few = make_experiment(tmp_path / "few", {k: TRIALS[k] for k in ("aaaa0001", "bbbb0002", "eeee0005")})
    assert rank_cli.main([str(few), MIXED, "--out", str(tmp_path / "few-out")]) == 0
    assert "note: parameter importances skipped: 2 compared trial(s)" in capsys.readouterr().out
    assert (tmp_path / "few-out" / PLOT_FILES["tradeoff_severity"]).is_file()
    assert not (tmp_path / "few-out" / PLOT_FILES["param_importances"]).exists()
    # ranking into a folder that holds an earlier importances plot: the stale plot does not stay
    assert rank_cli.main([str(few), MIXED, "--out", str(out)]) == 0
    assert f"removed {out / PLOT_FILES['param_importances']}" in capsys.readouterr().out
    assert not (out / PLOT_FILES["param_importances"]).exists()


# ---------------------------------------------------------------------------------------------- compare
def write_run(folder: Path, seed: int, lr: float, metrics: dict, **extra) -> Path:
    from hiercls.config import TrainConfig

    folder.mkdir(parents=True)
    config = TrainConfig.from_dict({"seed": seed, "lr": lr, "out_folder": str(folder), "epochs": 2, **extra})
    (folder / "config.yaml").write_text(config.resolved().to_yaml())
    (folder / "final_test_results.json").write_text(json.dumps({"test_accuracy": 50.0, "metrics": metrics,
                                                               "epoch": 2}))
    return folder


def test_compare_groups_seeds(tmp_path, capsys):
    from analysis.compare import METRICS, load_run, summarize

    def metrics(top1: float, sev: float) -> dict:
        return {m: (top1 if "error" in m else sev) for m in METRICS}

    # seed 1 ran on another machine: its data path and thread count differ, it is still the same config
    elsewhere = {1: {"data_dir": "/other/cifar-100", "num_threads": 8}}
    runs = [write_run(tmp_path / f"s{seed}", seed, 0.05, metrics(top1, sev), **elsewhere.get(seed, {}))
            for seed, top1, sev in ((0, 0.30, 2.00), (1, 0.32, 2.10), (2, 0.34, 2.30))]
    runs.append(write_run(tmp_path / "other", 0, 0.1, metrics(0.40, 1.90)))
    table = summarize([load_run(r) for r in runs])
    assert list(table["group"]) == ["lr=0.05", "lr=0.1"] and list(table["n"]) == [3, 1]
    assert table["seeds"][0] == "0 1 2"
    t975 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom
    assert table["top1_error"][0] == pytest.approx(0.32)
    assert table["top1_error_ci95"][0] == pytest.approx(t975 * 0.02 / math.sqrt(3))
    sev_sd = math.sqrt(((2.0 - 2.1333333) ** 2 + (2.1 - 2.1333333) ** 2 + (2.3 - 2.1333333) ** 2) / 2)
    assert table["mistake_severity"][0] == pytest.approx(6.4 / 3)
    assert table["crm/hdist@5_ci95"][0] == pytest.approx(t975 * sev_sd / math.sqrt(3), rel=1e-5)
    assert table["top1_error"][1] == 0.40 and math.isnan(table["top1_error_ci95"][1])

    out = tmp_path / "cmp.md"
    assert compare_cli.main([*map(str, runs), MIXED, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"0.3200 ± {t975 * 0.02 / math.sqrt(3):.4f}" in printed and "0.4000" in printed
    assert "| lr=0.05 | 3 | 0 1 2 |" in out.read_text()
    assert compare_cli.main([*map(str, runs), MIXED, "--out", str(tmp_path / "cmp.csv")]) == 0
    assert (tmp_path / "cmp.csv").read_text().startswith("group,n,seeds,runs,top1_error,top1_error_ci95")

    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("seed: 0\n")
    assert compare_cli.main([str(runs[0]), str(tmp_path / "unfinished")]) == 2
    assert "has no final_test_results.json" in capsys.readouterr().err
    assert compare_cli.main([str(tmp_path / "nothing")]) == 2
    assert compare_cli.main([str(runs[0]), "--model", "best"]) == 2
    assert "no best-val model" in capsys.readouterr().err
    assert compare_cli.main([str(runs[0]), "--out", str(tmp_path / "x.txt")]) == 2
    (tmp_path / "dir.md").mkdir()
    assert compare_cli.main([str(runs[0]), "--out", str(tmp_path / "dir.md"), "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert compare_cli.main([str(runs[0]), str(runs[1]), str(runs[0])]) == 2  # one run given twice
    assert "is given twice" in capsys.readouterr().err
    import shutil

    shutil.copytree(runs[0], tmp_path / "copy")  # a copy of a run is not another seed
    assert compare_cli.main([str(runs[0]), str(tmp_path / "copy"), MIXED]) == 0
    assert "warning: seed 0 repeats in one group" in capsys.readouterr().out
    assert compare_cli.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    before = out.read_text()
    assert compare_cli.main([str(runs[0]), "--out", str(out)]) == 2  # an existing table is kept
    assert "refusing to overwrite" in capsys.readouterr().err and out.read_text() == before
    assert compare_cli.main([str(runs[0]), "--out", str(out), "--force"]) == 0 and out.read_text() != before


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.realdata
def test_exported_best_trial_reproduces_its_val_metrics(smoke_search, tmp_path):
    """Export the smoke search's best trial (scope best) and train the exported file as the train CLI
    reads it: the same seed, code and thread count give the trial's val metrics at source.epoch."""
    import torch

    from hiercls.engine import fit
    from hiercls.train import build_parser, config_from_args

    folder = smoke_search["outcome"].experiment_dir
    out = tmp_path / "best.yaml"
    _, source, _ = export(folder, out, scope="best")
    experiment = load_experiment(folder)
    trial = experiment.trial(source["trial_id"])
    assert trial.status == "complete" and experiment.objective_text == "val_top1_error"
    lowest = min(r["val_top1_error"] for t in experiment.trials if t.status == "complete" for r in t.records)
    reference = trial.record(source["epoch"])
    assert source["value"] == reference["val_top1_error"] == lowest
    assert rank_cli.main([str(folder), "--out", str(tmp_path / "analysis")]) == 0  # the real folder ranks too
    ranked = (tmp_path / "analysis" / "trials.csv").read_text().splitlines()
    assert len(ranked) == 1 + smoke_search["spec"].num_samples and ranked[1].startswith(trial.trial_id)

    argv = ["--config", str(out), "--out_folder", str(tmp_path / "run"), "--no-test"]
    config = config_from_args(build_parser().parse_args(argv))
    assert config.seed == trial.seed and config.epochs == trial.epochs
    assert config.num_threads == trial.config["num_threads"]
    threads = torch.get_num_threads()
    try:
        result = fit(config, progress=False)  # sets torch's thread count from config.num_threads
    finally:
        torch.set_num_threads(threads)
    rerun = result["history"][source["epoch"] - 1]
    assert rerun["val_split_sha256"] == reference["val_split_sha256"]  # the same validation images
    keys = [k for k in reference if k.startswith("val_") and k != "val_split_sha256"]
    assert len(keys) > 40 and "val_crm/hdist@5" in keys
    diffs = {k: abs(float(rerun[k]) - float(reference[k])) for k in keys}
    worst = max(diffs, key=diffs.get)
    print(f"reproduction of trial {trial.trial_id} epoch {source['epoch']}: max abs difference "
          f"{diffs[worst]:.3g} ({worst})")
    assert diffs[worst] <= 1e-6, diffs


def test_loss_families_name_the_seed_methods():
    from analysis.experiment import loss_family

    assert loss_family("cosine-distance", {"barzdenzler": True}) == "B&D cosine-distance"
    assert loss_family("cosine-distance", {}) == "B&D cosine-distance"  # the embedding losses' default
    assert loss_family("cosine-plus-xent", {"barzdenzler": False}) == "B&D cosine-plus-xent"
    assert loss_family("ranking-loss", {"devise": True}) == "DeViSE ranking-loss"
    assert loss_family("cosine-distance", {"devise": True}) == "DeViSE cosine-distance"
    assert loss_family("yolo-v2", {"alpha": 0.3}) == "YOLO-v2"
    assert loss_family("soft-labels", {"devise": False}) == "soft-labels"
    assert loss_family("my-own-loss", {}) == "my-own-loss" and loss_family(None, {}) is None
