"""What a search produced: one row per trial from Ray's results (:func:`summarize`), the best trial, the
Pareto front, and ``summary.csv`` in the experiment folder. Imports no Ray.

Each row names the trial's validation split (``val_split``: the first 12 hex characters of the
``val_split_sha256`` its epochs reported); :func:`split_warning` is the one line to print when the trials'
splits differ (a search of ``split_seed: trial``, or one resumed from before splits were recorded): their
values are then not comparable image for image (``python -m analysis.rank --split PREFIX`` ranks one split).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hiercls.experiment.layout import SUMMARY_FILE, TRIAL_INDEX, pareto_mask, searched_values
from hiercls.experiment.state import UNFINISHED, read_trial_states
from hiercls.storage import atomic_write_text
from hiercls.tune.constraints import constraint_values, is_feasible, read_bounds
from hiercls.tune.objective import MULTI_METRICS
from hiercls.tune.spec import SearchSpec

__all__ = ["MULTI_METRICS", "DiskResult", "SearchOutcome", "best_row", "pareto_rows", "rank_key",
           "results_on_disk", "split_warning", "summarize", "write_summary"]

SHORT_SPLIT = 12
"""Hex characters of ``val_split_sha256`` in the ``val_split`` column (as ``analysis.rank`` shows it)."""


@dataclasses.dataclass
class SearchOutcome:
    """What a search produced: one row per trial (:func:`summarize`), the best row (None if every trial
    failed), whether it was interrupted, and where the results live."""

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

    @property
    def split_warning(self) -> str | None:
        """:func:`split_warning` of the rows: one line to print under the table, or None."""
        return split_warning(self.rows)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class DiskResult(NamedTuple):
    """A trial's result as :func:`summarize` reads it, from the experiment folder instead of Ray: its last
    ``result.json`` record (``metrics``), its searched ``config``, its folder (``path``); ``error`` is always
    None (Ray's saved status says ERROR)."""

    metrics: dict[str, Any]
    config: dict[str, Any]
    path: Path
    error: Any = None


def results_on_disk(folder: Path) -> list[DiskResult]:
    """Every trial in the newest saved Ray state of ``folder`` (one part of a search), with its last
    complete ``result.json`` record: what a search interrupted without Ray (a lost GCS) can still rank."""
    out = []
    for trial_id, state in read_trial_states(folder).items():
        path = folder / str(state.get("relative_logdir") or f"trial_{trial_id}")
        metrics: dict[str, Any] = {}
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in (path / "result.json").read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    metrics = record if isinstance(record, dict) else metrics
        out.append(DiskResult(metrics, dict(state.get("config") or {}), path))
    return out


def summarize(results: Any, spec: SearchSpec, folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per trial of ``folder`` (a grown search's part; default the experiment folder), best first:
    ``trial_id``, ``loss``, ``lr_schedule``, ``params`` (searched and resolved loss/schedule values),
    ``objective``, ``val_top1_error``, ``val_mistake_severity``, ``epochs`` (run), ``status`` (ok, nan,
    error, unfinished: running or pending when the search was interrupted), ``stopped_early`` (ASHA),
    ``path``, ``constraints`` (``{metric: value - bound}``, empty when not judged), ``feasible``
    (None when not judged: not run in full with finite values, or no bounds) and ``val_split`` (the first 12
    hex characters of the reported ``val_split_sha256``; None when the trial reported none).

    Raises:
        ValueError: the experiment's ``constraints.json`` is unreadable.
    """
    # Ray's saved state: the status (an interrupted search's in-memory results call a RUNNING trial
    # TERMINATED) and the config of a trial that never reported
    saved = read_trial_states(folder if folder is not None else spec.experiment_dir)
    bounds = (read_bounds(spec.experiment_dir) or {}).get("bounds") if spec.constraints else None
    return sorted((_row(result, saved, bounds, spec) for result in results), key=rank_key)


def _row(result: Any, saved: Mapping[str, Any], bounds: Mapping[str, float] | None, spec: SearchSpec
         ) -> dict[str, Any]:
    """The summary row of one Ray result (see :func:`summarize`)."""
    metrics = dict(result.metrics or {})
    trial_id = _trial_id(result, metrics)
    state = saved.get(trial_id) or {}
    config = searched_values(result.config or state.get("config") or {})
    params = dict(metrics.get("params") or {})
    params.update({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("params/")})
    params.update({k: v for k, v in config.items() if k not in ("loss", "lr_schedule", TRIAL_INDEX)})
    epochs = int(metrics.get("epoch", 0) or 0)
    status = _status(result, str(state.get("status") or ""), metrics)
    # judged as the searcher told Optuna: trials that ran in full, at their last epoch
    judged = bounds and status == "ok" and epochs >= spec.epochs
    values = constraint_values(metrics, bounds) if judged else None
    return {
        "trial_id": trial_id,
        "loss": metrics.get("loss") or config.get("loss") or spec.train.get("loss", "cross-entropy"),
        "lr_schedule": metrics.get("lr_schedule") or config.get("lr_schedule")
        or spec.train.get("lr_schedule", "cosine"),
        "params": params, "objective": _number(metrics.get("objective")),
        "val_top1_error": _number(metrics.get("val_top1_error")),
        "val_mistake_severity": _number(metrics.get("val_mistake_severity")),
        "epochs": epochs, "status": status, "stopped_early": status == "ok" and 0 < epochs < spec.epochs,
        "path": str(result.path), "constraints": values or {}, "feasible": is_feasible(values),
        "val_split": _split(metrics),
    }


def _split(metrics: Mapping[str, Any]) -> str | None:
    """The first :data:`SHORT_SPLIT` hex characters of the reported ``val_split_sha256``, or None."""
    value = metrics.get("val_split_sha256")
    return str(value)[:SHORT_SPLIT] if value else None


def split_warning(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """One line when the trials that reported an epoch were validated on different images: several
    ``val_split`` values, or some trials without one beside others with one; None when they share one split
    (or none records any: a search of a hiercls before splits were recorded, which the plan already says).
    The search is not refused (it already ran): its values are not comparable image for image."""
    reported = [r for r in rows if r.get("epochs")]
    splits = sorted({r["val_split"] for r in reported if r.get("val_split")})
    missing = sum(1 for r in reported if not r.get("val_split"))
    if len(splits) < 2 and not (splits and missing):
        return None
    what = f"{len(splits)} validation splits ({', '.join(splits[:4])}{', ...' if len(splits) > 4 else ''})"
    if missing:
        what += f" and {missing} trial(s) recording none"
    return (f"the trials were validated on {what}: their values differ also by which images each drew; "
            "rank one split with python -m analysis.rank EXPERIMENT_DIR --split PREFIX (the val_split column "
            "of summary.csv)")


def _trial_id(result: Any, metrics: Mapping[str, Any]) -> str:
    """The trial's id from its folder's name first: PB2 hands a continued trial its donor's last result."""
    folder_name = Path(str(result.path)).name
    return str((folder_name.removeprefix("trial_") if folder_name.startswith("trial_") else "")
               or metrics.get("trial_id") or folder_name)


def _status(result: Any, ray_status: str, metrics: Mapping[str, Any]) -> str:
    """error (Ray's error, or its saved status), unfinished (running or pending when interrupted), else the
    trial's own (ok or nan)."""
    if result.error is not None or ray_status == "ERROR":
        return "error"
    if ray_status in UNFINISHED and str(metrics.get("status", "ok")) == "ok":
        return "unfinished"
    return str(metrics.get("status", "error"))


def rank_key(row: Mapping[str, Any]) -> tuple:
    usable = row["status"] == "ok" and math.isfinite(row["objective"])
    # full-length trials first (an early-stopped trial's value is from fewer epochs), as analysis.rank
    # ranks them; a trial that breaks a constraint after every feasible one
    return (not usable, row["stopped_early"], row.get("feasible") is False,
            row["objective"] if usable else math.inf, row["trial_id"])


def best_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The best usable row; never one that breaks a constraint (None when no row qualifies)."""
    usable = [r for r in rows if r["status"] == "ok" and math.isfinite(r["objective"])
              and r.get("feasible") is not False]
    return dict(min(usable, key=rank_key)) if usable else None


def pareto_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    pts = [r for r in rows if r["status"] == "ok" and r.get("feasible") is not False]
    on_front = pareto_mask([[r[m] for m in MULTI_METRICS] for r in pts])
    return sorted((dict(r) for r, on in zip(pts, on_front) if on), key=lambda r: r["val_top1_error"])


def write_summary(outcome: SearchOutcome) -> None:
    """``summary.csv`` in the experiment folder, written atomically.

    Raises:
        StorageError: it could not be written (naming the file and the OS error).
    """
    path = outcome.experiment_dir / SUMMARY_FILE
    keys = sorted({k for r in outcome.rows for k in r["params"]})
    bounded = sorted({m for r in outcome.rows for m in r.get("constraints") or {}})
    judged = outcome.bounds is not None
    fields = ["trial_id", "loss", "lr_schedule", *keys, "objective", "val_top1_error", "val_mistake_severity",
              "epochs", "status", "stopped_early", *(["feasible"] if judged else []),
              *[f"constraint/{m}" for m in bounded], "val_split", "path"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in outcome.rows:
        extra = {f"constraint/{m}": v for m, v in (r.get("constraints") or {}).items()}
        writer.writerow({**{k: v for k, v in r.items() if k != "params"}, **r["params"], **extra})
    atomic_write_text(path, buffer.getvalue())
