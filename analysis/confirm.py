"""Seed-repeat confirmation of a finished search: ``hiercls-confirm EXPERIMENT --top K --seeds S`` (also
``python -m analysis.confirm``).

The best trial of a search is the luckiest draw of its configuration (the winner's curse). This command
takes the ``K`` best feasible trials of a finished search (ranked by its objective at the ``best`` scope,
constraints respected; a multi-objective search: the first ``K`` of its (top-1 error, mistake severity)
front, lowest error first) plus the cross-entropy baseline, and trains each again with ``S`` new training
seeds at the search's full length, on the search's own validation split (its ``split_seed``), as one Ray
Tune grid search (:mod:`hiercls.tune`: it runs on a cluster, resumes and packs trials like any search): the
configurations are the grid's ``points_to_evaluate`` and the grid is over ``seed``. Every run scores the
official **test** set once, after its last epoch (the search's ``evaluate_test``).

``EXPERIMENT/confirm/`` then holds:

* ``candidates.json``: the configurations (label, role ``baseline``/``candidate``, source trial, values)
  and the seeds; written first, so ``--resume`` needs nothing else;
* ``search/``: the Ray Tune experiment (``trial_*/`` with ``config.yaml``, ``all_epoch_results.json``,
  ``final_test_results.json``);
* ``runs.csv``: one row per run: label, role, source trial, seed, status, the last epoch's validation
  objective, and the last model's test metrics (fractions; LCA heights for the distances);
* ``table.csv``: per configuration, the mean, sample standard deviation and 95 % t-interval over seeds
  (Student 1908) of every test metric, the paired per-seed difference to the baseline (same seeds, same
  split) with its t-interval, and ``winner``: the configuration with the lowest mean validation objective
  over its seeds (chosen on validation; the test set is only reported). ``analysis.export`` exports it
  from a confirmed experiment; ``analysis.report`` writes the paper table.

Exit status: 0 done; 2 bad input (one line, nothing written); 3 a write failed; 130 interrupted (run the
same command with ``--resume``: finished runs are not run again).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.experiment import (
    FINISHED,
    AnalysisError,
    Experiment,
    Trial,
    load_experiment,
    run_cli,
    split_problem,
)
from analysis.rank import build_table
from analysis.stats import paired_t_interval, t_interval
from hiercls.experiment.layout import SPEC_FILE, TRIAL_INDEX, searched_values, trial_seed
from hiercls.storage import EXIT_OK, EXIT_WRITE, StorageError, atomic_write_text, describe_os_error

__all__ = ["CONFIRM_DIR", "TEST_METRICS", "build_parser", "candidates", "collect", "confirm_space", "main",
           "summarise"]

CONFIRM_DIR = "confirm"
"""The folder inside the experiment that a confirmation writes."""
SEARCH_NAME = "search"
"""The Ray Tune experiment's name inside ``confirm/``."""
TEST_METRICS = ("top1_error", "mistake_severity", "hdist@1", "hdist@5", "hdist@20", "coarse_error")
"""The test metrics of ``runs.csv`` (as ``test_<metric>``) and ``table.csv``, from
``final_test_results.json``'s ``metrics`` (the last epoch's model)."""
BASELINE_LOSS = "cross-entropy"
DEFAULT_TOP, DEFAULT_SEEDS = 2, 3


# ---------------------------------------------------------------------------------------------- choosing
def _values(trial: Trial) -> dict[str, Any]:
    """The trial's searched values, log-scale keys decoded, without the searcher's index."""
    return {k: v for k, v in searched_values(trial.params).items() if k != TRIAL_INDEX}


def _label(trial: Trial, values: Mapping[str, Any]) -> str:
    """``loss (key=value, ...)`` with numbers to 4 significant digits (the trial is in ``source_trial``)."""
    def short(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    shown = ", ".join(f"{k}={short(v)}" for k, v in values.items() if k != "loss")
    return f"{trial.loss}{f' ({shown})' if shown else ''}"


def _check_one_split(experiment: Experiment) -> None:
    """The search's finished trials must share one validation split, else their ranks (and the runs'
    common split) mean nothing (:func:`analysis.experiment.split_problem`).

    Raises:
        AnalysisError: the trials name several splits, or none (made before splits were recorded).
    """
    finished = [t for t in experiment.trials if t.status in FINISHED]
    problem = split_problem(finished, advice=False)
    if problem is None and any(t.val_split_sha256 is None for t in finished):
        problem = "made before hiercls recorded validation splits (no val_split_sha256)"
    if problem:
        raise AnalysisError(f"experiment {str(experiment.path)!r}: {problem}; confirm needs one split to "
                            "choose what to confirm (run the search again with one split_seed)")


def candidates(experiment: Experiment, top: int, baseline: str | None, no_baseline: bool
               ) -> list[dict[str, Any]]:
    """The configurations to confirm: the baseline first (role ``baseline``), then the ``top`` best
    feasible complete trials other than it (role ``candidate``), each as ``{label, role, source_trial,
    values, search_rank}`` (``search_rank``: 1 for the search's best trial, None for a baseline outside the
    ranking); trials with the same values count once. When the best trial is the baseline itself (the
    best cross-entropy trial, or the one ``--baseline`` names), the candidates are the next best.

    Raises:
        AnalysisError: no finished trial; trials on several validation splits; the named baseline is
            unknown or unfinished; no cross-entropy trial to be the baseline (and no ``--no-baseline``).
    """
    experiment.require_finished()
    _check_one_split(experiment)
    table = build_table(experiment, "best")
    ranked = table[table["compared"].astype(bool)]
    if experiment.spec.get("multi_objective"):
        ranked = ranked[ranked["pareto_index"].notna()].sort_values("pareto_index")
    trials = [experiment.trial(str(t)) for t in ranked["trial_id"]]
    base: Trial | None = None
    if baseline is not None:
        base = experiment.trial(baseline)
        if base.status != "complete":
            raise AnalysisError(f"--baseline {baseline}: the trial is {base.status}, not complete")
    elif not no_baseline:
        found = [t for t in trials if t.loss == BASELINE_LOSS]
        if not found:
            raise AnalysisError(f"experiment {str(experiment.path)!r} has no complete cross-entropy trial "
                                "to be the baseline: name one with --baseline TRIAL_ID, or pass "
                                "--no-baseline")
        base = found[0]
    rank = {t.trial_id: i + 1 for i, t in enumerate(trials)}  # 1: the search's best (or first on its front)
    out: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for trial, role in [*([(base, "baseline")] if base else []), *((t, "candidate") for t in trials)]:
        values = _values(trial)
        if values in seen:
            continue
        if role == "candidate" and sum(c["role"] == "candidate" for c in out) >= top:
            break
        seen.append(values)
        label = _label(trial, values)
        if any(c["label"] == label for c in out):  # equal at 4 digits, different values
            label += f" [trial {trial.trial_id}]"
        out.append({"label": label, "role": role, "source_trial": trial.trial_id, "values": values,
                    "search_rank": rank.get(trial.trial_id)})
    return out


def confirm_space(experiment: Experiment, chosen: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                  overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The confirmation's search spec: the search's own settings and fixed keys, the chosen configurations
    as ``points_to_evaluate``, a grid over ``seed``, every run to its end (``scheduler: none``), the same
    ``split_seed``, and ``evaluate_test: true``. ``overrides``: ``address``, ``max_concurrent``."""
    spec = experiment.spec
    keep = ("epochs", "objective", "seed", "data_dir", "cpus_per_trial", "gpus_per_trial", "max_concurrent",
            "max_failures", "address", "train")
    space = {k: spec[k] for k in keep if spec.get(k) is not None}
    split = spec.get("split_seed")
    space.update(name=SEARCH_NAME, searcher="grid", scheduler="none", evaluate_test=True,
                 split_seed=spec.get("seed", 0) if split is None else split,
                 search={"seed": {"type": "grid", "values": list(seeds)}},
                 points_to_evaluate=[dict(c["values"]) for c in chosen])
    space.update({k: v for k, v in overrides.items() if v is not None})
    return space


# ---------------------------------------------------------------------------------------------- results
def _test_metrics(trial: Trial) -> dict[str, float]:
    path = trial.path / "final_test_results.json" if trial.path is not None else None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"] if path else {}
    except (OSError, ValueError, KeyError, TypeError):
        metrics = {}
    return {f"test_{m}": float(metrics.get(m, math.nan)) for m in TEST_METRICS}


def collect(confirm: Path, chosen: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``runs.csv``'s rows: every run of ``confirm/search`` matched to its configuration (its config holds
    the configuration's values) with its seed, status, last validation objective and test metrics."""
    runs = load_experiment(confirm / SEARCH_NAME)
    rows = []
    for trial in runs.trials:
        config = trial.config or {}
        match = [c for c in chosen if all(config.get(k) == v for k, v in c["values"].items())]
        if not match:
            continue
        last = trial.records[-1] if trial.records else {}
        objective = runs.objective(last) if last else math.nan
        rows.append({"label": match[0]["label"], "role": match[0]["role"],
                     "source_trial": match[0]["source_trial"], "seed": config.get("seed"),
                     "status": trial.status, "val_objective": objective, **_test_metrics(trial),
                     "trial_id": trial.trial_id, "path": str(trial.path)})
    order = {c["label"]: i for i, c in enumerate(chosen)}
    frame = pd.DataFrame(rows, columns=["label", "role", "source_trial", "seed", "status", "val_objective",
                                        *(f"test_{m}" for m in TEST_METRICS), "trial_id", "path"])
    return frame.sort_values(["label", "seed"], key=lambda s: s.map(order) if s.name == "label" else s,
                             kind="stable").reset_index(drop=True)


def summarise(runs: pd.DataFrame, chosen: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``table.csv``: per configuration, ``n_seeds`` (finished runs), for each test metric ``m`` its
    ``m_mean``, ``m_std`` (ddof 1), ``m_ci_low`` and ``m_ci_high`` (95 % t-interval over seeds:
    :func:`analysis.stats.t_interval`; NaN with one seed), and for candidates ``diff_m_mean``,
    ``diff_m_ci_low``, ``diff_m_ci_high`` (:func:`analysis.stats.paired_t_interval` of candidate minus
    baseline over the seeds both finished) and ``diff_m_std`` (their standard deviation over seeds: what
    :func:`analysis.stats.seeds_needed` takes); ``val_objective_mean``; ``winner`` (lowest
    ``val_objective_mean``; of equal means the first, the baseline first) and ``tied_winner`` (another
    configuration with the winner's mean)."""
    done = runs[runs["status"] == "complete"]
    base = next((c["label"] for c in chosen if c["role"] == "baseline"), None)
    base_runs = done[done["label"] == base] if base else None
    rows = []
    for c in chosen:
        mine = done[done["label"] == c["label"]]
        row: dict[str, Any] = {"label": c["label"], "role": c["role"], "source_trial": c["source_trial"],
                               "n_seeds": len(mine)}
        for m in TEST_METRICS:
            values = mine[f"test_{m}"].to_numpy(dtype=float)
            stats = t_interval(values) if len(values) else (math.nan,) * 4
            row.update({f"{m}_mean": stats[0], f"{m}_std": stats[1], f"{m}_ci_low": stats[2],
                        f"{m}_ci_high": stats[3]})
            if c["role"] == "candidate" and base_runs is not None:
                paired = mine.merge(base_runs, on="seed", suffixes=("", "_base"))  # the same seeds
                a, b = paired[f"test_{m}"].to_numpy(float), paired[f"test_{m}_base"].to_numpy(float)
                diff = paired_t_interval(a, b) if len(a) else (math.nan,) * 4
                row.update({f"diff_{m}_mean": diff[0], f"diff_{m}_std": diff[1], f"diff_{m}_ci_low": diff[2],
                            f"diff_{m}_ci_high": diff[3]})
        row["val_objective_mean"] = float(mine["val_objective"].mean()) if len(mine) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    finite = table["val_objective_mean"].notna()
    table["winner"] = False
    if finite.any():  # the first of equal means (the baseline first): no configuration beat it
        table.loc[table.loc[finite, "val_objective_mean"].idxmin(), "winner"] = True
    best = table.loc[finite, "val_objective_mean"].min() if finite.any() else math.nan
    table["tied_winner"] = finite & (table["val_objective_mean"] == best) & ~table["winner"]
    return table


# ---------------------------------------------------------------------------------------------- the CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.confirm",
        description="Train the K best configurations of a finished search and its cross-entropy baseline "
        "again with S new seeds each, on the search's validation split, as one Ray Tune grid; score every "
        "run once on the test set; write EXPERIMENT/confirm/ (runs.csv, table.csv). Exit status: 0 done, "
        "2 bad input, 3 a write failed, 130 interrupted (rerun with --resume).")
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR",
                        help="the finished search (STORAGE_PATH/NAME)")
    parser.add_argument("--top", type=int, default=None,
                        help=f"configurations to confirm besides the baseline (default {DEFAULT_TOP})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"new training seeds per configuration, at least 2 for an interval (default "
                        f"{DEFAULT_SEEDS}; the field reports 3-5)")
    parser.add_argument("--baseline", metavar="TRIAL_ID", help="the baseline trial (default: the best "
                        "complete cross-entropy trial)")
    parser.add_argument("--no-baseline", action="store_true", help="confirm without a baseline (no paired "
                        "differences)")
    parser.add_argument("--resume", action="store_true", help="continue a confirmation that was interrupted "
                        "(finished runs are not run again)")
    parser.add_argument("--address", help="a Ray cluster to run on (default: the search's)")
    parser.add_argument("--max-concurrent", type=int, help="runs at a time (default: the search's)")
    parser.add_argument("--trust-experiment", action="store_true", help="as tune_main.py's, for --resume")
    parser.add_argument("--trainable", choices=("train", "toy"), default=None,
                        help="the runs' trainable (default: the search's own; toy: the tests' stand-in)")
    parser.add_argument("--toy-sleep", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    return run_cli(build_parser(), argv, _confirm)


def _check_args(args: argparse.Namespace, confirm: Path) -> None:
    """Raises: AnalysisError: a bad number, or a confirm folder that exists (new) or does not (resume)."""
    if args.top is not None and args.top < 1:
        raise AnalysisError(f"--top {args.top}: confirm at least 1 configuration besides the baseline")
    if args.seeds is not None and args.seeds < 2:
        raise AnalysisError(f"--seeds {args.seeds}: fewer than 2 seeds give no interval and no paired "
                            "test; use at least 2 (3 to 5 as the field reports), or train the configuration "
                            "once with python -m hiercls.train")
    if args.no_baseline and args.baseline:
        raise AnalysisError("--baseline and --no-baseline exclude each other")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise AnalysisError(f"--max-concurrent {args.max_concurrent}: must be at least 1")
    if not args.resume and confirm.exists():
        raise AnalysisError(f"{str(confirm)!r} already exists: pass --resume to continue that confirmation "
                            "(finished runs are kept), or move it away to start again")
    if args.resume and not (confirm / "candidates.json").is_file():
        raise AnalysisError(f"nothing to resume: {str(confirm / 'candidates.json')!r} does not exist")
    if args.resume and (args.top is not None or args.seeds is not None or args.baseline or args.no_baseline):
        raise AnalysisError("--resume continues the confirmation planned in confirm/candidates.json: --top, "
                            "--seeds and the baseline cannot change (move confirm/ away to plan another)")


def _confirm(args: argparse.Namespace) -> int:
    from hiercls.tune.cli import main as tune_main  # Ray and the search stay out of --help and input errors

    experiment = load_experiment(Path(args.experiment).resolve())
    confirm = experiment.path / CONFIRM_DIR
    _check_args(args, confirm)
    tune_args = ["--storage-path", str(confirm), "--name", SEARCH_NAME]
    trainable = args.trainable or str(experiment.spec.get("trainable") or "train")  # the search's own
    tune_args += ["--toy-sleep", str(args.toy_sleep)] if args.toy_sleep else []
    tune_args += ["--trust-experiment"] if args.trust_experiment else []
    if args.resume:
        plan = json.loads((confirm / "candidates.json").read_text(encoding="utf-8"))
        chosen, seeds = plan["candidates"], plan["seeds"]
        if (confirm / SEARCH_NAME / SPEC_FILE).is_file():
            tune_args.append("--resume")
        else:  # interrupted before the search saved its spec: start it
            tune_args += ["--space", str(confirm / "space.yaml"), "--trainable", trainable]
    else:
        top, count = args.top or DEFAULT_TOP, args.seeds or DEFAULT_SEEDS
        chosen = candidates(experiment, top, args.baseline, args.no_baseline)
        found = sum(c["role"] == "candidate" for c in chosen)
        if found < top:
            print(f"note: --top {top}, but the search has {found} distinct feasible complete "
                  "configuration(s) besides the baseline: confirming those")
        seeds = [trial_seed(int(experiment.spec.get("seed", 0)), f"confirm-{j}") for j in range(count)]
        space = confirm_space(experiment, chosen, seeds, {"address": args.address,
                                                          "max_concurrent": args.max_concurrent})
        try:
            confirm.mkdir(parents=True)
            atomic_write_text(confirm / "candidates.json",
                              json.dumps({"candidates": chosen, "seeds": seeds}, indent=2))
            atomic_write_text(confirm / "space.yaml", yaml.safe_dump(space, sort_keys=False))
        except OSError as err:
            print(f"python -m analysis.confirm: error: {describe_os_error(err, err.filename or confirm)}",
                  file=sys.stderr)
            return EXIT_WRITE
        tune_args += ["--space", str(confirm / "space.yaml"), "--trainable", trainable]
        print(f"confirming {len(chosen)} configuration(s) x {len(seeds)} seeds "
              f"({len(chosen) * len(seeds)} runs) in {confirm}:")
        for c in chosen:
            print(f"  {c['role']}: {c['label']}" + (f" (search rank {c['search_rank']})" if c["search_rank"]
                                                   else ""))
        if chosen[0]["role"] == "baseline" and chosen[0]["search_rank"] == 1:
            print("note: the search's best trial is the baseline itself; the candidates are the next best")
    status = tune_main(tune_args)
    if status != EXIT_OK:
        if status == 130:
            print(f"python -m analysis.confirm: resume with: python -m analysis.confirm {experiment.path} "
                  "--resume (hiercls-confirm ... --resume; not the tune_main.py line above, which would not "
                  "write runs.csv and table.csv)", file=sys.stderr)
        return status
    return _write_results(confirm, chosen)


def _write_results(confirm: Path, chosen: Sequence[Mapping[str, Any]]) -> int:
    runs = collect(confirm, chosen)
    table = summarise(runs, chosen)
    try:
        atomic_write_text(confirm / "runs.csv", runs.to_csv(index=False))
        atomic_write_text(confirm / "table.csv", table.to_csv(index=False))
    except StorageError as err:
        print(f"python -m analysis.confirm: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    for _, row in table.iterrows():
        spread = f" ± {row['top1_error_std']:.4f} (std)" if row["n_seeds"] > 1 else ""
        mark = ("  <- winner (lowest mean validation objective)" if row["winner"] else
                "  (ties the winner's mean validation objective)" if row["tied_winner"] else "")
        print(f"{row['role']:9s} {row['label']}: test top-1 error {row['top1_error_mean']:.4f}{spread}, "
              f"mistake severity {row['mistake_severity_mean']:.4f}, {row['n_seeds']} seeds{mark}")
    print(f"wrote {confirm / 'runs.csv'} and {confirm / 'table.csv'}; the paper table: python -m "
          f"analysis.report {confirm.parent}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
