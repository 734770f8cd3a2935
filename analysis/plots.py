"""Plots of a ranked search (PNG, matplotlib's Agg backend), written by ``python -m analysis.rank``.

* ``tradeoff_severity.png``: top-1 error (x) against mistake severity (y) for every trial with values,
  coloured by loss family (filled: compared trials; hollow: stopped early / unfinished), the Pareto
  front of the compared trials drawn as a step line, the best cross-entropy trial starred: the
  trade-off figure of Bertinetto et al., "Making Better Mistakes", CVPR 2020. Where the table has
  per-image intervals (:func:`analysis.rank.add_statistics`), each trial carries its 95 % bootstrap
  intervals as error bars (x: top-1 error, y: the other metric) and the front drawn is the resolved one
  (``pareto_resolved``: the trials no other trial beats in both metrics by a resolved difference), the
  point-estimate front a dotted grey step line beside it.
* ``tradeoff_hdist5.png``: the same against hdist@5 (its resolved front ``pareto_resolved_hdist5``).
* ``learning_curves.png``: val top-1 error and mistake severity per epoch of the best trials.
* ``params_vs_objective.png``: each searched parameter against the search objective.
* ``param_importances.png``: importances of the searched parameters for the objective, from an Optuna
  study rebuilt in memory from the compared trials' parameters and objective values
  (``optuna.trial.create_trial`` / ``study.add_trial``; Optuna's default evaluator, PED-ANOVA, which
  handles conditional parameters). Skipped, with a note, below :data:`MIN_IMPORTANCE_TRIALS` trials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.experiment import Experiment, loss_family, searched_params  # noqa: E402
from analysis.pareto import PARETO_PAIRS, RESOLVED_FRONTS, pareto_front, resolved_front  # noqa: E402
from hiercls.registry import LOSSES  # noqa: E402

__all__ = [
    "MIN_IMPORTANCE_TRIALS",
    "PLOT_FILES",
    "importance_study",
    "make_plots",
    "param_importances",
    "plot_importances",
    "plot_learning_curves",
    "plot_params",
    "plot_tradeoff",
]

MIN_IMPORTANCE_TRIALS = 5
PLOT_FILES = {
    "tradeoff_severity": "tradeoff_severity.png",
    "tradeoff_hdist5": "tradeoff_hdist5.png",
    "learning_curves": "learning_curves.png",
    "params_vs_objective": "params_vs_objective.png",
    "param_importances": "param_importances.png",
}
LABELS = {
    "val_top1_error": "val top-1 error (fraction)",
    "val_mistake_severity": "val mistake severity (LCA height)",
    "val_hdist@5": "val hdist@5 (LCA height)",
    "objective": "objective",
}


# the trial table's column that colours the plots: the method (analysis.experiment.loss_family), so Barz &
# Denzler's, DeViSE's and YOLO-v2's trials are their own families beside each loss
_FAMILY = "family"


def _colours(families: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per loss family: the losses named by themselves in the registry's order, YOLO-v2,
    then the other families (B&D, DeViSE) by name."""
    own = [n for n in LOSSES.names() if loss_family(n, {}) == n]
    names = list(dict.fromkeys([*own, "YOLO-v2", *sorted(set(families))]))
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_tradeoff(table: pd.DataFrame, pair: str, path: Path, title: str = "") -> Path:
    """Top-1 error against the second metric of ``pair`` (a :data:`analysis.pareto.PARETO_PAIRS` key).

    Every trial with finite values is drawn, coloured by loss family (hollow when not compared); the
    front of the compared trials is a step line; the best compared cross-entropy trial (lowest top-1
    error) is starred. In a constrained search (a ``feasible`` column) infeasible trials carry a red
    cross and a bound on an axis's metric is a dashed red line. With per-image intervals in the table
    (``<metric>_low`` / ``<metric>_high``), each trial that has them carries them as error bars, and the
    front drawn is the resolved front (:data:`analysis.pareto.RESOLVED_FRONTS`: a line through its trials
    in order of top-1 error, each ringed), the point-estimate step front dotted grey behind it.
    """
    x, y = PARETO_PAIRS[pair]
    data = table[np.isfinite(table[x].astype(float)) & np.isfinite(table[y].astype(float))]
    colours = _colours(list(table[_FAMILY].dropna().astype(str)))
    fig, ax = plt.subplots(figsize=(7, 5))
    for family, group in data.groupby(data[_FAMILY].fillna("?").astype(str), sort=True):
        colour = colours.get(family, "grey")
        done = group[group["compared"]]
        rest = group[~group["compared"]]
        if len(done):
            ax.scatter(done[x], done[y], color=colour, label=family, s=40, zorder=3)
        if len(rest):
            ax.scatter(rest[x], rest[y], facecolors="none", edgecolors=colour, s=40, zorder=3,
                       label=f"{family} (not compared)")
    if "feasible" in data.columns:  # a constrained search: a cross on each trial that breaks a bound
        bad = data[data["feasible"].fillna(True).eq(False)]
        if len(bad):
            ax.scatter(bad[x], bad[y], marker="x", s=70, color="red", zorder=6,
                       label=f"infeasible ({len(bad)})")
        for metric, bound in table.attrs.get("constraint_bounds", {}).items():
            if metric == x:
                ax.axvline(bound, color="red", ls="--", lw=1, label=f"{x} <= {bound:.4g}")
            elif metric == y:
                ax.axhline(bound, color="red", ls="--", lw=1, label=f"{y} <= {bound:.4g}")
    _draw_intervals(ax, data, x, y, colours)
    _draw_front(ax, table, pair)
    ce = data[(data["loss"] == "cross-entropy") & data["compared"]].sort_values([x, y, "trial_id"])
    if len(ce):
        best = ce.iloc[0]
        ax.scatter([best[x]], [best[y]], marker="*", s=260, color="gold", edgecolors="black", zorder=5,
                   label=f"best cross-entropy ({best['trial_id']})")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.set_title(title or f"{x} vs {y}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _draw_intervals(ax, data: pd.DataFrame, x: str, y: str, colours: Mapping[str, Any]) -> None:
    """Error bars (a horizontal and a vertical segment from each interval's low to its high end) of the rows
    with both metrics' intervals (columns ``<metric>_low`` / ``_high``)."""
    ends = [f"{x}_low", f"{x}_high", f"{y}_low", f"{y}_high"]
    if not all(c in data.columns for c in ends):
        return
    bars = data[np.isfinite(data[ends].astype(float)).all(axis=1)]
    for family, group in bars.groupby(bars[_FAMILY].fillna("?").astype(str), sort=True):
        # each interval drawn from its low to its high end (a percentile interval need not hold the point)
        colour = colours.get(family, "grey")
        ax.hlines(group[y], group[ends[0]], group[ends[1]], colors=[colour], lw=0.8, alpha=0.6, zorder=2)
        ax.vlines(group[x], group[ends[2]], group[ends[3]], colors=[colour], lw=0.8, alpha=0.6, zorder=2)
    if len(bars):  # a legend entry saying what the bars are
        ax.plot([], [], color="grey", lw=0.8, label="95 % bootstrap intervals over validation images")


def _draw_front(ax, table: pd.DataFrame, pair: str) -> None:
    """The resolved front where the table has one (the point-estimate front dotted beside it), else the
    point-estimate front as a step line; a note when there is none."""
    x, y = PARETO_PAIRS[pair]
    front = pareto_front(table, pair)
    column = RESOLVED_FRONTS[pair]
    resolved = resolved_front(table, pair)
    if len(resolved) and column in table.columns:
        if len(front):
            ax.step(front[x], front[y], where="post", color="grey", lw=0.9, ls=":", zorder=1,
                    label="point-estimate front")
        ax.plot(resolved[x], resolved[y], color="black", lw=1.2, zorder=2)
        ax.plot(resolved[x], resolved[y], linestyle="none", marker="o", ms=11, mfc="none", mec="black",
                zorder=4, label=f"resolved front ({len(resolved)} trial{'s' if len(resolved) > 1 else ''}: "
                "none beaten in both by a resolved difference)")
    elif len(front):
        # the ring marks each front trial (also a front of one); the step line joins them
        ax.step(front[x], front[y], where="post", color="black", lw=1.2, zorder=2)
        ax.plot(front[x], front[y], linestyle="none", marker="o", ms=11, mfc="none", mec="black", zorder=4,
                label=f"Pareto front ({len(front)} trial{'s' if len(front) > 1 else ''})")
    else:
        ax.text(0.02, 0.02, "no Pareto front: no trial ran its full length", transform=ax.transAxes,
                fontsize=8, color="dimgray")


def plot_learning_curves(experiment: Experiment, table: pd.DataFrame, path: Path, top: int = 5) -> Path:
    """Val top-1 error and mistake severity per epoch of the ``top`` best trials (table order), the
    epoch the scope selected circled."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    chosen = table[table["epochs_run"] > 0].head(top)
    colours = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(chosen.iterrows()):
        trial = experiment.trial(row["trial_id"])
        epochs = [int(r["epoch"]) for r in trial.records]
        label = f"{row['trial_id']} ({row['loss']})"
        for ax, metric in zip(axes, ("val_top1_error", "val_mistake_severity")):
            values = [float(r.get(metric, math.nan)) for r in trial.records]
            ax.plot(epochs, values, marker="o", ms=3, color=colours(i % 10), label=label)
            if not pd.isna(row["epoch"]):
                ax.scatter([row["epoch"]], [row[metric]], s=90, facecolors="none", edgecolors=colours(i % 10))
    for ax, metric in zip(axes, ("val_top1_error", "val_mistake_severity")):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(LABELS[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"learning curves of the best {len(chosen)} trials ({experiment.name})")
    return _save(fig, path)


def _distributions(spec: Mapping[str, Any]) -> dict[str, Any]:
    """name -> optuna distribution of every searched key (a key in several branches: their union)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in searched_params(spec):
        if p.kind in ("choice", "grid"):  # a grid: the values it lists (lists of numbers left out)
            old = list(out[p.name].choices) if isinstance(out.get(p.name), CategoricalDistribution) else []
            values = [v for v in p.values if not isinstance(v, (list, tuple))]
            if values or old:
                out[p.name] = CategoricalDistribution(list(dict.fromkeys([*old, *values])))
            continue
        low, high = p.low, p.high
        old = out.get(p.name)
        if old is not None and not isinstance(old, CategoricalDistribution):
            low, high = min(low, old.low), max(high, old.high)
        if p.kind == "int":
            out[p.name] = IntDistribution(int(low), int(high), log=p.log)
        else:
            out[p.name] = FloatDistribution(float(low), float(high), log=p.kind == "loguniform")
    return out


def _widen(dist: Any, value: Any) -> Any:
    """``dist`` extended to hold ``value`` (a value outside the saved range, e.g. a hand-set point)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return dist if value in dist.choices else CategoricalDistribution([*dist.choices, value])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high = min(dist.low, value), max(dist.high, value)
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(low), int(high), log=dist.log)
    if dist.log and low <= 0:
        return FloatDistribution(float(low), float(high))
    return FloatDistribution(float(low), float(high), log=dist.log)


def importance_study(experiment: Experiment, table: pd.DataFrame):
    """An in-memory Optuna study with one COMPLETE trial per compared row with a finite objective: the
    trial's searched parameters (only those of its branch) and the objective at the scope's epoch."""
    import optuna

    base = _distributions(experiment.spec)
    study = optuna.create_study(direction="minimize")
    rows = table[table["compared"] & np.isfinite(table["objective"].astype(float))]
    for _, row in rows.iterrows():
        trial = experiment.trial(row["trial_id"])
        params, dists = {}, {}
        for name, value in trial.params.items():
            if name not in base:
                continue
            dist = _widen(base[name], value)
            if dist is None:
                continue
            base[name] = dist
            params[name], dists[name] = value, dist
        if params:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                      value=float(row["objective"])))
    return study


def param_importances(experiment: Experiment, table: pd.DataFrame) -> tuple[dict[str, float] | None, str]:
    """``(importances, note)``: the searched parameters' importances for the objective (None with the
    reason in ``note`` when there are too few compared trials or the evaluator fails)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = importance_study(experiment, table)
        n = len(study.trials)
        if n < MIN_IMPORTANCE_TRIALS:
            return None, (
                f"parameter importances skipped: {n} compared trial(s) with a finite objective, at least "
                f"{MIN_IMPORTANCE_TRIALS} needed"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return None, f"parameter importances skipped: {err}"
    finally:
        optuna.logging.set_verbosity(level)
    if not importances:
        return None, "parameter importances skipped: no searched parameter varies"
    return dict(importances), f"parameter importances from {n} trials"


def plot_importances(importances: Mapping[str, float], path: Path, title: str = "") -> Path:
    """Horizontal bars, most important on top."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    ax.set_title(title or "parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_params(experiment: Experiment, table: pd.DataFrame, path: Path) -> Path | None:
    """One panel per searched parameter: its value (x; log axis for log ranges; categories spread out)
    against the objective at the scope's epoch, coloured by loss family. None when nothing is searched."""
    from optuna.distributions import CategoricalDistribution

    dists = _distributions(experiment.spec)
    if not dists:
        return None
    data = table[np.isfinite(table["objective"].astype(float))]
    colours = _colours(list(table[_FAMILY].dropna().astype(str)))
    n = len(dists)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, dist) in zip(axes.flat, dists.items()):
        xs, ys, cs, filled = [], [], [], []
        for _, row in data.iterrows():
            value = experiment.trial(row["trial_id"]).params.get(name)
            if value is None and name not in experiment.trial(row["trial_id"]).params:
                continue
            xs.append(value)
            ys.append(float(row["objective"]))
            cs.append(colours.get(str(row[_FAMILY]), "grey"))
            filled.append(bool(row["compared"]))
        if isinstance(dist, CategoricalDistribution):
            labels = [str(c) for c in dist.choices]
            rng = np.random.default_rng(0)
            xs = [labels.index(str(v)) + rng.uniform(-0.15, 0.15) if str(v) in labels else -1 for v in xs]
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        else:
            low, high = float(min([dist.low, *xs])), float(max([dist.high, *xs]))
            if getattr(dist, "log", False):
                ax.set_xscale("log")
                ax.set_xlim(low / 1.25, high * 1.25)  # the searched range: where in it the trials lie
            else:
                pad = 0.04 * (high - low or 1.0)
                ax.set_xlim(low - pad, high + pad)
        for x, y, c, f in zip(xs, ys, cs, filled):
            ax.scatter([x], [y], color=c if f else "none", edgecolors=c, s=30)
        if not xs:
            ax.text(0.5, 0.5, f"no trial with a finite objective has {name}", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="dimgray")
        ax.set_xlabel(name)
        ax.set_ylabel(experiment.objective_text if len(experiment.objective_text) < 30 else "objective",
                      fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"searched parameters against the objective ({experiment.name}; hollow: not compared)")
    families = sorted(set(data[_FAMILY].dropna().astype(str)))
    handles = [plt.Line2D([], [], linestyle="none", marker="o", color=colours.get(f, "grey"), label=f)
               for f in families]
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    return _save(fig, path)


def make_plots(experiment: Experiment, table: pd.DataFrame, out: Path) -> tuple[list[Path], list[str]]:
    """Every plot of this module into ``out``; returns the files written and notes on skipped plots."""
    out = Path(out)
    written, notes = [], []
    scope = str(table["scope"].iloc[0]) if len(table) else "best"
    written.append(plot_tradeoff(table, "pareto_error_severity", out / PLOT_FILES["tradeoff_severity"],
                                 f"{experiment.name}: top-1 error vs mistake severity (scope {scope})"))
    written.append(plot_tradeoff(table, "pareto_error_hdist5", out / PLOT_FILES["tradeoff_hdist5"],
                                 f"{experiment.name}: top-1 error vs hdist@5 (scope {scope})"))
    written.append(plot_learning_curves(experiment, table, out / PLOT_FILES["learning_curves"]))
    params_plot = plot_params(experiment, table, out / PLOT_FILES["params_vs_objective"])
    if params_plot is None:
        notes.append("parameter plot skipped: the spec searches no parameter")
    else:
        written.append(params_plot)
    importances, note = param_importances(experiment, table)
    if importances is None:
        notes.append(note)
    else:
        written.append(plot_importances(importances, out / PLOT_FILES["param_importances"],
                                        f"{experiment.name}: importances for {experiment.objective_text} "
                                        f"({note.split('from ')[-1]})"))
    for name in PLOT_FILES.values():  # a plot skipped now must not stay behind from an earlier ranking
        stale = out / name
        if stale not in written and stale.is_file():
            stale.unlink()
            notes.append(f"removed {stale} from an earlier ranking (not made this time)")
    return written, notes
