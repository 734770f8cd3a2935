"""Rank transfer between a cheap and an expensive experiment (analysis/transfer.py): toy experiment folders
on disk with hand-chosen final values, so each correlation is known exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from test_analysis import spec_dict, write_trial

from analysis import transfer
from analysis.experiment import AnalysisError
from analysis.rank import METRICS
from analysis.transfer import rank_transfer

LRS = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]
SEVERITY = 2.0  # the same for every trial: val_mistake_severity is constant (its correlation undefined)


def trial(config: int, final: float, *, epochs: int = 3, kind: str = "complete", early: float = 0.9,
          **params) -> tuple:
    """A cross-entropy trial of configuration ``config`` (lr = LRS[config]) whose last epoch has top-1
    error ``final`` (hdist@1/5/20 and coarse error follow its order; severity is constant); the epochs
    before it have error ``early``. ``kind``: complete, stopped (ASHA after epoch 1), nan, error."""
    last = (final, SEVERITY, 2.0 + final)
    values = {"complete": [(early, SEVERITY, 3.0)] * (epochs - 1) + [last], "stopped": [last],
              "nan": [(early, SEVERITY, 3.0), (0, 0, 0, "nan")], "error": []}[kind]
    return {"lr": LRS[config], **params}, values, {"error": True} if kind == "error" else {}


def make(storage: Path, name: str, trials: list, *, epochs: int = 3) -> Path:
    """An experiment folder as tune_main.py writes it (the layout analysis.experiment reads), one trial per
    :func:`trial` tuple, trial ids ``t000``, ``t001``, ... in list order."""
    spec = spec_dict(storage, len(trials))
    spec.update(name=name, epochs=epochs)
    folder = storage / name
    folder.mkdir(parents=True)
    (folder / "search_spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for index, (params, values, options) in enumerate(trials):
        write_trial(folder, spec, f"t{index:03d}", "cross-entropy", params, index, values, options)
    return folder


def mark_running(folder: Path, trial_id: str) -> None:
    """Ray's experiment state (read as JSON) says ``trial_id`` was still running: an interrupted search."""
    entry = [json.dumps({"trial_id": trial_id, "status": "RUNNING", "relative_logdir": f"trial_{trial_id}",
                         "config": {}}), json.dumps({"error_filename": None})]
    state = {"trial_data": [entry], "runner_data": {}, "stats": {}}
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))


def pair(tmp_path: Path, cheap: list[float], expensive: list[float], **kwargs) -> tuple[Path, Path]:
    """A cheap experiment (3 epochs) and an expensive one (4 epochs: ignored when matching) whose
    configuration i has final top-1 error cheap[i] and expensive[i]."""
    return (make(tmp_path, "cheap", [trial(i, e) for i, e in enumerate(cheap)], **kwargs),
            make(tmp_path, "expensive", [trial(i, e, epochs=4) for i, e in enumerate(expensive)], epochs=4))


def row(result, metric: str = "val_top1_error") -> dict:
    return result.table.set_index("metric").loc[metric].to_dict()


# ---------------------------------------------------------------------------------------------- known values
def test_same_order_gives_one_and_constant_metrics_are_nan(tmp_path):
    cheap, expensive = pair(tmp_path, [0.30, 0.35, 0.40, 0.45, 0.50, 0.55],
                            [0.20, 0.21, 0.25, 0.26, 0.3, 0.4])
    result = rank_transfer(cheap, expensive)
    assert list(result.table["metric"]) == list(METRICS)  # every default metric both report
    for metric in ("val_top1_error", "val_hdist@1", "val_hdist@5", "val_hdist@20", "val_coarse_error"):
        r = row(result, metric)
        assert r["n"] == 6 and r["resamples"] > 0 and r["bootstrap"] == 2000
        for col in ("spearman", "spearman_lo", "spearman_hi", "kendall", "kendall_lo", "kendall_hi"):
            assert abs(r[col] - 1.0) <= 1e-12, (metric, col, r[col])
    severity = row(result, "val_mistake_severity")
    assert math.isnan(severity["spearman"]) and math.isnan(severity["kendall"]) and severity["n"] == 6
    assert "all equal" in severity["note"]
    assert result.cheap["matched_configurations"] == 6 and result.expensive["unmatched_trials"] == 0
    assert result.top_k["k"] == 3 and result.top_k["overlap"] == 3


def test_reversed_order_gives_minus_one(tmp_path):
    cheap, expensive = pair(tmp_path, [0.30, 0.35, 0.40, 0.45, 0.50, 0.55], [0.4, 0.3, 0.26, 0.25, 0.21, 0.2])
    result = rank_transfer(cheap, expensive, metrics="val_top1_error")
    r = row(result)
    assert abs(r["spearman"] + 1.0) <= 1e-12 and abs(r["kendall"] + 1.0) <= 1e-12
    assert abs(r["spearman_hi"] + 1.0) <= 1e-12 and abs(r["kendall_lo"] + 1.0) <= 1e-12
    assert result.top_k["overlap"] == 0  # the cheap top 3 are the expensive bottom 3


def test_one_swapped_pair_by_hand_and_the_bootstrap_interval(tmp_path):
    # ranks 1 2 3 4 5 against 1 3 2 4 5: sum d^2 = 2, Spearman = 1 - 6*2/(5*24) = 0.9;
    # 9 concordant and 1 discordant pair of 10: Kendall tau-b = (9 - 1)/10 = 0.8
    cheap, expensive = pair(tmp_path, [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.3, 0.2, 0.4, 0.5])
    result = rank_transfer(cheap, expensive, metrics=["val_top1_error"], seed=7, top=2)
    r = row(result)
    assert abs(r["spearman"] - 0.9) <= 1e-12 and abs(r["kendall"] - 0.8) <= 1e-12
    assert r["spearman_lo"] <= 0.9 <= r["spearman_hi"] and r["spearman_lo"] < r["spearman_hi"]
    assert r["kendall_lo"] <= 0.8 <= r["kendall_hi"] and r["kendall_lo"] < r["kendall_hi"]
    assert -1 <= r["spearman_lo"] and r["spearman_hi"] <= 1
    assert 0 < r["resamples"] <= 2000
    again = rank_transfer(cheap, expensive, metrics=["val_top1_error"], seed=7, top=2)
    assert again.table.equals(result.table)  # the same seed, the same intervals
    other = row(rank_transfer(cheap, expensive, metrics=["val_top1_error"], seed=8))
    bounds = ("spearman_lo", "spearman_hi", "kendall_lo", "kendall_hi", "resamples")
    assert [other[c] for c in bounds] != [r[c] for c in bounds]  # another seed, other resamples
    # top-2: cheap {lr=0.01, lr=0.02}, expensive {lr=0.01, lr=0.03}; top-3: the same three
    assert (result.top_k["k"], result.top_k["overlap"]) == (2, 1)
    assert result.top_k["cheap_top"] == ["loss=cross-entropy lr=0.01", "loss=cross-entropy lr=0.02"]
    assert result.top_k["expensive_top"] == ["loss=cross-entropy lr=0.01", "loss=cross-entropy lr=0.03"]
    assert rank_transfer(cheap, expensive, metrics=["val_top1_error"], top=3).top_k["overlap"] == 3
    # the cheap search's objective (val_top1_error + 0.1 * severity, severity constant) ranks alike
    both = rank_transfer(cheap, expensive, metrics="objective,val_top1_error", bootstrap=200)
    assert list(both.table["metric"]) == ["objective", "val_top1_error"]
    assert abs(row(both, "objective")["spearman"] - 0.9) <= 1e-12


def test_vectorised_bootstrap_statistics_equal_scipy():
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 4, size=(200, 7)).astype(float), rng.integers(0, 5, size=(200, 7)).astype(float)
    xs[0] = 1.0  # a constant row: undefined
    rho, tau, valid = transfer._correlations(xs, ys)
    assert not valid[0] and math.isnan(rho[0]) and math.isnan(tau[0])
    assert valid[1:].all()
    for i in range(1, len(xs)):
        assert rho[i] == pytest.approx(stats.spearmanr(xs[i], ys[i])[0], abs=1e-12)
        assert tau[i] == pytest.approx(stats.kendalltau(xs[i], ys[i], variant="b")[0], abs=1e-12)


def test_undefined_resamples_are_skipped_and_counted_and_few_configs_give_nan(tmp_path):
    # the cheap values of two configurations tie: a resample drawing only from {0, 1} (8 of 27 index
    # triples) or only 2 (1 of 27) has constant cheap values: about 1/3 of the resamples are skipped
    cheap, expensive = pair(tmp_path, [0.1, 0.1, 0.2], [0.1, 0.2, 0.3])
    r = row(rank_transfer(cheap, expensive, metrics="val_top1_error"))
    assert abs(r["spearman"] - 1.5 / math.sqrt(3)) <= 1e-12  # ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert abs(r["kendall"] - 2 / math.sqrt(6)) <= 1e-12  # 2 concordant; 2 and 3 pairs untied
    assert 1100 < r["resamples"] < 1550
    assert f"{2000 - r['resamples']} of 2000 bootstrap resamples skipped" in r["note"]

    few = tmp_path / "few"
    cheap, expensive = pair(few, [0.1, 0.2], [0.1, 0.2])
    result = rank_transfer(cheap, expensive, metrics="val_top1_error")
    r = row(result)
    assert r["n"] == 2 and math.isnan(r["spearman"]) and math.isnan(r["kendall"])
    assert math.isnan(r["spearman_lo"]) and r["resamples"] == 0
    assert "needs at least 3" in r["note"] and any("needs at least 3" in n for n in result.notes)


# ---------------------------------------------------------------------------------------------- matching
def test_matching_on_searched_values_and_on_chosen_keys(tmp_path):
    cheap = make(tmp_path, "cheap", [trial(i, e) for i, e in enumerate([0.1, 0.2, 0.3, 0.4])])
    # the expensive search also searched batch_size: no configuration has the same searched values
    other = make(tmp_path, "other", [trial(i, e, epochs=4, batch_size=64)
                                     for i, e in enumerate([0.1, 0.2, 0.3, 0.4])], epochs=4)
    result = rank_transfer(cheap, other, metrics="val_top1_error")
    assert row(result)["n"] == 0 and result.cheap["unmatched_configurations"] == 4
    assert any("search different keys (cheap: loss, lr; expensive: batch_size, loss, lr)" in n
               and "--match-on" in n for n in result.notes)
    by_lr = rank_transfer(cheap, other, metrics="val_top1_error", match_on="lr")
    assert row(by_lr)["n"] == 4 and abs(row(by_lr)["spearman"] - 1) <= 1e-12
    assert by_lr.match_on == ("lr",) and list(by_lr.pairs["configuration"]) == [
        "lr=0.01", "lr=0.02", "lr=0.03", "lr=0.04"]

    # floats equal to 12 significant digits match; a difference in the 7th digit does not
    near = make(tmp_path, "near", [
        ({"lr": LRS[0] * (1 + 1e-14)}, *trial(0, 0.1)[1:]), trial(1, 0.2), trial(2, 0.3),
        ({"lr": LRS[3] * (1 + 1e-6)}, *trial(3, 0.4)[1:])])
    result = rank_transfer(cheap, near, metrics="val_top1_error")
    assert row(result)["n"] == 3
    for side in (result.cheap, result.expensive):
        assert (side["matched_configurations"], side["unmatched_configurations"],
                side["unmatched_trials"]) == (3, 1, 1)


def test_repeated_configurations_are_averaged(tmp_path, capsys):
    cheap = make(tmp_path, "cheap", [trial(i, e) for i, e in enumerate([0.1, 0.2, 0.3, 0.4])])
    # configuration 1 ran twice (seeds): 0.35 and 0.05, mean 0.2, in order; either value alone is not
    seeds = make(tmp_path, "seeds", [trial(0, 0.1), trial(1, 0.35), trial(2, 0.3), trial(3, 0.4),
                                     trial(1, 0.05)])
    result = rank_transfer(cheap, seeds, metrics="val_top1_error")
    r = row(result)
    assert r["n"] == 4 and abs(r["spearman"] - 1) <= 1e-12 and abs(r["kendall"] - 1) <= 1e-12
    config1 = result.pairs.set_index("configuration").loc["loss=cross-entropy lr=0.02"]
    assert config1["expensive_trials"] == "t001 t004"
    assert config1["expensive:val_top1_error"] == pytest.approx(0.2, abs=1e-12)
    assert (result.expensive["averaged_configurations"], result.expensive["averaged_trials"]) == (1, 2)
    assert result.expensive["used"] == 5 and result.expensive["configurations"] == 4
    assert transfer.main([str(cheap), str(seeds), "--metrics", "val_top1_error"]) == 0
    out = capsys.readouterr().out
    assert "note: expensive: 1 configuration(s) ran more than once (2 trials" in out
    assert "the mean of its trials' values" in out


def test_excluded_trials_are_counted_and_stopped_ones_used_on_request(tmp_path, capsys):
    cheap = make(tmp_path, "cheap", [trial(0, 0.1), trial(1, 0.2), trial(2, 0.3), trial(3, 0.4),
                                     trial(4, 0.5, kind="stopped"), trial(5, 0.6, kind="nan"),
                                     trial(6, 0.7, kind="error"), trial(7, 0.8, kind="stopped")])
    mark_running(cheap, "t007")  # one epoch reported when the search was interrupted: unfinished
    expensive = make(tmp_path, "expensive", [trial(i, e) for i, e in enumerate([0.1, 0.2, 0.4, 0.3, 0.5,
                                                                                 0.6, 0.7, 0.8])])
    result = rank_transfer(cheap, expensive, metrics="val_top1_error")
    assert result.cheap["excluded"] == {"stopped early": 1, "nan": 1, "error": 1, "unfinished": 1}
    assert result.cheap["used"] == 4 and result.cheap["trials"] == 8
    assert result.expensive["unmatched_configurations"] == 4 and result.expensive["unmatched_trials"] == 4
    assert row(result)["n"] == 4 and abs(row(result)["kendall"] - 4 / 6) <= 1e-12
    stopped = rank_transfer(cheap, expensive, metrics="val_top1_error", include_stopped=True)
    # unfinished trials stay out: only ASHA's stopped-early ones are added
    assert stopped.cheap["excluded"] == {"nan": 1, "error": 1, "unfinished": 1} and stopped.cheap["used"] == 5
    assert row(stopped)["n"] == 5 and abs(row(stopped)["kendall"] - 8 / 10) <= 1e-12
    assert transfer.main([str(cheap), str(expensive)]) == 0
    out = capsys.readouterr().out
    assert "cheap: cheap (" in out
    assert "8 trial(s), 4 used; 4 left out (1 stopped early, 1 unfinished, 1 nan, 1 error" in out
    assert "--include-stopped uses the stopped-early ones" in out
    assert "4 unmatched (4 trial(s))" in out


def test_scope_best_takes_each_trials_best_epoch(tmp_path):
    # the last epochs are in the same order; the first epochs (each trial's best: lower) are reversed
    cheap = make(tmp_path, "cheap", [trial(i, e, early=0.05 - 0.01 * i)
                                     for i, e in enumerate([0.3, 0.4, 0.5])])
    expensive = make(tmp_path, "expensive", [trial(i, e) for i, e in enumerate([0.6, 0.7, 0.8])])
    assert abs(row(rank_transfer(cheap, expensive, metrics="val_top1_error"))["spearman"] - 1) <= 1e-12
    best = rank_transfer(cheap, expensive, metrics="val_top1_error", scope="best")
    assert abs(row(best)["spearman"] + 1) <= 1e-12
    assert list(best.pairs["cheap:val_top1_error"]) == pytest.approx([0.05, 0.04, 0.03])


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_prints_the_table_and_writes_files_it_never_overwrites(tmp_path, capsys):
    cheap, expensive = pair(tmp_path, [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.3, 0.2, 0.4, 0.5])
    out = tmp_path / "out"
    argv = [str(cheap), str(expensive), "--out", str(out), "--seed", "3", "--top", "2", "--bootstrap", "500"]
    assert transfer.main(argv) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("rank transfer: cheap (cheap) -> expensive (expensive); matched on the "
                               "searched values")
    header = next(ln for ln in lines if ln.startswith("metric"))
    assert header.split() == ["metric", "n", "spearman", "95%", "CI", "kendall", "95%", "CI", "resamples"]
    top1 = next(ln for ln in lines if ln.startswith("val_top1_error")).split()
    assert top1[:3] == ["val_top1_error", "5", "0.900"] and "0.800" in top1 and top1[-1].endswith("/500")
    assert "top-2 overlap: 1 of the cheap search's top 2" in printed
    table = pd.read_csv(out / "rank_transfer.csv")
    assert list(table.columns) == list(transfer.TABLE_COLUMNS) and list(table["metric"]) == list(METRICS)
    saved = json.loads((out / "rank_transfer.json").read_text())
    assert saved["seed"] == 3 and saved["bootstrap"] == 500 and saved["top_k"]["overlap"] == 1
    assert saved["metrics"][0]["metric"] == "val_top1_error"
    assert abs(saved["metrics"][0]["spearman"] - 0.9) <= 1e-12
    assert saved["metrics"][1]["spearman"] is None  # severity is constant: NaN written as null
    assert len(saved["configurations"]) == 5 and saved["cheap"]["used"] == 5
    before = {p.name: p.read_text() for p in out.iterdir()}

    assert transfer.main([*argv, "--seed", "4"]) == 2  # refused before any work: the files are kept
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "refusing to overwrite" in captured.err
    assert "--overwrite" in captured.err and "Traceback" not in captured.err and captured.out == ""
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert transfer.main([*argv, "--seed", "4", "--overwrite"]) == 0
    assert json.loads((out / "rank_transfer.json").read_text())["seed"] == 4


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    cheap, expensive = pair(tmp_path, [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    (tmp_path / "plain").mkdir()
    cases = [
        ([str(tmp_path / "missing"), str(expensive)], "is not an experiment folder: it does not exist"),
        ([str(cheap), str(tmp_path / "plain")], "is not an experiment folder: it has no search_spec.yaml"),
        ([str(cheap), str(expensive), "--metrics", "accuracy"],
         "metric 'accuracy' is unknown or not reported by both experiments; valid: objective, "
         "val_coarse_error"),
        ([str(cheap), str(expensive), "--match-on", "lr,colour"], "--match-on key 'colour' is unknown"),
        ([str(cheap), str(expensive), "--match-on", "lr,gamma"],
         "--match-on key 'gamma' is unset (null) in every trial of both experiments"),
        ([str(cheap), str(expensive), "--out", str(cheap / "search_spec.yaml")], "is a file: give a folder"),
    ]
    for argv, message in cases:
        assert transfer.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("python -m analysis.transfer: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(AnalysisError, match=r"valid: .*architecture.*\blr\b"):
        rank_transfer(cheap, expensive, match_on=["colour"])
    with pytest.raises(AnalysisError, match="scope 'middle' is unknown"):
        rank_transfer(cheap, expensive, scope="middle")
    assert transfer.main([str(cheap), str(expensive), "--seed", "-1"]) == 2
    assert "seed (-1) >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        transfer.main([str(cheap), str(expensive), "--bootstrap", "0"])
    assert exit_info.value.code == 2 and "'0' is not a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        transfer.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "exit status:" in help_text and "2  bad input" in help_text and "--include-stopped" in help_text
