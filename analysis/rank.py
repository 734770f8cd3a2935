"""Rank the trials of a search and mark the Pareto-optimal ones: ``python -m analysis.rank``.

::

    python -m analysis.rank runs/tune/joint                    # scope best, writes runs/tune/joint/analysis/
    python -m analysis.rank runs/tune/joint --scope last --out results/joint-last --include-stopped

One row per trial (:func:`build_table`), written as ``trials.csv`` (every column) and ``trials.md`` (a
readable table), plus the plots of :mod:`analysis.plots`; the best rows are printed.

Damaged trial files (empty, torn or corrupt ``params.json``, ``result.json``, ``all_epoch_results.json``,
``config.yaml``; see :mod:`analysis.experiment` for what is used instead) are printed on stderr, one
``warning: trial ID: FILE: WHAT; CONSEQUENCE`` line each, before the table; the trial's status is
followed by ``(!)`` in the printed table and ``trials.md`` (which lists them under "Problems"), and
``trials.csv`` has them in its ``problems`` column. The other trials are ranked as usual; only an
unusable experiment (no spec, no finished trial) stops the command (one line, exit 2).

Trials validated on different images (several ``val_split_sha256``, or trials of a hiercls before it was
recorded: :func:`analysis.experiment.split_problem`) are refused in one line (exit 2, nothing written)
unless ``--allow-mixed-splits``; ``--split PREFIX`` ranks the trials of one split (:func:`select_split`).

With saved per-image predictions (:mod:`hiercls.evidence`) of the selected epochs, the table gains 95 %
percentile bootstrap intervals (``--bootstrap N`` resamples, default 2000, 0 for none; ``--bootstrap-seed``),
paired tests against the best-ranked trial and the cross-entropy baseline on the same images, the
``tied_with_best`` column and the resolved Pareto fronts (:func:`add_statistics`).

Units: errors are fractions in 0..1 (``val_top1_error`` 0.25 = 25 %); mistake severity and the
hierarchical distances are in LCA-height units of the search's hierarchy (0 = same class).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.experiment import (
    SHORT_SPLIT,
    AnalysisError,
    Experiment,
    Trial,
    load_experiment,
    run_cli,
    searched_params,
    split_problem,
    trial_objective,
)
from analysis.pareto import PARETO_PAIRS, pareto_front
from analysis.significance import (
    ALPHA,
    DEFAULT_BOOTSTRAP,
    INTERVAL_METRICS,
    LEVEL,
    STAT_COLUMNS,
    add_statistics,
    load_evidence,
)
from hiercls.experiment.layout import pareto_mask
from hiercls.registry import TRAINING_PARAMS, param_registries
from hiercls.tune.constraints import (
    constraint_values,
    is_feasible,
    merge_bounds,
    parse_constraint,
    read_bounds,
)

__all__ = [
    "METRICS",
    "METRIC_COLUMNS",
    "PARETO_PAIRS",
    "SCOPES",
    "STAT_COLUMNS",
    "add_statistics",
    "build_table",
    "check_splits",
    "display_rows",
    "load_evidence",
    "main",
    "markdown_table",
    "pareto_front",
    "pareto_mask",
    "print_warnings",
    "select_record",
    "select_split",
    "statistics_text",
]

SCOPES = ("best", "last")
METRICS = (
    "val_top1_error", "val_mistake_severity", "val_hdist@1", "val_hdist@5", "val_hdist@20",
    "val_coarse_error",
)
CRM_METRICS = tuple("val_crm/" + m.removeprefix("val_") for m in METRICS)
METRIC_COLUMNS = METRICS + CRM_METRICS
RANKS = {"rank_objective": "objective", "rank_top1_error": "val_top1_error",
         "rank_mistake_severity": "val_mistake_severity"}
"""The rank columns and the column each ranks by; the table is sorted by the first: the search's own
objective (:attr:`Experiment.objective_text`)."""
DEFAULT_OUT = "analysis"  # inside the experiment folder
PROBLEM_SEPARATOR = " | "  # between a trial's problems in the problems column
DAMAGED = " (!)"  # after the status of a trial with problems, in the readable tables

# ---------------------------------------------------------------------------------------------- selection
def select_record(
    trial: Trial, objective: Callable[[Mapping[str, Any]], float], scope: str,
    bounds: Mapping[str, float] | None = None,
) -> dict[str, Any] | None:
    """The record the scope selects: ``best`` = the epoch with the lowest objective (the earliest among
    equals; NaN epochs never chosen; with ``bounds``, among the epochs that meet them when there are
    any), ``last`` = the last epoch reported. None when there is none.

    Raises:
        AnalysisError: an unknown scope.
    """
    if scope not in SCOPES:
        raise AnalysisError(f"scope {scope!r} is unknown; valid: {', '.join(SCOPES)}")
    if not trial.records:
        return None
    if scope == "last":
        return trial.records[-1]
    records = trial.records
    if bounds:
        feasible = [r for r in records if is_feasible(constraint_values(r, bounds))]
        records = feasible or records
    best, best_value = None, math.inf
    for r in records:
        value = trial_objective(objective, r)
        if math.isfinite(value) and value < best_value:
            best, best_value = r, value
    return best


def _taken_keys(name: str | None, kind: str) -> list[str]:
    """The config keys the loss (``kind="loss"``) or schedule (``kind="schedule"``) ``name`` takes, in
    the config's order; none for an unknown or missing name."""
    registry = param_registries()["loss" if kind == "loss" else "lr_schedule"]
    return list(registry.params(name)) if name and name in registry else []


def _param_keys(trial: Trial) -> tuple[list[str], list[str]]:
    """The loss parameters and schedule parameters the trial's loss and schedule take."""
    return _taken_keys(trial.loss, "loss"), _taken_keys(trial.lr_schedule, "schedule")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def searched_keys(spec: Mapping[str, Any]) -> list[str]:
    """Every key searched in the spec (branch parameters included; fixed values in branches excluded)."""
    return list(dict.fromkeys(p.name for p in searched_params(spec)))


def build_table(
    experiment: Experiment,
    scope: str = "best",
    include_stopped: bool = False,
    *,
    require_finished: bool = True,
    bounds: Mapping[str, float] | None = None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    baseline: str | None = None,
) -> pd.DataFrame:
    """One row per trial, best first (by ``rank_objective``).

    Columns: ``trial_id``; ``status`` (complete, stopped early, unfinished, nan, error); ``loss`` and the
    parameters it takes (``alpha``, ``beta``, ...; empty for other losses); ``lr_schedule`` and its
    parameters; ``lr``, ``weight_decay`` and any other searched key; ``seed``; ``val_split`` (the first 12
    hex characters of the trial's ``val_split_sha256``, :attr:`Trial.val_split_sha256`: the identity of its
    validation images; empty for a trial of a hiercls before it was recorded); ``epochs_run`` and
    ``epochs`` (configured); ``scope``; ``epoch`` (the epoch the scope selected: ``best`` = lowest
    search objective, ``last`` = last reported); ``objective`` (the search objective at that epoch; for a
    multi-objective search val_top1_error); the val metrics at that epoch (:data:`METRIC_COLUMNS`:
    top-1 error, mistake severity, hdist@1/5/20, coarse error as fractions or LCA heights, and their
    ``val_crm/`` variants); ``compared`` (whether the row takes part in ranks and fronts: complete
    trials, plus stopped-early and unfinished ones with ``include_stopped``); ``rank_objective`` (by the
    ``objective`` column: the search's objective as its ``search_spec.yaml`` records it, top-1 error for a
    multi-objective search or a spec without one), ``rank_top1_error`` and ``rank_mistake_severity`` (1 =
    best, ties share a rank; empty outside the compared rows, which in a constrained search exclude the
    infeasible ones);
    ``pareto_error_severity`` and ``pareto_error_hdist5`` (on the front of the compared rows on
    (top-1 error, severity) / (top-1 error, hdist@5)); ``pareto_index`` (position on the first front
    sorted by top-1 error, from 0: what ``analysis.export --rank-by pareto:INDEX`` takes);
    ``duplicates`` (repeated epoch records dropped); ``error``; ``problems`` (the trial's damaged files
    and unknown values, ``FILE: WHAT; CONSEQUENCE`` joined by `` | ``, empty when none: see
    :mod:`analysis.experiment`; a searched value no file could give is an empty cell, never a
    default); ``path``. With ``bounds`` (``{metric: bound}``; default: a constrained search's own, from
    its ``constraints.json``): ``feasible`` (every bounded metric at the selected epoch ``<=`` its bound,
    the ``best`` scope choosing among the epochs that meet them; judged for the trials that ran in full,
    or every compared one; empty otherwise) and ``constraint/<metric>`` (value - bound;
    ``<= 0`` is feasible), and ``table.attrs["constraint_bounds"]`` (for the plots).

    After ``pareto_index``, the per-image statistics columns :data:`STAT_COLUMNS`, computed with
    ``bootstrap`` >= 1 resamples from the trials' saved predictions of the selected epoch (see
    :func:`add_statistics` for their definitions); with ``bootstrap`` 0 (the default here: export and the
    plots of other tools need no statistics) they are NaN / NA and ``table.attrs["statistics"]`` is None.

    Args:
        bootstrap: resamples of the validation images (0: no statistics).
        bootstrap_seed: seed of the resampling (the same seed gives the same intervals).
        baseline: the trial the ``vs_baseline_`` columns compare with (default: the best-ranked compared
            complete cross-entropy trial).

    Raises:
        AnalysisError: unknown scope; no trial is complete or stopped early (unless not
            ``require_finished``); an unreadable ``constraints.json``; an unknown ``baseline`` trial;
            ``bootstrap`` < 0.
    """
    if scope not in SCOPES:
        raise AnalysisError(f"scope {scope!r} is unknown; valid: {', '.join(SCOPES)}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise AnalysisError(f"bootstrap must be a whole number >= 0 (0: no intervals), got {bootstrap!r}")
    if require_finished or not experiment.trials:
        experiment.require_finished()
    searched = searched_keys(experiment.spec)
    if bounds is None:
        bounds = search_bounds(experiment)
    loss_cols: list[str] = []
    sched_cols: list[str] = []
    rows = []
    for trial in experiment.trials:
        loss_keys, sched_keys = _param_keys(trial)
        loss_cols += [k for k in loss_keys if k not in loss_cols]
        sched_cols += [k for k in sched_keys if k not in sched_cols]
        config = trial.config or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status, "loss": trial.loss,
                               "family": trial.family}
        for k in loss_keys:
            row[k] = _plain(config.get(k, trial.params.get(k)))
        row["lr_schedule"] = trial.lr_schedule
        for k in sched_keys:
            row[k] = _plain(config.get(k, trial.params.get(k)))
        for k in (*TRAINING_PARAMS, "weight_decay", *searched):
            if k not in row and k not in ("loss", "lr_schedule"):
                row[k] = _plain(trial.params.get(k, config.get(k)))
        row["seed"] = trial.seed
        row["val_split"] = trial.val_split_sha256[:SHORT_SPLIT] if trial.val_split_sha256 else None
        row["epochs_run"] = trial.epochs_run
        row["epochs"] = trial.epochs
        row["scope"] = scope
        record = select_record(trial, experiment.objective, scope, bounds)
        row["epoch"] = int(record["epoch"]) if record is not None else None
        row["objective"] = trial_objective(experiment.objective, record) if record is not None else math.nan
        for m in METRIC_COLUMNS:
            value = (record or {}).get(m)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            row[m] = float(value) if number else math.nan
        partial = trial.status in ("stopped early", "unfinished")
        compared = trial.status == "complete" or (include_stopped and partial)
        if bounds:
            # judged where the search judges: trials that ran in full (and partial ones if compared);
            # a trial that breaks a bound takes no part in the ranks and fronts
            values = constraint_values(record, bounds) if record is not None and compared else None
            row["feasible"] = is_feasible(values)
            compared = compared and row["feasible"] is not False
            for metric in bounds:
                row[f"constraint/{metric}"] = (values or {}).get(metric, math.nan)
        row["compared"] = compared
        row["duplicates"] = trial.duplicates
        row["error"] = trial.error
        row["problems"] = PROBLEM_SEPARATOR.join(trial.problems) if trial.problems else None
        row["path"] = str(trial.path) if trial.path is not None else None
        rows.append(row)

    df = pd.DataFrame(rows)
    others = [c for c in df.columns if c not in ("trial_id", "status", "loss", "family", "lr_schedule",
                                                 *loss_cols, *sched_cols)]
    param_cols = [c for c in others if c in (*TRAINING_PARAMS, "weight_decay", *searched)]
    rest = [c for c in others if c not in param_cols]
    df = df[["trial_id", "status", "loss", "family", *loss_cols, "lr_schedule", *sched_cols, *param_cols,
             *rest]]
    df["epoch"] = df["epoch"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")  # unknown for a trial whose config is lost
    compared = df["compared"].to_numpy(dtype=bool)
    for col, metric in RANKS.items():
        values = df[metric].where(df["compared"])
        df[col] = values.rank(method="min").astype("Int64")
    for col, pair in PARETO_PAIRS.items():
        pts = df[list(pair)].to_numpy(dtype=float, copy=True)
        pts[~compared] = np.nan
        df[col] = pareto_mask(pts)
    df["pareto_index"] = pd.array([pd.NA] * len(df), dtype="Int64")
    for i, idx in enumerate(pareto_front(df).index):
        df.loc[idx, "pareto_index"] = i
    judged = ["feasible", *[f"constraint/{m}" for m in bounds]] if bounds else []
    order = [*df.columns[: df.columns.get_loc("compared")], "compared", *judged, *RANKS, *PARETO_PAIRS,
             "pareto_index", "duplicates", "error", "problems", "path"]
    df = df[list(dict.fromkeys(order))]
    if bounds:
        df["feasible"] = df["feasible"].astype("boolean")
        df.attrs["constraint_bounds"] = dict(bounds)
    df["_unranked"] = df["rank_objective"].isna()
    keys = ["_unranked", *RANKS, "val_top1_error", "trial_id"]
    df = df.sort_values(keys, na_position="last", kind="stable").drop(columns="_unranked")
    return add_statistics(df.reset_index(drop=True), experiment, bootstrap, bootstrap_seed, baseline)


def select_split(experiment: Experiment, prefix: str) -> Experiment:
    """The experiment with only the trials whose ``val_split_sha256`` starts with ``prefix`` (hex,
    case-insensitive; ``--split``).

    Raises:
        AnalysisError: ``prefix`` is not hex, matches no trial's split (the splits are listed), or matches
            several splits (a longer prefix is needed).
    """
    wanted = prefix.strip().lower()
    splits: dict[str, int] = {}
    for t in experiment.trials:
        if t.val_split_sha256:
            splits[t.val_split_sha256] = splits.get(t.val_split_sha256, 0) + 1
    listed = ", ".join(f"{h[:SHORT_SPLIT]} ({k} trial{'s' if k > 1 else ''})" for h, k in splits.items())
    if not re.fullmatch(r"[0-9a-f]{1,64}", wanted):
        raise AnalysisError(f"--split {prefix!r} is not a hex prefix of a val_split_sha256; splits: "
                            f"{listed or 'none recorded'}")
    matching = [h for h in splits if h.startswith(wanted)]
    if len(matching) != 1:
        what = "matches no" if not matching else f"matches {len(matching)}"
        listed = listed or "none recorded (a search of a hiercls before val_split_sha256)"
        raise AnalysisError(f"--split {prefix!r} {what} validation split of {str(experiment.path)!r}; "
                            f"splits: {listed}")
    return dataclasses.replace(experiment, trials=[t for t in experiment.trials
                                                    if t.val_split_sha256 == matching[0]])


def check_splits(experiment: Experiment, include_stopped: bool = False, allow_mixed: bool = False
                 ) -> str | None:
    """Refuse to rank trials validated on different images (:func:`analysis.experiment.split_problem`)
    among the trials a ranking compares (complete ones; with ``include_stopped`` also stopped-early and
    unfinished ones).

    Returns:
        None when they share one split; the problem (one line, without the advice) when ``allow_mixed``.

    Raises:
        AnalysisError: the one-line problem, when they do not share one and not ``allow_mixed``.
    """
    partial = ("stopped early", "unfinished") if include_stopped else ()
    trials = [t for t in experiment.trials if t.status == "complete" or t.status in partial]
    problem = split_problem(trials, advice=not allow_mixed)
    if problem is not None and not allow_mixed:
        raise AnalysisError(problem)
    return problem


def search_bounds(experiment: Experiment) -> dict[str, float] | None:
    """A constrained search's bounds (``constraints.json`` in its folder), None for an unconstrained one
    or one whose baseline trial never finished.

    Raises:
        AnalysisError: the file is unreadable (the message names it).
    """
    saved = _saved_constraints(experiment)
    return saved["bounds"] if saved else None


def _saved_constraints(experiment: Experiment) -> dict[str, Any] | None:
    """The experiment's ``constraints.json`` (:func:`hiercls.tune.constraints.read_bounds`).

    Raises:
        AnalysisError: the file is unreadable (the message names it).
    """
    try:
        return read_bounds(experiment.path)
    except ValueError as err:
        raise AnalysisError(str(err)) from err


def resolve_bounds(experiment: Experiment, texts: Sequence[str], baseline: str | None,
                   scope: str) -> dict[str, float] | None:
    """Bounds from ``--constraint`` lines: numbers, or relative to the ``--baseline`` trial's values at
    the scope's epoch (default: the search's own baseline values from ``constraints.json``). None when no
    line is given (the search's own bounds then apply).

    Raises:
        AnalysisError: a bad line (the valid forms listed), an unknown baseline trial, or a relative
            line without a baseline.
    """
    if not texts:
        return None
    try:
        constraints = [parse_constraint(t) for t in texts]
    except ValueError as err:
        raise AnalysisError(str(err)) from err
    values: dict[str, float] | None = None
    if baseline is not None:
        record = select_record(experiment.trial(baseline), experiment.objective, scope)
        values = {k: float(v) for k, v in (record or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
    else:
        values = ((_saved_constraints(experiment) or {}).get("baseline") or {}).get("values")
    try:
        return merge_bounds(constraints, values)
    except ValueError as err:
        where = ("the search's recorded baseline values cover only its own constrained metrics"
                 if baseline is None and values else "no baseline is known")
        raise AnalysisError(f"{err} ({where}); name the baseline trial with --baseline TRIAL_ID") from err


# ---------------------------------------------------------------------------------------------- text output
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def _param_text(row: Mapping[str, Any], name: str | None, kind: str) -> str:
    if _missing(name) or not name:  # unknown (a damaged trial's lost searched value): an empty cell
        return ""
    parts = []
    for k in _taken_keys(name, kind):
        if k in row and not _missing(row[k]):
            v = row[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, (float, np.floating)) else f"{k}={v}")
    return name + (f" ({' '.join(parts)})" if parts else "")


def _missing(value: Any) -> bool:
    try:
        return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


DISPLAY = [
    ("#", None), ("sev#", "rank_mistake_severity"), ("trial", "trial_id"), ("status", "status"),
    ("loss (parameters)", None),
    ("schedule (parameters)", None), ("lr", "lr"), ("epoch", None), ("top1_err", "val_top1_error"),
    ("severity", "val_mistake_severity"), ("hdist@1", "val_hdist@1"), ("hdist@5", "val_hdist@5"),
    ("coarse_err", "val_coarse_error"), ("crm top1_err", "val_crm/top1_error"),
    ("crm severity", "val_crm/mistake_severity"), ("front err/sev", None), ("front err/h@5", None),
    ("feasible", "feasible"),
]


STAT_DISPLAY = [("tied", "tied_with_best"), ("resolved front", "pareto_resolved")]
"""The readable tables' columns of the per-image statistics, shown when the table has any."""


def _known(table: pd.DataFrame, column: str) -> bool:
    return column in table.columns and bool(table[column].notna().any())


def _with_interval(row: Mapping[str, Any], metric: str) -> str:
    """``0.412 [0.398, 0.426]`` (value and its interval) when the row has the interval, else the value."""
    low, high, value = row.get(f"{metric}_low"), row.get(f"{metric}_high"), row[metric]
    if _missing(low) or _missing(high) or _missing(value):
        return _fmt(value)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _tied_text(row: Mapping[str, Any], best: str | None) -> str:
    value = row.get("tied_with_best")
    if _missing(value):
        return ""
    return "best" if row["trial_id"] == best else ("yes" if value else "no")


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the readable table (Markdown and console): the ranks by the search's
    objective (#, :func:`rank_text` says which) and by mistake severity (sev#), the status (followed by
    ``(!)`` when the trial has problems: damaged files or unknown values, listed in the ``problems``
    column), loss and schedule with their parameters, lr, ``epoch`` as selected/run/configured, the main
    metrics (top-1 error, severity and hdist@5 as ``value [low, high]`` where the table has their
    intervals: :func:`add_statistics`), the front memberships (``*`` on the front; the (error, severity)
    front shows its ``pareto:INDEX``), and, where the table has them, ``tied`` (``best`` for the
    best-ranked trial, ``yes`` when tied_with_best, ``no`` when resolved worse, empty when unknown) and
    ``resolved front`` (``*`` on the (error, severity) resolved front)."""
    shown = [(h, c) for h, c in DISPLAY if c != "feasible" or "feasible" in table.columns]
    shown += [(h, c) for h, c in STAT_DISPLAY if _known(table, c)]
    best = (table.attrs.get("statistics") or {}).get("best")
    header = [h for h, _ in shown]
    body = []
    for _, row in table.iterrows():
        cells = []
        for head, col in shown:
            if head == "#":
                cells.append(_fmt(row["rank_objective"]))
            elif head == "loss (parameters)":
                text = _param_text(row, row["loss"], "loss")
                family = row.get("family")
                # the method where the loss alone does not say it (B&D or DeViSE embeddings)
                prefix = family.split(" ")[0] + " " if isinstance(family, str) and family.endswith(
                    f" {row['loss']}") else ""
                cells.append(prefix + text)
            elif head == "schedule (parameters)":
                cells.append(_param_text(row, row["lr_schedule"], "schedule"))
            elif head == "epoch":
                cells.append(f"{_fmt(row['epoch'])} ({row['epochs_run']}/{row['epochs']})")
            elif head == "front err/sev":
                cells.append(f"* pareto:{row['pareto_index']}" if row["pareto_error_severity"] else "")
            elif head == "status":
                damaged = "problems" in row and not _missing(row["problems"]) and row["problems"]
                cells.append(str(row["status"]) + (DAMAGED if damaged else ""))
            elif head == "front err/h@5":
                cells.append("*" if row["pareto_error_hdist5"] else "")
            elif col == "feasible":
                value = None if _missing(row[col]) else bool(row[col])
                cells.append({True: "yes", False: "NO"}.get(value, ""))
            elif col == "lr":
                cells.append(f"{row['lr']:.4g}" if "lr" in row and not _missing(row["lr"]) else "")
            elif col in INTERVAL_METRICS:
                cells.append(_with_interval(row, col))
            elif col == "tied_with_best":
                cells.append(_tied_text(row, best))
            elif col == "pareto_resolved":
                cells.append("" if _missing(row[col]) else "*" if row[col] else "")
            else:
                cells.append(_fmt(row[col]))
        body.append(cells)
    return header, body


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table ("|" in cells escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in body)])


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Aligned text lines."""
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body]]


def rank_text(experiment: Experiment) -> str:
    """What the first rank column (#) ranks by, and why (the readable tables' header)."""
    return f"# ranks by {experiment.objective_text} ({experiment.objective_source})"


def _scope_text(experiment: Experiment, scope: str) -> str:
    if scope == "best":
        return f"best (each trial's epoch with the lowest {experiment.objective_text})"
    return "last (each trial's last epoch)"


def statistics_text(table: pd.DataFrame) -> list[str]:
    """What the table's intervals and tests are (header lines of the readable tables); none when the table
    has no per-image statistics (``--bootstrap 0``, or no trial with saved predictions)."""
    info = table.attrs.get("statistics")
    if not info or not info["images"]:
        return []
    images = " or ".join(f"{k:,}" for k in info["images"])
    best, base = info["best"] or "none", info["baseline"] or "none"
    return [
        f"Intervals: {LEVEL:.0%} percentile bootstrap over {images} validation images ({info['n_boot']} "
        f"resamples, seed {info['seed']}) at each trial's selected epoch, shown as value [low, high].",
        f"tied: indistinguishable from the best-ranked trial {best} on the same images (McNemar's exact "
        f"p >= {ALPHA} for top-1 error, and paired {LEVEL:.0%} bootstrap intervals of the severity and "
        "hdist@5 differences containing 0); resolved front: no other compared trial has both fewer top-1 "
        f"mistakes (p < {ALPHA}) and a paired severity-difference interval below 0; the vs_baseline columns "
        f"of trials.csv compare with trial {base}.",
    ]


def write_outputs(
    experiment: Experiment, table: pd.DataFrame, out: Path, scope: str, include_stopped: bool,
    split_warning: str | None = None,
) -> list[Path]:
    """``trials.csv`` and ``trials.md`` in ``out`` (the Markdown says what the intervals are,
    :func:`statistics_text`; it ends with "Notes" on the statistics and a "Problems" list when any file is
    damaged: :meth:`Experiment.warnings`); ``split_warning``: a line on mixed validation splits ranked
    anyway (``--allow-mixed-splits``) for its header. Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "trials.csv", out / "trials.md"
    table.to_csv(csv_path, index=False)
    header, body = display_rows(table)
    counts = ", ".join(f"{n} {s}" for s, n in experiment.counts().items() if n)
    compared = "complete, stopped-early and unfinished trials" if include_stopped else "complete trials only"
    text = [
        f"# Trials of {experiment.name}",
        "",
        f"Experiment: `{experiment.path}`; {len(table)} trials ({counts}).",
        f"Scope: {_scope_text(experiment, scope)}. Ranks and Pareto fronts compare {compared}; "
        f"{rank_text(experiment)}, sev# by val_mistake_severity.",
        "Errors are fractions (0..1); severity and hdist in LCA-height units. `epoch`: the selected epoch "
        "(epochs run/configured).",
        *statistics_text(table),
        *([f"Warning: {split_warning}."] if split_warning else []),
        "",
        markdown_table(header, body),
        "",
    ]
    notes = (table.attrs.get("statistics") or {}).get("notes") or []
    if notes:
        text += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    warnings = experiment.warnings()
    if warnings:
        text += ["## Problems", "",
                 f"Damaged files and unknown values, marked `{DAMAGED.strip()}` after the status (also in "
                 "the `problems` column of trials.csv):", "", *(f"- {w}" for w in warnings), ""]
    md_path.write_text("\n".join(text), encoding="utf-8")
    return [csv_path, md_path]


# ---------------------------------------------------------------------------------------------- CLI
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.rank",
        description="Rank the trials of a search, mark the Pareto-optimal ones, write trials.csv, "
        "trials.md and the trade-off plots.",
    )
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR", help="the search's STORAGE_PATH/NAME folder")
    parser.add_argument("--scope", choices=SCOPES, default="best",
                        help="which epoch of each trial: best (lowest search objective) or last "
                        "(default: best)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help=f"output folder (default: EXPERIMENT_DIR/{DEFAULT_OUT})")
    parser.add_argument("--include-stopped", action="store_true",
                        help="rank and compare stopped-early (and unfinished) trials too")
    parser.add_argument("--top", type=_positive, default=10, help="rows to print (default: 10)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument("--constraint", action="append", default=None, metavar="'METRIC <= BOUND'",
                        help="judge every trial at the scope's epoch against this bound (repeatable; "
                             "replaces a constrained search's own): 'val_top1_error <= 0.24', or "
                             "'val_top1_error <= baseline + 0.005' (see --baseline); adds the feasible "
                             "column and marks infeasible trials in the plots")
    parser.add_argument("--baseline", metavar="TRIAL_ID", default=None,
                        help="the trial whose values 'baseline' means (default: a constrained search's "
                             "own baseline trial), and the one the vs_baseline columns compare with "
                             "(default: the best-ranked complete cross-entropy trial)")
    parser.add_argument("--split", metavar="HASH_PREFIX", default=None,
                        help="rank only the trials validated on the split whose val_split_sha256 starts "
                             "with HASH_PREFIX (the val_split column)")
    parser.add_argument("--allow-mixed-splits", action="store_true",
                        help="rank trials validated on different images (several splits, or trials of a "
                             "hiercls before splits were recorded) instead of refusing; paired tests still "
                             "compare only trials of one split")
    parser.add_argument("--bootstrap", type=_non_negative, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help="bootstrap resamples of the validation images for the intervals and paired "
                             f"tests (default: {DEFAULT_BOOTSTRAP}; 0: none)")
    parser.add_argument("--bootstrap-seed", type=_non_negative, default=0, metavar="SEED",
                        help="seed of the resampling: the same seed prints the same intervals (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 2 on bad input (the error on stderr)."""
    return run_cli(build_parser(), argv, _rank)


def print_warnings(experiment: Experiment) -> None:
    """Print each of the experiment's problems (:meth:`Experiment.warnings`) on stderr as
    ``warning: trial ID: FILE: WHAT; CONSEQUENCE``."""
    for line in experiment.warnings():
        print(f"warning: {line}", file=sys.stderr)


def _rank(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.experiment)
    print_warnings(experiment)  # also when nothing can be ranked: they may say why
    if args.split is not None:
        experiment = select_split(experiment, args.split)
    mixed = check_splits(experiment, args.include_stopped, args.allow_mixed_splits)
    if mixed:
        mixed += ("; ranked anyway (--allow-mixed-splits): paired tests compare only trials validated on "
                  "the same images")
        print(f"warning: {mixed}", file=sys.stderr)
    bounds = resolve_bounds(experiment, args.constraint or [], args.baseline, args.scope)
    table = build_table(experiment, args.scope, include_stopped=args.include_stopped, bounds=bounds,
                        bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed, baseline=args.baseline)
    out = Path(args.out) if args.out else experiment.path / DEFAULT_OUT
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {str(out)!r} is a file: give a folder for the tables and plots")
    written = write_outputs(experiment, table, out, args.scope, args.include_stopped, mixed)
    notes: list[str] = []
    if not args.no_plots:
        from analysis.plots import make_plots  # matplotlib only when plots are drawn

        plots, notes = make_plots(experiment, table, out)
        written += plots
    header, body = display_rows(table.head(args.top))
    counts = ", ".join(f"{n} {s}" for s, n in experiment.counts().items() if n)
    print(f"{experiment.name}: {len(table)} trials ({counts}); scope {_scope_text(experiment, args.scope)}")
    print(f"{rank_text(experiment)}; sev# by val_mistake_severity")
    for line in statistics_text(table):
        print(line)
    if "feasible" in table.columns:
        judged = table["feasible"].dropna()  # the trials that ran in full, as the search counts them
        limits = "; ".join(f"{m} <= {b:.6g}" for m, b in table.attrs["constraint_bounds"].items())
        print(f"constraints: {limits}; {int(judged.sum())} of {len(judged)} judged trials feasible at the "
              "scope's epoch (infeasible ones are not ranked)")
    for line in text_table(header, body):
        print(line)
    for note in [*((table.attrs.get("statistics") or {}).get("notes") or []), *notes]:
        print(f"note: {note}")
    damaged = sum(1 for t in experiment.trials if t.problems)
    if damaged or experiment.problems:
        print(f"warning: {damaged} trial(s) with damaged files or unknown values, marked {DAMAGED.strip()} "
              "(details above on stderr, in trials.md and in the problems column of trials.csv)")
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
