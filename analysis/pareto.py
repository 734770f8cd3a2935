"""Pareto fronts of a ranked trial table: the pairs of metrics traded off, and the rows on each front.

The mask itself is :func:`hiercls.experiment.layout.pareto_mask` (shared with the search's summary); this
module holds what the table, the plots and the export read, so none of them imports another.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["PARETO_PAIRS", "RESOLVED_FRONTS", "pareto_front", "resolved_front"]

PARETO_PAIRS = {
    "pareto_error_severity": ("val_top1_error", "val_mistake_severity"),
    "pareto_error_hdist5": ("val_top1_error", "val_hdist@5"),
}
"""Table column (bool: on that front) -> the two metrics it trades off, both lower-is-better."""

RESOLVED_FRONTS = {
    "pareto_error_severity": "pareto_resolved",
    "pareto_error_hdist5": "pareto_resolved_hdist5",
}
"""Point-estimate front column -> the table column of its resolved front: the compared trials that no other
compared trial beats in both metrics by a resolved difference on the same validation images (McNemar's exact
test for top-1 error, a paired bootstrap interval for the second metric; see
:func:`analysis.rank.build_table`). Nullable bool: NA for a compared trial without per-image evidence."""


def pareto_front(table: pd.DataFrame, pair: str = "pareto_error_severity") -> pd.DataFrame:
    """The rows of ``table`` on the front ``pair`` (a :data:`PARETO_PAIRS` key), sorted by its first
    metric, then its second, then trial id."""
    x, y = PARETO_PAIRS[pair]
    return table[table[pair]].sort_values([x, y, "trial_id"], kind="stable")


def resolved_front(table: pd.DataFrame, pair: str = "pareto_error_severity") -> pd.DataFrame:
    """The rows of ``table`` on the resolved front of ``pair`` (its :data:`RESOLVED_FRONTS` column True; none
    when the table lacks the column), sorted as :func:`pareto_front`."""
    column = RESOLVED_FRONTS[pair]
    if column not in table.columns:
        return table.iloc[0:0]
    x, y = PARETO_PAIRS[pair]
    on = table[column].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return table[on].sort_values([x, y, "trial_id"], kind="stable")
