"""Pareto fronts of a ranked trial table: the pairs of metrics traded off, and the rows on each front.

The mask itself is :func:`hiercls.experiment.layout.pareto_mask` (shared with the search's summary); this
module holds what the table, the plots and the export read, so none of them imports another.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["PARETO_PAIRS", "pareto_front"]

PARETO_PAIRS = {
    "pareto_error_severity": ("val_top1_error", "val_mistake_severity"),
    "pareto_error_hdist5": ("val_top1_error", "val_hdist@5"),
}
"""Table column (bool: on that front) -> the two metrics it trades off, both lower-is-better."""


def pareto_front(table: pd.DataFrame, pair: str = "pareto_error_severity") -> pd.DataFrame:
    """The rows of ``table`` on the front ``pair`` (a :data:`PARETO_PAIRS` key), sorted by its first
    metric, then its second, then trial id."""
    x, y = PARETO_PAIRS[pair]
    return table[table[pair]].sort_values([x, y, "trial_id"], kind="stable")
