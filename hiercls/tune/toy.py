"""A cheap stand-in for :func:`hiercls.tune.trainable.train_trial`: no data, no training.

``toy_value(config)`` is a known function of the searched values; a toy trial reports
``toy_value + 1 / epoch`` as ``val_top1_error`` every epoch (so ASHA has something to compare),
checkpoints its epoch with ``tune.Checkpoint``, resumes from ``tune.get_checkpoint()``, and goes NaN
when ``lr >= 1e5`` (like a diverging real run). Every start is appended to
``experiment_dir/toy_starts.log`` (``trial_id first_epoch``) and every end to ``toy_ends.log``
(``trial_id epochs unix_time``) so tests can check that no finished trial ran twice. Used by
``tune_main.py --trainable toy`` (checking a cluster or a space without training),
the tests and the overhead benchmark.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hiercls.tune.trainable import TrialSetup

__all__ = ["toy_trial", "toy_value"]

_LOSS_OFFSET = {"cross-entropy": 0.3, "hierarchical-cross-entropy": 0.1, "soft-labels": 0.2,
                "simple-hierarchy": 0.25, "cosine-distance": 0.15}


def toy_value(config: dict[str, Any]) -> float:
    """A smooth function of the searched values with its minimum inside typical ranges."""
    value = _LOSS_OFFSET.get(config.get("loss"), 0.0)
    for key, v in sorted(config.items()):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if key in ("lr", "weight_decay", "eta_min", "min_lr", "beta") and v > 0:
            value += 0.01 * (math.log10(v) - math.log10({"lr": 0.05, "beta": 10}.get(key, 1e-4))) ** 2
        else:
            value += 0.01 * (float(v) - 0.3) ** 2 / (1.0 + abs(float(v)))
    return value


def toy_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Report ``setup.base['epochs']`` toy epochs (sleeping ``setup.toy_sleep`` s each)."""
    import ray
    from ray import tune

    from hiercls.tune.trainable import quiet_ray_logs

    quiet_ray_logs()
    context = tune.get_context()
    epochs = int(setup.base.get("epochs", 1))
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    log = Path(setup.experiment_dir) / "toy_starts.log"
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{context.get_trial_id()} {start + 1}\n")
    node = ray.get_runtime_context().get_node_id()
    base = toy_value(config)
    diverges = float(config.get("lr", 0.0)) >= 1e5
    for epoch in range(start + 1, epochs + 1):
        if setup.toy_sleep:
            time.sleep(setup.toy_sleep)
        error = math.nan if diverges else min(1.0, base + 1.0 / epoch)
        severity = math.nan if diverges else 2.0 + base
        metrics = {
            "epoch": epoch,
            "val_top1_error": error,
            "val_mistake_severity": severity,
            "val_hdist@1": error * severity,
            "val_hdist@5": 1.5 * error * severity,
            "status": "nan" if diverges else "ok",
            "loss": config.get("loss", setup.base.get("loss", "cross-entropy")),
            "lr_schedule": config.get("lr_schedule", setup.base.get("lr_schedule", "cosine")),
            "node_id": node,
            "pid": os.getpid(),
        }
        from hiercls.tune.spec import parse_objective

        metrics["objective"] = parse_objective(setup.objective)(metrics) if not diverges else math.nan
        if diverges:
            tune.report(metrics)
            return
        if epoch == epochs:  # before the last report: ASHA stops a trial at max_t as soon as it reports
            with open(Path(setup.experiment_dir) / "toy_ends.log", "a", encoding="utf-8") as f:
                f.write(f"{context.get_trial_id()} {epochs} {time.time():.3f}\n")
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
