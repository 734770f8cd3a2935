"""Constrained searches: "how far can mistake severity fall while top-1 error stays within a margin of the
cross-entropy baseline?"

A constraint is one line ``METRIC <= BOUND`` (``--constraint``, repeatable; ``constraints:`` in a space
file): ``METRIC`` one of :data:`CONSTRAINT_METRICS`, ``BOUND`` a number or ``baseline [+|- D]``, relative
to the search's first ``points_to_evaluate`` trial, which the searcher runs alone to full length first, so
every bound is a fixed number when later trials are told to Optuna. A finished trial's constraint value is
``value - bound`` at its last epoch, feasible when <= 0 (Optuna's convention, set with
``Trial.set_constraint``); an infeasible trial is never reported as best. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hiercls.storage import atomic_write_text

__all__ = ["CONSTRAINTS_FILE", "CONSTRAINT_METRICS", "Constraint", "constraint_values", "merge_bounds",
           "is_feasible", "parse_constraint", "read_bounds", "write_bounds"]

CONSTRAINTS_FILE = "constraints.json"
"""The resolved bounds of a constrained search, in the experiment folder: ``{"constraints": [text...],
"bounds": {metric: number}, "baseline": {"trial_id", "values": {metric: number}} or null}``."""

CONSTRAINT_METRICS = ("val_top1_error", "val_hdist@1", "val_hdist@5", "val_hdist@10", "val_hdist@20",
                      "val_mistake_severity", "val_coarse_error")
"""The report keys a constraint may bound (each a fraction or a hierarchical distance; lower is better)."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FORM = re.compile(
    rf"^\s*(?P<metric>[\w@/]+)\s*<=\s*(?:(?P<number>{_NUMBER})|baseline\s*(?:(?P<sign>[-+])\s*"
    rf"(?P<offset>{_NUMBER}))?)\s*$"
)
_VALID = ("'METRIC <= NUMBER' or 'METRIC <= baseline [+|- NUMBER]' with METRIC one of "
          + ", ".join(CONSTRAINT_METRICS))


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``metric <= bound``: ``bound`` a number, or (``relative``) the baseline trial's value plus
    ``offset`` (same unit as the metric: a fraction for errors, a distance for hdist/severity)."""

    text: str
    metric: str
    bound: float | None = None
    offset: float = 0.0

    @property
    def relative(self) -> bool:
        return self.bound is None

    def resolve(self, baseline: Mapping[str, float] | None) -> float:
        """The bound as a number; ``baseline`` holds the baseline trial's metric values.

        Raises:
            ValueError: a relative constraint without the baseline's value of its metric.
        """
        if not self.relative:
            return float(self.bound)
        value = None if baseline is None else baseline.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"constraint {self.text!r}: the baseline trial has no finite {self.metric}")
        return float(value) + self.offset


def parse_constraint(text: str) -> Constraint:
    """``text`` as a :class:`Constraint`.

    Raises:
        ValueError: not one of the accepted forms, or an unknown metric (the message lists the valid ones).
    """
    text = str(text).strip()
    match = _FORM.match(text)
    if not match:
        raise ValueError(f"constraint {text!r} is not accepted; valid: {_VALID}")
    metric = match.group("metric")
    if metric not in CONSTRAINT_METRICS:
        raise ValueError(f"constraint {text!r}: unknown metric {metric!r}; valid: "
                         f"{', '.join(CONSTRAINT_METRICS)}")
    if match.group("number") is not None:
        bound = float(match.group("number"))
        if not math.isfinite(bound):
            raise ValueError(f"constraint {text!r}: the bound must be a finite number")
        return Constraint(text, metric, bound=bound)
    offset = float(match.group("offset") or 0.0) * (-1.0 if match.group("sign") == "-" else 1.0)
    if not math.isfinite(offset):
        raise ValueError(f"constraint {text!r}: the offset must be a finite number")
    return Constraint(text, metric, offset=offset)


def constraint_values(record: Mapping[str, Any], bounds: Mapping[str, float]) -> dict[str, float] | None:
    """``{metric: value - bound}`` for each bounded metric of ``record`` (one epoch's report); None when
    a value is missing or not finite (a NaN trial has no constraint values). Zero or less is feasible."""
    out: dict[str, float] = {}
    for metric, bound in bounds.items():
        try:
            value = float(record.get(metric, math.nan))
        except (TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        out[metric] = value - float(bound)
    return out


def is_feasible(values: Mapping[str, float] | None) -> bool | None:
    """Whether constraint values (:func:`constraint_values`) all satisfy ``<= 0``; None for no values."""
    return None if values is None else all(v <= 0.0 for v in values.values())


def merge_bounds(constraints: Sequence[Constraint], baseline: Mapping[str, float] | None) -> dict[str, float]:
    """One bound per metric: the tightest of the constraints on it (``baseline``: the baseline's values).

    Raises:
        ValueError: a relative constraint and no baseline value for its metric.
    """
    bounds: dict[str, float] = {}
    for c in constraints:
        bounds[c.metric] = min(c.resolve(baseline), bounds.get(c.metric, math.inf))
    return bounds


def write_bounds(experiment_dir: str | Path, constraints: Sequence[Constraint], bounds: Mapping[str, float],
                 baseline: Mapping[str, Any] | None) -> Path:
    """:data:`CONSTRAINTS_FILE` in ``experiment_dir``, written atomically.

    Raises:
        StorageError: it could not be written.
    """
    path = Path(experiment_dir) / CONSTRAINTS_FILE
    payload = {"constraints": [c.text for c in constraints], "bounds": dict(bounds), "baseline": baseline}
    atomic_write_text(path, json.dumps(payload, indent=2))
    return path


def read_bounds(experiment_dir: str | Path) -> dict[str, Any] | None:
    """The contents of :data:`CONSTRAINTS_FILE` (plain JSON); None when the search has none, or its bounds
    were never fixed (the baseline trial did not finish).

    Raises:
        ValueError: the file is not valid JSON of the expected shape (the message names it).
    """
    path = Path(experiment_dir) / CONSTRAINTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        bounds = {str(k): float(v) for k, v in data["bounds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable constraints file: {err}") from err
    return {**data, "bounds": bounds}
