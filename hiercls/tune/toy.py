"""A cheap stand-in for :func:`hiercls.tune.trainable.train_trial`: no data, no training (``--trainable toy``,
the tests and the overhead benchmark).

Every epoch a toy trial reports ``toy_value + TRADE_ERROR * alpha + 1 / epoch`` as ``val_top1_error`` and
``2 + toy_value - TRADE_SEVERITY * alpha`` as ``val_mistake_severity`` (HXE's ``alpha``, 0 if none, trades
one for the other as in Bertinetto et al. 2020, Fig. 3, so constrained searches have a known optimum); it
goes NaN when ``lr >= 1e5``. Logs in the experiment folder, so tests can check no finished trial ran
twice: ``toy_starts.log`` (``trial_id first_epoch``), ``toy_start_times.log`` (``trial_id unix_time``),
``toy_ends.log`` (``trial_id epochs unix_time``); with ``evaluate_test``, ``toy_tests.log`` (``trial_id``, a
line each time a trial scores the test set) and the trial's ``final_test_results.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hiercls.experiment.layout import TRIAL_INDEX, trial_seed
from hiercls.tune.objective import parse_objective
from hiercls.tune.trainable import TrialSetup, quiet_ray_logs, trial_folder, within_bounds
from hiercls.value_schedule import all_variable_keys

__all__ = ["REPORTS", "TRADE_ERROR", "TRADE_SEVERITY", "seed_noise", "toy_metrics", "toy_test_results",
           "toy_trial", "toy_value"]

REPORTS = ("val_top1_error", "val_mistake_severity", "val_hdist@1", "val_hdist@5")
"""The metrics a toy trial reports (what a search with ``--trainable toy`` may read)."""

_LOSS_OFFSET = {"cross-entropy": 0.3, "hierarchical-cross-entropy": 0.1, "soft-labels": 0.2,
                "simple-hierarchy": 0.25, "cosine-distance": 0.15}
TRADE_ERROR = 0.1
"""Toy top-1 error added per unit of ``alpha``."""
TRADE_SEVERITY = 1.0
"""Toy mistake severity removed per unit of ``alpha``."""


def toy_metrics(config: dict[str, Any], epoch: int) -> tuple[float, float]:
    """The toy ``(val_top1_error, val_mistake_severity)`` of ``config`` after ``epoch`` (1-based) epochs; a
    ``seed`` the config sets (a grid over seeds) moves both by :func:`seed_noise`."""
    base = toy_value(config) + seed_noise(config)
    alpha = float(config.get("alpha", 0.0) or 0.0)
    return min(1.0, base + TRADE_ERROR * alpha + 1.0 / epoch), 2.0 + base - TRADE_SEVERITY * alpha


def seed_noise(config: dict[str, Any]) -> float:
    """A deterministic stand-in for seed-to-seed variation: 0 without a ``seed`` key, else a number in
    [-0.005, 0.005) from the seed (Knuth's multiplicative hash)."""
    seed = config.get("seed")
    return 0.0 if seed is None else ((int(seed) * 2654435761) % 1000) / 100_000 - 0.005


def toy_test_results(config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The toy ``final_test_results.json`` of a run of ``epochs``: the last epoch's toy metrics, 0.01 worse
    on the test set, in the engine's layout (``metrics`` as fractions, ``test_accuracy`` in percent)."""
    error, severity = toy_metrics(config, epochs)
    error = min(1.0, error + 0.01)
    metrics = {"top1_error": error, "mistake_severity": severity, "hdist@1": error * severity,
               "hdist@5": 1.5 * error * severity, "hdist@20": 2.0 * error * severity,
               "coarse_error": 0.5 * error}
    return {"test_accuracy": 100.0 * (1.0 - error), "epoch": epochs, "metrics": metrics}


def toy_split(config: dict[str, Any], setup: TrialSetup) -> str:
    """The toy's stand-in for ``val_split_sha256``: SHA-256 of ``toy split N`` with ``N`` the trial's split
    seed (the search's ``split_seed``, else the trial's own seed), so a toy search has one split, or one
    per trial under ``split_seed: trial``, as a real one."""
    split = setup.base.get("split_seed")
    if split is None:
        index = config.get(TRIAL_INDEX, tune_trial_id())
        split = config.get("seed", trial_seed(setup.search_seed, index))
    return hashlib.sha256(f"toy split {split}".encode()).hexdigest()


def tune_trial_id() -> str:
    from ray import tune

    return tune.get_context().get_trial_id()


def toy_value(config: dict[str, Any]) -> float:
    """A smooth function of the searched values with its minimum inside typical ranges (the trial's
    index, which Ray's config also holds, is not one of them)."""
    value = _LOSS_OFFSET.get(config.get("loss"), 0.0)
    for key, v in sorted(config.items()):
        if key in (TRIAL_INDEX, "seed") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if key in ("lr", "weight_decay", "eta_min", "min_lr", "beta") and v > 0:
            value += 0.01 * (math.log10(v) - math.log10({"lr": 0.05, "beta": 10}.get(key, 1e-4))) ** 2
        else:
            value += 0.01 * (float(v) - 0.3) ** 2 / (1.0 + abs(float(v)))
    return value


def _values(config: dict[str, Any]) -> dict[str, float]:
    return {k: float(config[k]) for k in all_variable_keys() if isinstance(config.get(k), (int, float))}


def _append(setup: TrialSetup, name: str, line: str) -> None:
    with open(Path(setup.experiment_dir) / name, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def toy_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Report ``setup.base['epochs']`` toy epochs (sleeping ``setup.toy_sleep`` s each), each with a
    checkpoint (``state.json``: the epoch, the trial that wrote it, every epoch's values so far).

    Each report carries the values in effect (``lr``, ``alpha``, ...), also appended to ``toy_epochs.log``
    (one JSON line per trial and epoch, in the order run); a PB2 continuation from another trial's
    checkpoint is appended to ``toy_continuations.log`` (JSON: trial, donor, epoch, both values)."""
    import ray  # Ray stays out of this module's import: the plan reads REPORTS
    from ray import tune

    quiet_ray_logs()
    config = within_bounds(config, setup)
    trial_id = tune.get_context().get_trial_id()
    epochs = int(setup.base.get("epochs", 1))
    start, history = 0, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
        start, history = state["epoch"], list(state.get("history", []))
        owner = state.get("trial_id", trial_id)
        if setup.continuation and owner != trial_id:  # PB2: another trial's checkpoint
            line = {"trial_id": trial_id, "donor": owner, "epoch": start,
                    "donor_values": history[-1] if history else {}, "values": _values(config)}
            _append(setup, "toy_continuations.log", json.dumps(line))
    _append(setup, "toy_starts.log", f"{trial_id} {start + 1}")
    _append(setup, "toy_start_times.log", f"{trial_id} {time.time():.3f}")
    node = ray.get_runtime_context().get_node_id()
    diverges = float(config.get("lr", 0.0)) >= 1e5
    for epoch in range(start + 1, epochs + 1):
        if setup.toy_sleep:
            time.sleep(setup.toy_sleep)
        error, severity = (math.nan, math.nan) if diverges else toy_metrics(config, epoch)
        metrics = {
            "epoch": epoch, "val_top1_error": error, "val_mistake_severity": severity,
            "val_hdist@1": error * severity, "val_hdist@5": 1.5 * error * severity,
            "status": "nan" if diverges else "ok",
            "loss": config.get("loss", setup.base.get("loss", "cross-entropy")),
            "lr_schedule": config.get("lr_schedule", setup.base.get("lr_schedule", "cosine")),
            "node_id": node, "pid": os.getpid(), "val_split_sha256": toy_split(config, setup),
            **_values(config),  # the values in effect this epoch (PB2 changes them)
        }
        history.append({"epoch": epoch, **_values(config)})
        _append(setup, "toy_epochs.log", json.dumps({"trial_id": trial_id, **history[-1]}))
        metrics["objective"] = parse_objective(setup.objective)(metrics) if not diverges else math.nan
        if diverges:
            tune.report(metrics)
            return
        if epoch == epochs:  # before the last report: ASHA stops a trial at max_t as soon as it reports
            _append(setup, "toy_ends.log", f"{trial_id} {epochs} {time.time():.3f}")
        with tempfile.TemporaryDirectory() as folder:
            state = {"epoch": epoch, "trial_id": trial_id, "history": history}
            (Path(folder) / "state.json").write_text(json.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    tested = trial_folder(setup) / "final_test_results.json"
    # as the engine: after the last report (ASHA refuses evaluate_test), and not again when a finished
    # trial is restarted with nothing to train (interrupted after its test, before Ray recorded its end)
    if setup.base.get("evaluate_test") and (start < epochs or not tested.is_file()):
        _append(setup, "toy_tests.log", trial_id)
        tested.write_text(json.dumps(toy_test_results(config, epochs)))
