"""Does a cheap search's ranking hold at higher fidelity? ``python -m analysis.transfer``.

::

    python -m analysis.transfer runs/tune/speednet runs/tune/resnet18-top
    python -m analysis.transfer runs/tune/joint runs/tune/joint-grid --match-on loss,lr,alpha --out transfer

CHEAP_EXPERIMENT and EXPENSIVE_EXPERIMENT are two search folders (``STORAGE_PATH/NAME``, read with
:func:`analysis.experiment.load_experiment`) over the same configurations: e.g. a speednet search and
its top configurations rerun on ResNet-18, or at more epochs. For each metric, the rank correlation of
the two experiments' values over the configurations both hold (:func:`rank_transfer`):

* configurations match on their searched values (each trial's ``params``; floats compared after
  rounding to 12 significant digits), or with ``--match-on KEY,KEY`` on those config keys alone (the
  expensive experiment's architecture, epochs or other searched keys are then ignored). A configuration
  run several times in one experiment (seeds) counts once, with the mean of its trials' values; the
  output says how many were averaged. Configurations only one experiment holds are counted, not used;
* trials used: ``complete`` ones (they ran their configured epochs); ``--include-stopped`` adds the
  ones ASHA stopped early, at the last epoch they reported (not comparable with full-length values:
  read the result with care). ``error``, ``nan`` and ``unfinished`` trials are always left out
  (counted);
* per trial, the epoch :func:`analysis.rank.select_record` selects for ``--scope`` (default ``last``:
  each trial's final epoch; ``best``: the epoch with the lowest objective of its own search), the value
  a metric has there, as ``analysis.rank`` tables it;
* metrics: by default each of :data:`analysis.rank.METRICS` (top-1 error, mistake severity,
  hdist@1/5/20, coarse error) that both experiments report; ``--metrics`` takes any ``val_*`` metric
  both report, or ``objective`` (the cheap search's objective, computed on both experiments' values);
* statistics: Spearman's rho and Kendall's tau-b (``scipy.stats``), each with a 95 % percentile
  bootstrap interval over the matched configurations (``--bootstrap`` resamples, seeded by ``--seed``);
  and the top-k overlap: how many of the cheap search's best ``--top`` configurations by its objective
  are among the expensive experiment's best ``--top`` by the same objective.

Prints one row per metric (n, spearman [lo, hi], kendall [lo, hi], valid resamples) and writes, with
``--out DIR``, ``rank_transfer.csv`` (that table) and ``rank_transfer.json`` (the table, the counts, the
top-k overlap, the notes and every matched configuration's values). Existing files are kept unless
``--overwrite``.

Exit status: 0 the table was printed (also when a correlation is NaN: fewer than 3 matched
configurations, or constant values; a ``note:`` line says why); 2 bad input, one line on stderr: a
missing folder, a folder that is not an experiment, an experiment without a finished trial, an unknown
metric or match key (the valid ones listed), an output file that exists without ``--overwrite``, or a
bad option (argparse).

Units: the metrics are those of ``analysis.rank`` (errors as fractions, severity and hdist in
LCA-height units); correlations are unitless in [-1, 1].
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.experiment import (
    STATUSES,
    AnalysisError,
    Experiment,
    load_experiment,
    run_cli,
    trial_objective,
)
from analysis.rank import METRICS, SCOPES, _positive, print_warnings, select_record, text_table

__all__ = [
    "CONFIDENCE",
    "OUT_FILES",
    "RankTransfer",
    "build_parser",
    "main",
    "rank_transfer",
]

CONFIDENCE = 0.95
OUT_FILES = ("rank_transfer.csv", "rank_transfer.json")
OBJECTIVE = "objective"  # the metric name of the cheap search's objective
EXCLUDED = ("error", "nan", "unfinished")  # never used
SIGNIFICANT = 12  # digits a float keeps when configurations are matched
MIN_PAIRS = 3  # fewer matched configurations: no correlation
_CHUNK = 2_000_000  # array elements per chunk of the vectorised Kendall tau-b
TABLE_COLUMNS = ("metric", "n", "spearman", "spearman_lo", "spearman_hi", "kendall", "kendall_lo",
                 "kendall_hi", "resamples", "bootstrap", "note")


@dataclasses.dataclass
class RankTransfer:
    """What :func:`rank_transfer` found.

    Attributes:
        table: one row per metric (:data:`TABLE_COLUMNS`): ``metric``; ``n`` (matched configurations with
            a value in both experiments); ``spearman``, ``kendall`` (tau-b; NaN when ``n`` < 3 or the
            values of one experiment are all equal) and their percentile bootstrap interval
            ``*_lo``/``*_hi`` (:data:`CONFIDENCE`; NaN without valid resamples); ``resamples`` (valid
            resamples: those with a defined correlation) of ``bootstrap``; ``note`` (why a value is NaN
            or resamples were skipped, else empty).
        pairs: one row per matched configuration, in the cheap experiment's trial order:
            ``configuration`` (``key=value`` of the matched keys), ``cheap_trials`` and
            ``expensive_trials`` (trial ids, space-separated: more than one = averaged), and per metric
            ``cheap:METRIC`` and ``expensive:METRIC`` (the trials' mean).
        cheap, expensive: counts per experiment: ``path``, ``name``, ``objective``, ``trials``, ``used``,
            ``excluded`` (status -> trials left out), ``unmatchable`` (trials otherwise used that lack a match
            key or whose searched values are unknown), ``configurations``, ``averaged_configurations`` and
            ``averaged_trials`` (configurations run more than once and their trials),
            ``matched_configurations``, ``unmatched_configurations``, ``unmatched_trials``.
        top_k: ``k`` (as asked, at most ``n``), ``n`` (matched configurations with the objective finite
            in both), ``overlap`` (how many of the cheap top ``k`` are in the expensive top ``k``; None
            when ``n`` is 0), ``by`` (the cheap search's objective), ``cheap_top`` and ``expensive_top``
            (the configurations, best first).
        match_on: the matched config keys, None for the searched values.
        scope, include_stopped, bootstrap, seed: the settings used.
        notes: one line each, for the user.
    """

    table: pd.DataFrame
    pairs: pd.DataFrame
    cheap: dict[str, Any]
    expensive: dict[str, Any]
    top_k: dict[str, Any]
    match_on: tuple[str, ...] | None
    scope: str
    include_stopped: bool
    bootstrap: int
    seed: int
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        """Everything as JSON-ready values (NaN as null)."""
        return _json_ready({
            "cheap": self.cheap, "expensive": self.expensive,
            "match_on": list(self.match_on) if self.match_on else "searched values (params)",
            "scope": self.scope, "include_stopped": self.include_stopped, "confidence": CONFIDENCE,
            "bootstrap": self.bootstrap, "seed": self.seed, "top_k": self.top_k, "notes": self.notes,
            "metrics": self.table.to_dict("records"), "configurations": self.pairs.to_dict("records"),
        })


# ---------------------------------------------------------------------------------------------- matching
def _normal(value: Any) -> Any:
    """A hashable form of a config value in which floats equal to 12 significant digits are equal."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _normal(v)) for k, v in value.items()))
    return str(value)


def _label(key: tuple[tuple[str, Any], ...]) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in key)


def _names(text: str | Sequence[str] | None, what: str) -> list[str] | None:
    """``a,b`` (or a list of names) as a list without repeats; None for None."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise AnalysisError(f"{what} names no key: give KEY[,KEY...]")
    return names


def _check_match_keys(keys: Sequence[str], experiments: Sequence[Experiment]) -> None:
    from hiercls.config import TrainConfig

    valid = set(TrainConfig.valid_keys())
    for e in experiments:
        for t in e.trials:
            valid |= set(t.params) | set(t.config or {})
    unknown = [k for k in keys if k not in valid]
    if unknown:
        raise AnalysisError(f"--match-on key {unknown[0]!r} is unknown (not a config key or searched key of "
                            f"either experiment); valid: {', '.join(sorted(valid))}")
    for k in keys:  # a key no trial sets cannot tell configurations apart: matching on it would merge them
        values = [{**(t.config or {}), **t.params}.get(k) for e in experiments for t in e.trials]
        if all(v is None for v in values):
            raise AnalysisError(f"--match-on key {k!r} is unset (null) in every trial of both experiments, "
                                "so it cannot tell configurations apart; match on keys the trials set")


@dataclasses.dataclass
class _Side:
    """One experiment's used trials grouped by configuration."""

    experiment: Experiment
    groups: dict[tuple, list[tuple[str, dict[str, float]]]]  # key -> [(trial id, metric values)]
    counts: dict[str, Any]
    reported: set[str] | None  # metrics with a finite value in some used trial (None: no trial used)


def _collect(experiment: Experiment, match_on: Sequence[str] | None, scope: str, include_stopped: bool,
             objective: Any) -> _Side:
    excluded: dict[str, int] = {}
    unmatchable = 0
    groups: dict[tuple, list[tuple[str, dict[str, float]]]] = {}
    for trial in experiment.trials:
        if trial.status in EXCLUDED or (trial.status == "stopped early" and not include_stopped):
            excluded[trial.status] = excluded.get(trial.status, 0) + 1
            continue
        record = select_record(trial, experiment.objective, scope)
        if record is None:
            excluded["no epoch record"] = excluded.get("no epoch record", 0) + 1
            continue
        if match_on is None:
            if trial.unknown_params:
                unmatchable += 1
                continue
            key = tuple(sorted((k, _normal(v)) for k, v in trial.params.items()))
        else:
            source = {**trial.params, **(trial.config or {})}
            if any(k not in source for k in match_on):
                unmatchable += 1
                continue
            key = tuple((k, _normal(source[k])) for k in match_on)
        values = {k: float(v) for k, v in record.items()
                  if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        values[OBJECTIVE] = trial_objective(objective, record)
        groups.setdefault(key, []).append((trial.trial_id, values))
    excluded = {s: excluded[s] for s in (*STATUSES, "no epoch record") if s in excluded}
    used = sum(len(g) for g in groups.values())
    repeated = [g for g in groups.values() if len(g) > 1]
    reported = {m for g in groups.values() for _, v in g for m, x in v.items() if math.isfinite(x)}
    counts = {
        "path": str(experiment.path), "name": experiment.name, "objective": experiment.objective_text,
        "trials": len(experiment.trials), "used": used, "excluded": excluded, "unmatchable": unmatchable,
        "configurations": len(groups), "averaged_configurations": len(repeated),
        "averaged_trials": sum(len(g) for g in repeated),
    }
    return _Side(experiment, groups, counts, reported if used else None)


def _mean(group: Sequence[tuple[str, Mapping[str, float]]], metric: str) -> float:
    values = [v.get(metric, math.nan) for _, v in group]
    finite = [x for x in values if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


# ---------------------------------------------------------------------------------------------- statistics
def _correlations(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman's rho and Kendall's tau-b of each row pair of ``xs`` and ``ys`` (shape ``(B, n)``), and
    whether each is defined (neither row constant; NaN where not). The same numbers as
    ``scipy.stats.spearmanr`` (Pearson correlation of the average ranks) and ``scipy.stats.kendalltau``
    (variant ``b``: sum over pairs of sign(dx)·sign(dy), divided by the square root of the pairs untied
    in x times the pairs untied in y), computed for all rows at once."""
    from scipy import stats

    xs, ys = np.atleast_2d(np.asarray(xs, dtype=float)), np.atleast_2d(np.asarray(ys, dtype=float))
    valid = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    rx, ry = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    tau = np.full(len(xs), np.nan)
    n = xs.shape[1]
    step = max(1, _CHUNK // max(1, n * n))
    for start in range(0, len(xs), step):
        cx, cy = xs[start:start + step], ys[start:start + step]
        sx = np.sign(cx[:, :, None] - cx[:, None, :])
        sy = np.sign(cy[:, :, None] - cy[:, None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            tau[start:start + step] = (sx * sy).sum(axis=(1, 2)) / np.sqrt(
                np.abs(sx).sum(axis=(1, 2)) * np.abs(sy).sum(axis=(1, 2)))
    rho, tau = np.clip(rho, -1.0, 1.0), np.clip(tau, -1.0, 1.0)
    rho[~valid], tau[~valid] = np.nan, np.nan
    return rho, tau, valid


def _correlate(metric: str, x: np.ndarray, y: np.ndarray, bootstrap: int, seed: int) -> dict[str, Any]:
    """One table row: the estimates (scipy.stats) and their percentile bootstrap intervals."""
    from scipy import stats

    n = len(x)
    row: dict[str, Any] = {"metric": metric, "n": n, "spearman": math.nan, "spearman_lo": math.nan,
                           "spearman_hi": math.nan, "kendall": math.nan, "kendall_lo": math.nan,
                           "kendall_hi": math.nan, "resamples": 0, "bootstrap": bootstrap, "note": ""}
    if n < MIN_PAIRS:
        row["note"] = (f"{n} matched configuration(s) with a value in both experiments; a rank correlation "
                       f"needs at least {MIN_PAIRS}: NaN")
        return row
    constant = [side for side, v in (("cheap", x), ("expensive", y)) if np.ptp(v) == 0]
    if constant:
        row["note"] = (f"the {' and the '.join(constant)} experiment's values are all equal over the {n} "
                       "configurations: rank correlation undefined (NaN)")
        return row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["spearman"] = float(stats.spearmanr(x, y)[0])
        row["kendall"] = float(stats.kendalltau(x, y, variant="b")[0])
    index = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
    rho, tau, valid = _correlations(x[index], y[index])
    row["resamples"] = int(valid.sum())
    if valid.any():
        tail = 100 * (1 - CONFIDENCE) / 2
        row["spearman_lo"], row["spearman_hi"] = (float(v) for v in np.percentile(rho[valid],
                                                                                   [tail, 100 - tail]))
        row["kendall_lo"], row["kendall_hi"] = (float(v) for v in np.percentile(tau[valid],
                                                                                 [tail, 100 - tail]))
    if row["resamples"] < bootstrap:
        row["note"] = (f"{bootstrap - row['resamples']} of {bootstrap} bootstrap resamples skipped (all "
                       "values equal in one experiment: correlation undefined)")
    return row


def _top_overlap(cheap: Sequence[float], expensive: Sequence[float], labels: Sequence[str], k: int,
                 by: str) -> dict[str, Any]:
    """How many of the ``k`` configurations lowest in ``cheap`` are among the ``k`` lowest in
    ``expensive`` (ties broken by the configuration's place in ``labels``), over the configurations with
    both values finite."""
    both = [i for i in range(len(labels)) if math.isfinite(cheap[i]) and math.isfinite(expensive[i])]
    out: dict[str, Any] = {"k": k, "n": len(both), "overlap": None, "by": by, "cheap_top": [],
                           "expensive_top": []}
    if not both:
        return out
    kk = min(k, len(both))
    top_cheap = sorted(both, key=lambda i: cheap[i])[:kk]
    top_expensive = sorted(both, key=lambda i: expensive[i])[:kk]
    out.update(k=kk, overlap=len(set(top_cheap) & set(top_expensive)),
               cheap_top=[labels[i] for i in top_cheap], expensive_top=[labels[i] for i in top_expensive])
    return out


# ---------------------------------------------------------------------------------------------- the analysis
def rank_transfer(
    cheap: Experiment | str | Path,
    expensive: Experiment | str | Path,
    *,
    metrics: str | Sequence[str] | None = None,
    match_on: str | Sequence[str] | None = None,
    bootstrap: int = 2000,
    seed: int = 0,
    include_stopped: bool = False,
    top: int = 3,
    scope: str = "last",
) -> RankTransfer:
    """Rank correlation, per metric, between a cheap and an expensive experiment over the configurations
    both hold (see the module docstring for matching, the trials used and the epoch selected).

    Args:
        cheap, expensive: an :class:`~analysis.experiment.Experiment` or its folder.
        metrics: metric names (list or ``a,b``); default: each of :data:`analysis.rank.METRICS` both
            experiments report. ``objective`` is the cheap search's objective on both.
        match_on: config keys to match on (list or ``a,b``); default: the searched values (``params``).
        bootstrap: resamples B (>= 1) of the matched configurations, with replacement.
        seed: seeds the resampling (the same seed, the same intervals; each metric resamples from it).
        include_stopped: also use trials stopped early (ASHA), at the epoch ``scope`` selects.
        top: k of the top-k overlap.
        scope: ``last`` (each trial's last epoch) or ``best`` (:func:`analysis.rank.select_record`).

    Returns:
        A :class:`RankTransfer`: ``table`` has one row per metric (shape ``(len(metrics), 11)``):
        ``n`` configurations, Spearman's rho and Kendall's tau-b in [-1, 1] (unitless) and their
        :data:`CONFIDENCE` intervals; plus the matched values, counts, the top-k overlap and notes.

    Sources: Spearman's rank correlation (C. Spearman, "The proof and measurement of association between
    two things", Am. J. Psychol. 15, 1904), via ``scipy.stats.spearmanr`` (average ranks for ties);
    Kendall's tau (M. G. Kendall, "A new measure of rank correlation", Biometrika 30, 1938) in its
    tau-b form corrected for ties (Kendall, "The treatment of ties in ranking problems", Biometrika 33,
    1945), via ``scipy.stats.kendalltau(variant="b")``; the percentile bootstrap interval (B. Efron and
    R. J. Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13): the 2.5th and 97.5th
    percentiles of the statistic over B resamples of the matched configurations drawn with replacement,
    resamples in which the statistic is undefined (one experiment's values all equal) skipped and
    counted (``resamples``).

    Raises:
        AnalysisError: a folder that is missing or not an experiment, an experiment without a finished
            trial, an unknown metric (the valid ones listed), an unknown match key (the valid ones
            listed), an unknown scope, ``bootstrap`` or ``top`` below 1, a negative ``seed``.
    """
    if scope not in SCOPES:
        raise AnalysisError(f"scope {scope!r} is unknown; valid: {', '.join(SCOPES)}")
    if bootstrap < 1 or top < 1 or seed < 0:
        raise AnalysisError(f"bootstrap ({bootstrap}) and top ({top}) must be whole numbers >= 1, "
                            f"seed ({seed}) >= 0")
    cheap_exp = cheap if isinstance(cheap, Experiment) else load_experiment(cheap)
    expensive_exp = expensive if isinstance(expensive, Experiment) else load_experiment(expensive)
    for e in (cheap_exp, expensive_exp):
        e.require_finished()
    keys = _names(match_on, "--match-on")
    if keys is not None:
        _check_match_keys(keys, (cheap_exp, expensive_exp))
    objective = cheap_exp.objective
    sides = [_collect(e, keys, scope, include_stopped, objective) for e in (cheap_exp, expensive_exp)]
    known = [s.reported for s in sides if s.reported is not None]
    both = set.intersection(*known) if known else set(METRICS)
    chosen = _names(metrics, "--metrics")
    if chosen is None:
        chosen = [m for m in METRICS if m in both]
    else:
        valid = [OBJECTIVE, *sorted(m for m in both if m != OBJECTIVE)]
        for m in chosen:
            if m not in valid:
                raise AnalysisError(f"metric {m!r} is unknown or not reported by both experiments; valid: "
                                    f"{', '.join(valid)}")

    notes: list[str] = []
    cheap_side, expensive_side = sides
    common = [k for k in cheap_side.groups if k in expensive_side.groups]
    for side, other in ((cheap_side, expensive_side), (expensive_side, cheap_side)):
        alone = [k for k in side.groups if k not in other.groups]
        side.counts.update(matched_configurations=len(common), unmatched_configurations=len(alone),
                           unmatched_trials=sum(len(side.groups[k]) for k in alone))
    if cheap_exp.path.resolve() == expensive_exp.path.resolve():
        notes.append("the cheap and the expensive experiment are the same folder: every correlation is 1")
    if not common and keys is None and cheap_side.groups and expensive_side.groups:
        searched = [sorted({k for key in s.groups for k, _ in key}) for s in sides]
        hint = (f"they search different keys (cheap: {', '.join(searched[0])}; expensive: "
                f"{', '.join(searched[1])}); " if searched[0] != searched[1] else "")
        notes.append(f"no configuration matched on the searched values: {hint}match on chosen config "
                     "keys with --match-on KEY,KEY")
    for name, side in (("cheap", cheap_side), ("expensive", expensive_side)):
        c = side.counts
        if c["averaged_configurations"]:
            notes.append(f"{name}: {c['averaged_configurations']} configuration(s) ran more than once "
                         f"({c['averaged_trials']} trials, e.g. seeds): each counts once, with the mean of "
                         "its trials' values")

    labels = [_label(k) for k in common]
    pair_rows: list[dict[str, Any]] = []
    for key, label in zip(common, labels):
        row: dict[str, Any] = {"configuration": label}
        for name, side in (("cheap", cheap_side), ("expensive", expensive_side)):
            row[f"{name}_trials"] = " ".join(t for t, _ in side.groups[key])
        for m in dict.fromkeys([*chosen, OBJECTIVE]):
            row[f"cheap:{m}"] = _mean(cheap_side.groups[key], m)
            row[f"expensive:{m}"] = _mean(expensive_side.groups[key], m)
        pair_rows.append(row)
    pairs = pd.DataFrame(pair_rows, columns=["configuration", "cheap_trials", "expensive_trials",
                                             *(f"{s}:{m}" for m in dict.fromkeys([*chosen, OBJECTIVE])
                                               for s in ("cheap", "expensive"))])

    rows = []
    for m in chosen:
        x = pairs[f"cheap:{m}"].to_numpy(dtype=float)
        y = pairs[f"expensive:{m}"].to_numpy(dtype=float)
        keep = np.isfinite(x) & np.isfinite(y)
        rows.append(_correlate(m, x[keep], y[keep], bootstrap, seed))
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    by_note: dict[str, list[str]] = {}
    for r in rows:
        if r["note"]:
            by_note.setdefault(r["note"], []).append(r["metric"])
    notes += [f"{', '.join(names)}: {note}" for note, names in by_note.items()]
    by = f"the cheap search's objective, {cheap_exp.objective_text}, on both experiments' values"
    top_k = _top_overlap(pairs[f"cheap:{OBJECTIVE}"].tolist(), pairs[f"expensive:{OBJECTIVE}"].tolist(),
                         labels, top, by)
    return RankTransfer(table, pairs, cheap_side.counts, expensive_side.counts, top_k,
                        tuple(keys) if keys else None, scope, include_stopped, bootstrap, seed, notes)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ---------------------------------------------------------------------------------------------- output
def _number(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3f}"


def _interval(lo: float, hi: float) -> str:
    return "" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.3f}, {hi:.3f}]"


def _side_text(name: str, c: Mapping[str, Any], include_stopped: bool) -> str:
    out = [f"{name}: {c['name']} ({c['path']}): {c['trials']} trial(s), {c['used']} used"]
    left = dict(c["excluded"])
    if left:
        out.append(f"{sum(left.values())} left out ({', '.join(f'{n} {s}' for s, n in left.items())}"
                   + ("" if include_stopped or "stopped early" not in left else "; --include-stopped "
                      "uses the stopped-early ones") + ")")
    if c["unmatchable"]:
        out.append(f"{c['unmatchable']} not matchable (a match key or searched value unknown)")
    out.append(f"{c['configurations']} configuration(s), {c['matched_configurations']} matched, "
               f"{c['unmatched_configurations']} unmatched ({c['unmatched_trials']} trial(s))")
    return "; ".join(out)


def print_report(result: RankTransfer) -> None:
    """The readable report on stdout: what was matched, the counts, the table, the top-k overlap and
    the notes."""
    matched = (f"config keys {', '.join(result.match_on)}" if result.match_on else
               f"the searched values (params; floats to {SIGNIFICANT} significant digits)")
    used = "complete and stopped-early trials" if result.include_stopped else "complete trials only"
    epoch = "each trial's last epoch" if result.scope == "last" else "each trial's best epoch"
    print(f"rank transfer: {result.cheap['name']} (cheap) -> {result.expensive['name']} (expensive); "
          f"matched on {matched}; {used}; scope {result.scope} ({epoch})")
    print(_side_text("cheap", result.cheap, result.include_stopped))
    print(_side_text("expensive", result.expensive, result.include_stopped))
    percent = f"{CONFIDENCE:.0%}"
    header = ["metric", "n", "spearman", f"{percent} CI", "kendall", f"{percent} CI", "resamples"]
    body = [[r["metric"], str(r["n"]), _number(r["spearman"]), _interval(r["spearman_lo"], r["spearman_hi"]),
             _number(r["kendall"]), _interval(r["kendall_lo"], r["kendall_hi"]),
             f"{r['resamples']}/{r['bootstrap']}"] for r in result.table.to_dict("records")]
    print(f"rank correlation over the matched configurations (percentile bootstrap, {result.bootstrap} "
          f"resamples, seed {result.seed}):")
    for line in text_table(header, body):
        print(line)
    t = result.top_k
    if t["overlap"] is None:
        print(f"top-{t['k']} overlap: none (no matched configuration has {t['by']})")
    else:
        print(f"top-{t['k']} overlap: {t['overlap']} of the cheap search's top {t['k']} are in the "
              f"expensive experiment's top {t['k']} (by {t['by']})")
    for note in result.notes:
        print(f"note: {note}")


def _out_paths(out: str | Path, overwrite: bool) -> list[Path]:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise AnalysisError(f"--out {str(folder)!r} is a file: give a folder for {' and '.join(OUT_FILES)}")
    paths = [folder / name for name in OUT_FILES]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise AnalysisError(f"refusing to overwrite {', '.join(existing)}: pass --overwrite, or choose "
                            "another --out")
    return paths


def write_outputs(result: RankTransfer, out: str | Path, overwrite: bool = False) -> list[Path]:
    """``rank_transfer.csv`` (the table) and ``rank_transfer.json`` (:meth:`RankTransfer.to_json`) in
    the folder ``out`` (made when missing); returns their paths.

    Raises:
        AnalysisError: ``out`` is a file, or one of the files exists and not ``overwrite``.
    """
    csv_path, json_path = _out_paths(out, overwrite)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(csv_path, index=False)
    json_path.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return [csv_path, json_path]


# ---------------------------------------------------------------------------------------------- CLI
EPILOG = """exit status:
  0  the table was printed (a correlation may be NaN: fewer than 3 matched configurations or constant
     values; a note says why)
  2  bad input, one line on stderr: a missing folder or one that is not an experiment, an experiment
     without a finished trial, an unknown metric or match key (the valid ones listed), an existing
     output file without --overwrite, a bad option"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.transfer",
        description="Does the cheap search's ranking hold? Spearman and Kendall tau-b rank correlations,\n"
        "with percentile bootstrap 95% intervals, between two experiments' values over the\n"
        "configurations both hold, and the top-k overlap.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cheap", metavar="CHEAP_EXPERIMENT", help="the cheap search's STORAGE_PATH/NAME")
    parser.add_argument("expensive", metavar="EXPENSIVE_EXPERIMENT",
                        help="the expensive experiment over the same configurations")
    parser.add_argument("--metrics", metavar="METRIC,METRIC", default=None,
                        help="metrics to correlate (default: each of " + ", ".join(METRICS)
                        + " that both report; 'objective' = the cheap search's objective)")
    parser.add_argument("--match-on", metavar="KEY,KEY", default=None,
                        help="match configurations on these config keys only (default: on all searched "
                        "values, floats to 12 significant digits)")
    parser.add_argument("--bootstrap", type=_positive, default=2000, metavar="B",
                        help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (default: 0)")
    parser.add_argument("--top", type=_positive, default=3, metavar="K",
                        help="k of the top-k overlap by the cheap search's objective (default: 3)")
    parser.add_argument("--include-stopped", action="store_true",
                        help="also use trials stopped early (ASHA), at the epoch --scope selects (their "
                        "last reported by default)")
    parser.add_argument("--scope", choices=SCOPES, default="last",
                        help="each trial's last epoch, or its best by its search's objective (default: last)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="also write " + " and ".join(OUT_FILES) + " in this folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 2 on bad input (one line on stderr)."""
    return run_cli(build_parser(), argv, _transfer)


def _transfer(args: argparse.Namespace) -> int:
    if args.out is not None:
        _out_paths(args.out, args.overwrite)  # refuse before the work
    cheap, expensive = load_experiment(args.cheap), load_experiment(args.expensive)
    for experiment in (cheap, expensive):
        print_warnings(experiment)
    result = rank_transfer(cheap, expensive, metrics=args.metrics, match_on=args.match_on,
                           bootstrap=args.bootstrap, seed=args.seed, include_stopped=args.include_stopped,
                           top=args.top, scope=args.scope)
    print_report(result)
    if args.out is not None:
        written = write_outputs(result, args.out, args.overwrite)
        print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
