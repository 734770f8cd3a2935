"""The experiment folder's file names, the trial-index key, a trial's seed and training config, and the
Pareto mask: what the search writes and the offline analysis reads back. Imports only the standard
library, numpy and :mod:`hiercls.config`, so ``import analysis.rank`` imports neither Ray nor torch.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hiercls.config import TrainConfig

__all__ = ["SPEC_FILE", "SUMMARY_FILE", "TRIAL_INDEX", "log_key", "pareto_mask", "searched_values",
           "trial_config", "trial_seed"]

SPEC_FILE = "search_spec.yaml"
"""The resolved search specification, written into the experiment folder before the first trial."""
SUMMARY_FILE = "summary.csv"
"""One row per trial, written when a search ends (also after Ctrl-C)."""
TRIAL_INDEX = "trial_index"
"""Config key carrying the trial's position in the search (seeds the trial; not a training key); the
searcher keeps it in every trial's ``params.json``."""

_LOG_KEY = re.compile(r"log10\((?P<name>\w+)\)")


def log_key(name: str) -> str:
    """The config key under which a PB2 search carries a log-scale value (``log10(lr)`` holds log10 of
    ``lr``), so that PB2, which moves values linearly, moves ``lr`` in log space."""
    return f"log10({name})"


def searched_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's searched values from its config (Ray's ``params.json``, its result's or state's copy), each
    :func:`log_key` entry turned back into its value (``{"log10(lr)": -2.0}`` -> ``{"lr": 0.01}``), to 15
    significant digits: a value written with fewer (``0.05``, encoded as ``math.log10(0.05)``) comes back
    exactly."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        match = _LOG_KEY.fullmatch(str(key))
        if match and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[match.group("name")] = float(f"{10.0 ** float(value):.15g}")
        else:
            out[key] = value
    return out


def trial_seed(search_seed: int, index: int | str) -> int:
    """A seed in 0..2**31-1 from the search seed and the trial's index (Optuna's trial number, else the
    trial id): the first 4 bytes of SHA-256 of ``"{search_seed}/{index}"``, top bit cleared."""
    digest = hashlib.sha256(f"{search_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def trial_config(base: Mapping[str, Any], searched: Mapping[str, Any], search_seed: int, trial_id: str,
                 out_folder: str | None = None) -> TrainConfig:
    """The training config of one trial, as the search runs it and the analysis rebuilds it: the spec's
    fixed keys (``base``) < the searched values (:data:`TRIAL_INDEX` removed, log-scale keys decoded) <
    :func:`trial_seed` of the trial's index (its id when it has none), unless the trial's values set
    ``seed`` (a grid over seeds) < ``out_folder``.

    Raises:
        ConfigError: unknown keys or wrong types (as :meth:`TrainConfig.from_dict`).
    """
    values = searched_values(searched)
    index = values.pop(TRIAL_INDEX, None)
    if values.get("seed") is None:
        values["seed"] = trial_seed(search_seed, trial_id if index is None else index)
    values = {**base, **values}
    if out_folder is not None:
        values["out_folder"] = out_folder
    return TrainConfig.from_dict(values)


def pareto_mask(points: Any) -> np.ndarray:
    """Which rows of ``points`` (n x 2, lower is better on both) are Pareto-optimal: bool [n]. Equal points
    are all kept; rows with a non-finite coordinate are never on the front and dominate nothing."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = np.isfinite(pts).all(axis=1)
    mask = np.zeros(len(pts), dtype=bool)
    for i in np.flatnonzero(ok):
        others = pts[ok]
        dominated = np.any(np.all(others <= pts[i], axis=1) & np.any(others < pts[i], axis=1))
        mask[i] = not dominated
    return mask
