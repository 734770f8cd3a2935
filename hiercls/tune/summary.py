"""What a search produced: one row per trial from Ray's results, the best trial, the Pareto front, and
``summary.csv`` in the experiment folder.

:func:`summarize` reads Ray's ``ResultGrid`` (and the saved experiment state, for trials an interruption
left running) into rows ranked best first; :class:`SearchOutcome` holds them. The table printed after a
search is :func:`hiercls.tune.runner.format_table`. Imports no Ray.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hiercls.tune.constraints import constraint_values, is_feasible, read_bounds
from hiercls.tune.layout import SUMMARY_FILE, TRIAL_INDEX, pareto_mask
from hiercls.tune.spec import SearchSpec
from hiercls.tune.state import UNFINISHED, read_trial_states

__all__ = ["MULTI_METRICS", "SearchOutcome", "summarize"]

MULTI_METRICS = ("val_top1_error", "val_mistake_severity")


@dataclasses.dataclass
class SearchOutcome:
    """What a search produced: one row per trial (see :func:`summarize`), the best row (None if every
    trial failed), whether it was interrupted, and where the results live."""

    experiment_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool
    seconds: float
    pareto: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    bounds: dict[str, Any] | None = None
    """A constrained search's :data:`~hiercls.tune.constraints.CONSTRAINTS_FILE` contents (None: none, or
    its baseline never finished)."""

    @property
    def num_trials(self) -> int:
        return len(self.rows)

    @property
    def num_stopped_early(self) -> int:
        return sum(1 for r in self.rows if r["stopped_early"])

    def feasible_count(self) -> tuple[int, int]:
        """(feasible, judged): trials that ran in full with finite values, and how many of them meet every
        constraint (Optuna's COMPLETE trials and its feasible ones)."""
        judged = [r for r in self.rows if r.get("feasible") is not None]
        return sum(1 for r in judged if r["feasible"]), len(judged)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def summarize(results: Any, spec: SearchSpec, folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per trial: ``trial_id``, ``loss``, ``lr_schedule``, ``params`` (searched and resolved
    loss/schedule values), ``objective``, ``val_top1_error``, ``val_mistake_severity``, ``epochs``
    (run), ``status`` (ok, nan, error, unfinished: still running or pending when the search was
    interrupted), ``stopped_early`` (ASHA), ``path``; for a constrained search ``constraints``
    (``{metric: value - bound}``, empty when not judged) and ``feasible`` (True/False; None for a trial
    that did not run in full with finite values, or before the bounds are fixed); sorted best first
    (full-length trials first, then feasible ones).

    ``folder``: the Ray experiment the results are from (a grown search's part; default the experiment
    folder).

    Raises:
        ValueError: the experiment's ``constraints.json`` is unreadable.
    """
    # Ray's trial objects hold the id and searched config of a trial that never reported (its Result
    # has no metrics); whether a trial is still RUNNING/PENDING/PAUSED (an interrupted search) comes
    # from the saved experiment state, since the in-memory trials then call it TERMINATED
    trials = list(getattr(getattr(results, "_experiment_analysis", None), "trials", None) or [])
    saved = read_trial_states(folder if folder is not None else spec.experiment_dir)
    bounds = (read_bounds(spec.experiment_dir) or {}).get("bounds") if spec.constraints else None
    rows = []
    for i, result in enumerate(results):
        trial = trials[i] if len(trials) == len(results) else None
        metrics = dict(result.metrics or {})
        config = dict(result.config or getattr(trial, "config", None) or {})
        # the folder's name first: PB2 hands a continued trial its donor's last result (and trial_id)
        folder_name = Path(str(result.path)).name
        trial_id = str((folder_name.removeprefix("trial_") if folder_name.startswith("trial_") else "")
                       or getattr(trial, "trial_id", "") or metrics.get("trial_id") or folder_name)
        ray_status = str((saved.get(trial_id) or {}).get("status") or getattr(trial, "status", "") or "")
        params = dict(metrics.get("params") or {})
        params.update({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("params/")})
        params.update({k: v for k, v in config.items() if k not in ("loss", "lr_schedule", TRIAL_INDEX)})
        epochs = int(metrics.get("epoch", 0) or 0)
        if result.error is not None or ray_status == "ERROR":
            status = "error"
        elif ray_status in UNFINISHED and str(metrics.get("status", "ok")) == "ok":
            status = "unfinished"
        else:
            status = str(metrics.get("status", "error"))
        rows.append({
            "trial_id": trial_id,
            "loss": metrics.get("loss") or config.get("loss") or spec.train.get("loss", "cross-entropy"),
            "lr_schedule": metrics.get("lr_schedule") or config.get("lr_schedule")
            or spec.train.get("lr_schedule", "cosine"),
            "params": params,
            "objective": _number(metrics.get("objective")),
            "val_top1_error": _number(metrics.get("val_top1_error")),
            "val_mistake_severity": _number(metrics.get("val_mistake_severity")),
            "epochs": epochs,
            "status": status,
            "stopped_early": status == "ok" and 0 < epochs < spec.epochs,
            "path": str(result.path),
        })
        # judged as the searcher told Optuna: trials that ran in full, at their last epoch
        values = constraint_values(metrics, bounds) if bounds and status == "ok" and epochs >= spec.epochs \
            else None
        rows[-1]["constraints"] = values or {}
        rows[-1]["feasible"] = is_feasible(values)
    rows.sort(key=_rank_key)
    return rows


def _rank_key(row: Mapping[str, Any]) -> tuple:
    usable = row["status"] == "ok" and math.isfinite(row["objective"])
    # trials that ran their full length first (as analysis.rank and analysis.export rank them): an
    # early-stopped trial's value is from fewer epochs and not comparable
    # and a trial that breaks a constraint after every feasible one
    return (not usable, row["stopped_early"], row.get("feasible") is False,
            row["objective"] if usable else math.inf, row["trial_id"])


def _best(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The best usable row; never one that breaks a constraint (None when no row qualifies)."""
    usable = [r for r in rows if r["status"] == "ok" and math.isfinite(r["objective"])
              and r.get("feasible") is not False]
    return dict(min(usable, key=_rank_key)) if usable else None


def _pareto(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    pts = [r for r in rows if r["status"] == "ok" and r.get("feasible") is not False]
    on_front = pareto_mask([[r[m] for m in MULTI_METRICS] for r in pts])
    return sorted((dict(r) for r, on in zip(pts, on_front) if on), key=lambda r: r["val_top1_error"])


def _write_summary(outcome: SearchOutcome) -> None:
    """``summary.csv`` in the experiment folder, written atomically (an old one stays whole on failure).

    Raises:
        StorageError: it could not be written (naming the file and the OS error).
    """
    import io

    from hiercls.storage import atomic_write_text

    path = outcome.experiment_dir / SUMMARY_FILE
    keys = sorted({k for r in outcome.rows for k in r["params"]})
    bounded = sorted({m for r in outcome.rows for m in r.get("constraints") or {}})
    judged = outcome.bounds is not None
    fields = ["trial_id", "loss", "lr_schedule", *keys, "objective", "val_top1_error", "val_mistake_severity",
              "epochs", "status", "stopped_early", *(["feasible"] if judged else []),
              *[f"constraint/{m}" for m in bounded], "path"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in outcome.rows:
        extra = {f"constraint/{m}": v for m, v in (r.get("constraints") or {}).items()}
        writer.writerow({**{k: v for k, v in r.items() if k != "params"}, **r["params"], **extra})
    atomic_write_text(path, buffer.getvalue())
