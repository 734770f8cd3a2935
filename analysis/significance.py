"""Per-image statistics of a ranked table (``analysis.rank``): intervals over the validation images,
paired tests against the best trial and the cross-entropy baseline, and the resolved Pareto fronts, all
from each trial's saved predictions (:mod:`hiercls.evidence`) with :mod:`analysis.stats`. Imports no torch
unless some trial has saved predictions, and no Ray.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.experiment import SHORT_SPLIT, Experiment, Trial
from analysis.pareto import PARETO_PAIRS, RESOLVED_FRONTS
from analysis.stats import bootstrap_ratios, mcnemar_exact, percentile_interval

__all__ = ["ALPHA", "DEFAULT_BOOTSTRAP", "INTERVAL_METRICS", "LEVEL", "STAT_COLUMNS", "add_statistics",
           "load_evidence"]

LEVEL = 0.95
"""The level of every interval of the table (percentile bootstrap over validation images)."""
ALPHA = 0.05
"""The significance of every test of the table: a difference is resolved when McNemar's p < ALPHA, or when
its 95 % interval excludes 0."""
DEFAULT_BOOTSTRAP = 2000
"""Bootstrap resamples of the validation images (``--bootstrap``)."""
INTERVAL_METRICS = ("val_top1_error", "val_mistake_severity", "val_hdist@5")
"""The metrics with an interval (``<metric>_low`` / ``<metric>_high``)."""
PAIRED_METRICS = {"severity": "val_mistake_severity", "hdist@5": "val_hdist@5"}
"""Short name in the paired columns -> metric, for the paired bootstrap intervals of differences."""
COMPARISONS = ("vs_best", "vs_baseline")
INTERVAL_COLUMNS = tuple(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("low", "high"))


def _paired_columns(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}_top1_p", *(f"{prefix}_{k}_{end}" for k in PAIRED_METRICS for end in ("low", "high")))


PAIRED_COLUMNS = tuple(c for prefix in COMPARISONS for c in _paired_columns(prefix))
STAT_COLUMNS = (*INTERVAL_COLUMNS, *PAIRED_COLUMNS, "tied_with_best", *RESOLVED_FRONTS.values())
"""The table's per-image statistics columns (see :func:`build_table`), after ``pareto_index``."""
EVIDENCE_FOLDER = "val_predictions"
""":data:`hiercls.evidence.EVIDENCE_DIR`, named here so that ranking a search without saved predictions
imports no torch (``hiercls.evidence`` does)."""



@dataclasses.dataclass(frozen=True)
class _Evidence:
    """One trial's per-image terms at its selected epoch, images ordered by their position in the official
    training set: ``split`` (the file's ``val_split_sha256``), ``indices`` int [N], ``wrong`` float64 [N]
    (0/1 top-1 mistakes), ``terms`` (metric -> ``(num, den)`` float64 [N] each, :func:`hiercls.evidence.
    per_image`) and ``boots`` (metric -> float64 [B]: the metric on each bootstrap resample)."""

    split: str
    indices: np.ndarray
    wrong: np.ndarray
    terms: dict[str, tuple[np.ndarray, np.ndarray]]
    boots: dict[str, np.ndarray]


def _hierarchy_name(experiment: Experiment, trial: Trial) -> str | None:
    return (trial.config or {}).get("hierarchy") or (experiment.spec.get("train") or {}).get("hierarchy")


def load_evidence(experiment: Experiment, table: pd.DataFrame, n_boot: int, seed: int
                  ) -> tuple[dict[str, _Evidence], list[str]]:
    """The saved predictions of each row's selected ``epoch`` (``<trial>/val_predictions/epoch_NNNN.npz``,
    :func:`hiercls.evidence.load_predictions`; never unpickled) as per-image terms, with the bootstrap
    replicates of :data:`INTERVAL_METRICS`: ``n_boot`` resamples of the N images with replacement drawn from
    ``np.random.default_rng(seed)`` (:func:`analysis.stats.bootstrap_ratio_ci`'s draws, so each interval
    equals that function's on the same arrays and seed, and the replicates of two trials on the same split
    use the same resampled images: their differences are :func:`analysis.stats.paired_bootstrap_diff_ci`'s).

    Returns:
        ``({trial_id: evidence}, problems)``: the trials whose file exists and could be read; one line per
        file that could not be read (or whose split is not the trial's), ``trial ID: WHAT``. torch is
        imported only when some trial has a predictions folder.
    """
    trials = {t.trial_id: t for t in experiment.trials}
    wanted = [(trials[tid], int(epoch)) for tid, epoch in zip(table["trial_id"], table["epoch"])
              if not pd.isna(epoch) and trials[tid].path is not None
              and (trials[tid].path / EVIDENCE_FOLDER).is_dir()]
    if not wanted:
        return {}, []
    from hiercls.evidence import EvidenceError, load_predictions, per_image, predictions_path
    from hiercls.hierarchy import DEFAULT_HIERARCHY, load_cifar100_hierarchy

    hierarchies: dict[str, Any] = {}
    found: dict[str, _Evidence] = {}
    problems: list[str] = []
    for trial, epoch in wanted:
        path = predictions_path(trial.path, epoch)
        if not path.is_file():
            continue
        name = str(_hierarchy_name(experiment, trial) or DEFAULT_HIERARCHY)
        try:
            pred = load_predictions(path)
            if trial.val_split_sha256 and pred.val_split_sha256 != trial.val_split_sha256:
                raise EvidenceError(f"{str(path)!r} holds split {pred.val_split_sha256[:SHORT_SPLIT]}, not "
                                    f"the trial's {trial.val_split_sha256[:SHORT_SPLIT]}")
            if name not in hierarchies:
                hierarchies[name] = load_cifar100_hierarchy(name)
            terms = per_image(pred, hierarchies[name])
        except ValueError as err:  # EvidenceError, HierarchyError, a ranking shorter than k
            problems.append(f"trial {trial.trial_id}: {err}; no intervals or paired tests for it")
            continue
        order = np.argsort(pred.indices, kind="stable")
        chosen = {m: (terms[m][0][order], terms[m][1][order]) for m in INTERVAL_METRICS}
        boots = bootstrap_ratios(list(chosen.values()), n_boot, seed)
        wrong = chosen["val_top1_error"][0]
        found[trial.trial_id] = _Evidence(pred.val_split_sha256, pred.indices[order], wrong, chosen,
                                          dict(zip(INTERVAL_METRICS, boots)))
    return found, problems


def _same_images(a: _Evidence, b: _Evidence) -> bool:
    return a.split == b.split and np.array_equal(a.indices, b.indices)


def _paired(a: _Evidence | None, b: _Evidence | None) -> dict[str, float]:
    """``a`` against ``b`` on the same images: ``top1_p`` (McNemar's exact p) and ``KEY_low`` /
    ``KEY_high`` for each :data:`PAIRED_METRICS` key (the percentile interval of ``a - b`` over the shared
    resamples); empty when either has no evidence or their images differ."""
    if a is None or b is None or not _same_images(a, b):
        return {}
    out = {"top1_p": mcnemar_exact(a.wrong, b.wrong)[2]}
    for key, metric in PAIRED_METRICS.items():
        out[f"{key}_low"], out[f"{key}_high"] = percentile_interval(a.boots[metric] - b.boots[metric], LEVEL)
    return out


def _resolved_better(b: _Evidence, a: _Evidence, metric: str) -> bool:
    """Whether ``b`` is resolved-better than ``a`` in top-1 error and ``metric``: same images, fewer top-1
    mistakes with McNemar's p < :data:`ALPHA`, and the interval of ``metric(b) - metric(a)`` below 0."""
    if not _same_images(a, b) or b.wrong.sum() >= a.wrong.sum():
        return False
    if mcnemar_exact(a.wrong, b.wrong)[2] >= ALPHA:
        return False
    return percentile_interval(b.boots[metric] - a.boots[metric], LEVEL)[1] < 0


def _tied(row: Mapping[str, float]) -> Any:
    """tied_with_best from a row's ``vs_best_`` values: NA when any is unknown."""
    values = [row[c] for c in _paired_columns("vs_best")]
    if any(math.isnan(v) for v in values):
        return pd.NA
    p, intervals = values[0], values[1:]
    return bool(p >= ALPHA and all(low <= 0 <= high for low, high in zip(intervals[::2], intervals[1::2])))


def _baseline_id(experiment: Experiment, table: pd.DataFrame, baseline: str | None) -> str | None:
    """``baseline`` (checked), else the first compared complete cross-entropy row of the ranked table."""
    if baseline is not None:
        return experiment.trial(baseline).trial_id
    pick = table[table["compared"] & table["status"].eq("complete") & table["loss"].eq("cross-entropy")]
    return str(pick["trial_id"].iloc[0]) if len(pick) else None


def _id_list(ids: Sequence[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def add_statistics(table: pd.DataFrame, experiment: Experiment, n_boot: int, seed: int = 0,
                   baseline: str | None = None) -> pd.DataFrame:
    """The per-image statistics columns (:data:`STAT_COLUMNS`) of a ranked table (best first), placed after
    ``pareto_index``. Every column is computed from the trial's saved predictions of the epoch in its
    ``epoch`` column (:func:`load_evidence`); a row without them has NaN (NA for the booleans).

    All intervals are 95 % percentile bootstrap intervals over the N validation images (Efron and
    Tibshirani 1993, ch. 13; :mod:`analysis.stats`), ``n_boot`` resamples drawn with ``seed``: the same
    resamples for every trial of a split, so the same command gives the same numbers.

    * ``<metric>_low`` / ``<metric>_high`` for ``val_top1_error`` (the top-1 error rate, a fraction; the
      percentile bootstrap also for it, not Wilson's interval, so the three intervals are alike),
      ``val_mistake_severity`` (mean LCA height over the top-1 mistakes: a ratio, resampled as one) and
      ``val_hdist@5`` (LCA heights): :func:`analysis.stats.bootstrap_ratio_ci`. Every row with evidence.
    * ``vs_best_top1_p``: McNemar's exact two-sided p (:func:`analysis.stats.mcnemar_exact`) of the row's
      top-1 mistakes against the best-ranked trial's (the first compared row: rank_objective 1) on the same
      images; ``vs_best_severity_low/_high`` and ``vs_best_hdist@5_low/_high``: the paired bootstrap
      interval of (row - best) for mistake severity / hdist@5 (:func:`analysis.stats.
      paired_bootstrap_diff_ci`: the same resampled images for both). Negative: the row is lower (better).
    * ``vs_baseline_...``: the same against the baseline, ``baseline`` when given (``--baseline``), else
      the best-ranked compared complete cross-entropy trial (none: NaN).
    * ``tied_with_best``: statistically indistinguishable from the best: ``vs_best_top1_p >= 0.05`` and
      both paired intervals contain 0 (the best itself: p = 1 and [0, 0], True). NA when unknown.
    * ``pareto_resolved`` (``pareto_resolved_hdist5``): a compared trial is on the resolved front unless
      another compared trial is resolved-better in both top-1 error and mistake severity (hdist@5):
      fewer top-1 mistakes with McNemar's p < 0.05, and the paired interval of the severity (hdist@5)
      difference entirely below 0. A trial without evidence neither leaves the front nor pushes another
      off it: NA; a row not compared: False.

    The paired columns and the fronts pair only trials validated on the same images (equal
    ``val_split_sha256`` and equal saved positions); other pairs stay NaN / never resolved. Paired columns
    are filled for compared rows only. ``table.attrs["statistics"]``: ``n_boot``, ``seed``, ``level``,
    ``images`` (the distinct N), ``best`` and ``baseline`` (trial ids or None), ``with_evidence`` (count)
    and ``notes`` (lines for the user: trials without evidence, damaged files, a missing baseline); None
    when ``n_boot`` is 0.
    """
    df = table.copy()
    n = len(df)
    numbers = {c: np.full(n, np.nan) for c in (*INTERVAL_COLUMNS, *PAIRED_COLUMNS)}
    evidence, problems = load_evidence(experiment, df, n_boot, seed) if n_boot > 0 and n else ({}, [])
    ids = [str(t) for t in df["trial_id"]]
    compared = df["compared"].to_numpy(dtype=bool)
    for i, tid in enumerate(ids):
        for m, boot in (evidence[tid].boots.items() if tid in evidence else ()):
            numbers[f"{m}_low"][i], numbers[f"{m}_high"][i] = percentile_interval(boot, LEVEL)
    best = next((tid for tid, c in zip(ids, compared) if c), None) if n_boot > 0 else None
    base = _baseline_id(experiment, df, baseline) if n_boot > 0 else None
    for prefix, ref in zip(COMPARISONS, (best, base)):
        for i in np.flatnonzero(compared) if ref is not None else ():
            for key, value in _paired(evidence.get(ids[i]), evidence.get(ref)).items():
                numbers[f"{prefix}_{key}"][i] = value
    for column, values in numbers.items():
        df[column] = values
    df["tied_with_best"] = pd.array([_tied(numbers_row) if c else pd.NA for c, numbers_row in
                                     zip(compared, df[list(PAIRED_COLUMNS)].to_dict("records"))],
                                    dtype="boolean")
    for pair, column in RESOLVED_FRONTS.items():
        metric = PARETO_PAIRS[pair][1]
        mine = [evidence.get(tid) if c else None for tid, c in zip(ids, compared)]
        df[column] = pd.array([
            False if not c else pd.NA if a is None else
            not any(b is not None and b is not a and _resolved_better(b, a, metric) for b in mine)
            for c, a in zip(compared, mine)], dtype="boolean")
    rest = [c for c in df.columns if c not in STAT_COLUMNS]
    at = rest.index("pareto_index") + 1
    df = df[[*rest[:at], *STAT_COLUMNS, *rest[at:]]]
    df.attrs["statistics"] = None if n_boot == 0 else _statistics_info(
        n_boot, seed, evidence, problems, best, base, [t for t, c in zip(ids, compared) if c],
        toy=experiment.spec.get("trainable") == "toy")
    return df


def _statistics_info(n_boot: int, seed: int, evidence: Mapping[str, _Evidence], problems: list[str],
                     best: str | None, base: str | None, compared: list[str], *, toy: bool = False
                     ) -> dict[str, Any]:
    """``table.attrs["statistics"]`` (see :func:`add_statistics`)."""
    notes = list(problems)
    lacking = [t for t in compared if t not in evidence]
    if lacking and toy:
        notes.append("the toy trainable (--trainable toy) trains nothing and saves no per-image predictions: "
                     "no intervals, paired tests or resolved fronts")
    elif lacking and len(lacking) == len(compared):
        notes.append(f"none of the {len(compared)} compared trials has saved per-image predictions for the "
                     "epoch the scope selected (a search of a hiercls before they were saved, or epochs "
                     "whose files were not kept): no intervals, paired tests or resolved fronts")
    elif lacking:
        notes.append(f"{len(lacking)} of {len(compared)} compared trials have no saved per-image "
                     f"predictions for the epoch the scope selected ({_id_list(lacking)}): their intervals, "
                     "paired tests, tied_with_best and pareto_resolved are empty (a run keeps its last "
                     "epoch's and its best epochs' predictions; runs of a hiercls before that keep none)")
    if lacking and best in lacking and len(lacking) < len(compared):
        notes.append(f"the best-ranked trial {best} has no saved predictions: the vs_best columns and "
                     "tied_with_best are empty")
    if base is None and compared:
        notes.append("no compared complete cross-entropy trial: the vs_baseline columns are empty (name a "
                     "baseline with --baseline TRIAL_ID)")
    elif base is not None and base not in evidence and len(lacking) < len(compared):
        notes.append(f"the baseline trial {base} has no saved predictions: the vs_baseline columns are empty")
    splits = {ev.split for t, ev in evidence.items() if t in compared}
    if len(splits) > 1:
        notes.append(f"the compared trials' predictions come from {len(splits)} validation splits: paired "
                     "tests and the resolved fronts compare only trials of one split (others stay empty)")
    return {"n_boot": n_boot, "seed": seed, "level": LEVEL, "best": best, "baseline": base,
            "images": sorted({len(ev.indices) for ev in evidence.values()}),
            "with_evidence": sum(t in evidence for t in compared), "notes": notes}
