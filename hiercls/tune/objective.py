"""The objective of a search: the single number it minimises, parsed from the ``objective`` setting
(:func:`parse_objective`: one of :data:`OBJECTIVE_METRICS`, or ``val_top1_error + W * val_mistake_severity``
with a number ``W >= 0``). Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MISTAKE_SEVERITY_WARNING", "MULTI_METRICS", "OBJECTIVE_METRICS", "Objective", "parse_objective"]

MULTI_METRICS = ("val_top1_error", "val_mistake_severity")
"""What a multi-objective (NSGA-II) search minimises: its Pareto front."""

MISTAKE_SEVERITY_WARNING = (
    "objective val_mistake_severity alone rewards many small mistakes over few large ones (a model "
    "that is wrong more often, but always near the truth, scores well); prefer val_hdist@1 or "
    "'val_top1_error + W * val_mistake_severity'"
)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The single number a search minimises, computed from one epoch's report: ``metric`` (a report key),
    or for ``metric=None`` the weighted sum ``val_top1_error + weight * val_mistake_severity``."""

    text: str
    metric: str | None
    weight: float = 0.0

    @property
    def metrics(self) -> tuple[str, ...]:
        """The report keys it reads."""
        return (self.metric,) if self.metric is not None else MULTI_METRICS

    def __call__(self, record: Mapping[str, Any]) -> float:
        if self.metric is not None:
            return float(record.get(self.metric, math.nan))
        top1 = float(record.get("val_top1_error", math.nan))
        severity = float(record.get("val_mistake_severity", math.nan))
        if self.weight == 0.0:
            return top1
        if top1 == 0.0 and math.isnan(severity):  # no mistakes at all: severity is undefined
            return 0.0
        return top1 + self.weight * severity


OBJECTIVE_METRICS = ("val_top1_error", "val_hdist@1", "val_hdist@5", "val_mistake_severity")
_WEIGHTED = re.compile(r"^\s*val_top1_error\s*\+\s*(?P<w>[0-9.eE+-]+)\s*\*\s*val_mistake_severity\s*$")


def parse_objective(text: str) -> Objective:
    """``text`` as an :class:`Objective`.

    Raises:
        ValueError: not one of the accepted forms (the message lists them).
    """
    text = str(text).strip()
    if text in OBJECTIVE_METRICS:
        return Objective(text, text)
    match = _WEIGHTED.match(text)
    if match:
        try:
            weight = float(match.group("w"))
        except ValueError:
            weight = -1.0
        if math.isfinite(weight) and weight >= 0:
            return Objective(text, None, weight)
    raise ValueError(
        f"objective {text!r} is not accepted; valid: {', '.join(OBJECTIVE_METRICS)}, or "
        "'val_top1_error + W * val_mistake_severity' with a number W >= 0"
    )

