"""The Ray-free pieces of a search that the offline analysis reads too: the experiment folder's file
names, the trial-index key, how a trial's seed and its training config are made, and the Pareto mask.

Imports only the standard library, numpy and :mod:`hiercls.config`, so ``import analysis.rank`` never
imports Ray (nor torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from hiercls.config import TrainConfig

__all__ = ["SPEC_FILE", "SUMMARY_FILE", "TRIAL_INDEX", "pareto_mask", "trial_config", "trial_seed"]

SPEC_FILE = "search_spec.yaml"
"""The resolved search specification, written into the experiment folder before the first trial."""
SUMMARY_FILE = "summary.csv"
"""One row per trial, written when a search ends (also after Ctrl-C)."""
TRIAL_INDEX = "trial_index"
"""Config key carrying the trial's position in the search (seeds the trial; not a training key); the
searcher keeps it in every trial's ``params.json``."""


def trial_seed(search_seed: int, index: int | str) -> int:
    """A seed in 0..2**31-1 from the search seed and the trial's index in the search (Optuna's trial
    number; the trial id when there is none): the same search seed gives the same trial seeds
    (the first 4 bytes of SHA-256 of ``"{search_seed}/{index}"``, top bit cleared)."""
    digest = hashlib.sha256(f"{search_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def trial_config(
    base: Mapping[str, Any],
    searched: Mapping[str, Any],
    search_seed: int,
    trial_id: str,
    out_folder: str | None = None,
) -> TrainConfig:
    """The training config of one trial, as the search runs it and the analysis rebuilds it: the spec's
    fixed keys (``base``, :meth:`~hiercls.tune.spec.SearchSpec.base_config`) < the searched values
    (``searched``, its :data:`TRIAL_INDEX` key removed) < the seed :func:`trial_seed` draws from the
    search seed and the trial's index (its id when it has none) < ``out_folder``.

    Raises:
        ConfigError: unknown keys or wrong types (as :meth:`TrainConfig.from_dict`).
    """
    values = dict(searched)
    index = values.pop(TRIAL_INDEX, None)
    values = {**base, **values, "seed": trial_seed(search_seed, trial_id if index is None else index)}
    if out_folder is not None:
        values["out_folder"] = out_folder
    return TrainConfig.from_dict(values)


def pareto_mask(points: Any) -> np.ndarray:
    """Which rows of ``points`` (n x 2 numbers, lower is better on both) are Pareto-optimal: bool [n].

    A point is dominated when another is <= on both coordinates and < on at least one; equal points
    are all kept. Rows with a NaN (or infinite) coordinate are never on the front and dominate nothing.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = np.isfinite(pts).all(axis=1)
    mask = np.zeros(len(pts), dtype=bool)
    for i in np.flatnonzero(ok):
        others = pts[ok]
        dominated = np.any(np.all(others <= pts[i], axis=1) & np.any(others < pts[i], axis=1))
        mask[i] = not dominated
    return mask
