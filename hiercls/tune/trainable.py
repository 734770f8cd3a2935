"""The Ray Tune trainable: a plain function of the trial's config around :func:`hiercls.engine.fit`, which
knows nothing of Ray.

The trial's config is :func:`~hiercls.experiment.layout.trial_config` with ``out_folder`` the trial's folder.
Every epoch is reported with a checkpoint holding the engine's ``last.pth``; a restored trial continues
from it (``fit(resume=True)``), and under PB2 from another trial's (``fit(continue_from=...)``) with its
own values. A trial given a fraction of a GPU caps its CUDA memory at that fraction.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hiercls.experiment.layout import searched_values, trial_config, trial_seed
from hiercls.tune.constraints import CONSTRAINT_METRICS
from hiercls.tune.objective import OBJECTIVE_METRICS, parse_objective

__all__ = ["REPORTS", "TrialSetup", "trial_seed", "train_trial"]

REPORTS = tuple(dict.fromkeys((*OBJECTIVE_METRICS, *CONSTRAINT_METRICS)))
"""What a search may read of a training trial's reports (the engine reports every ``val_*`` metric)."""

_DATA_CACHE: dict[tuple[str, str | None], Any] = {}


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (passed with ``tune.with_parameters``; all paths absolute).

    ``base``: fixed TrainConfig keys; ``objective``: its text; ``cache_dir``: the decode cache;
    ``toy_sleep``: seconds per toy epoch; ``gpu_fraction``: GPUs per trial (below 1 caps CUDA memory);
    ``continuation``: a restored checkpoint may be another trial's (PB2's exploit step);
    ``value_bounds``: PB2's ranges, which the values are clipped to (its float32 Gaussian process may
    return ``0.2`` as ``0.20000000298``).
    """

    base: dict[str, Any]
    experiment_dir: str
    objective: str = "val_top1_error"
    search_seed: int = 0
    cache_dir: str | None = None
    toy_sleep: float = 0.0
    gpu_fraction: float = 0.0
    continuation: bool = False
    # None rather than a factory default: a TrialSetup pickled by an earlier version (a resumed
    # experiment's) reads the class attribute
    value_bounds: dict[str, tuple[float, float]] | None = None


def quiet_ray_logs() -> None:
    """Silence Ray's per-epoch INFO lines in a trial process ("Checkpoint successfully created at ...");
    warnings and errors still show."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def trial_folder(setup: TrialSetup) -> Path:
    """The trial's folder in the experiment: ``experiment_dir/<trial dir name>``."""
    from ray import tune  # Ray only inside a trial

    name = Path(tune.get_context().get_trial_dir()).name
    return Path(setup.experiment_dir) / name


def _load_data(setup: TrialSetup, *, keep: bool):
    """The decoded CIFAR-100 from the node's decode cache; ``keep`` holds it in this process for the next
    trial (CPU trials), otherwise the caller's run owns it alone."""
    from hiercls.data import load_cifar100  # torch only inside a trial

    key = (str(setup.base.get("data_dir")), setup.cache_dir)
    data = _DATA_CACHE.get(key)
    _DATA_CACHE.clear()
    if data is None:
        data = load_cifar100(setup.base["data_dir"], download=False, cache_dir=setup.cache_dir)
    if keep:
        _DATA_CACHE[key] = data
    return data


def cap_gpu_memory(fraction: float, device: str) -> bool:
    """Limit this process's CUDA memory to ``fraction`` (0 < fraction < 1) of ``device``'s memory;
    returns whether a cap was set (not on the CPU, nor for whole GPUs)."""
    import torch  # torch only inside a trial

    if not 0 < fraction < 1 or not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))
    return True


def within_bounds(config: dict[str, Any], setup: TrialSetup) -> dict[str, Any]:
    """``config`` with its log-scale keys decoded (:func:`~hiercls.experiment.layout.searched_values`) and
    each value of ``setup.value_bounds`` clipped into its ``(low, high)``."""
    out = searched_values(config)
    for key, (low, high) in (setup.value_bounds or {}).items():
        if isinstance(out.get(key), (int, float)) and not isinstance(out[key], bool):
            out[key] = min(max(float(out[key]), low), high)
    return out


def report_params(config) -> dict[str, Any]:
    """The loss and schedule parameters in effect (resolved), plus lr and weight decay, for the table."""
    out: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    out.update(config.loss_kwargs())
    out.update(config.schedule_kwargs())
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _finished(checkpoint: Path, epochs: int) -> bool:
    """Whether the engine checkpoint ``checkpoint`` has trained all ``epochs`` (the engine's safe loader)."""
    from hiercls.engine import load_checkpoint  # torch only inside a trial

    return int(load_checkpoint(checkpoint, require=("epoch",)).get("epoch", 0)) >= epochs


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: train ``setup.base`` + ``config`` with the engine, reporting every epoch to Tune."""
    from ray import tune  # Ray and torch (the engine) stay out of this module's import: the plan reads it

    from hiercls.engine import fit

    quiet_ray_logs()
    config = within_bounds(config, setup)
    objective = parse_objective(setup.objective)
    trial_id = tune.get_context().get_trial_id()
    train_config = trial_config(setup.base, config, setup.search_seed, trial_id, str(trial_folder(setup)))
    resolved = train_config.resolved()
    params = report_params(resolved)

    # the engine's last.pth/best.pth live in local scratch space; Ray persists last.pth as the trial's
    # checkpoint in the experiment folder (one copy, not three)
    scratch = Path(tempfile.mkdtemp(prefix=f"hiercls-{trial_id}-"))
    ckpt_dir = scratch / "engine"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    report_dir = scratch / "report"
    resume, donor = False, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            source = Path(restored) / "last.pth"
            if source.is_file() and setup.continuation:
                # PB2: maybe another trial's checkpoint; its model goes on with this trial's values
                donor = scratch / "donor.pth"
                shutil.copy2(source, donor)
            elif source.is_file():
                shutil.copy2(source, ckpt_dir / "last.pth")
                resume = True

    def reporter(record: dict[str, Any], folder: Path | None) -> None:
        metrics = dict(record)
        status = metrics.get("status", "ok")
        value = objective(metrics) if status == "ok" else math.nan
        if math.isnan(value):
            status = "nan"
        metrics.update(status=status, objective=value, loss=resolved.loss, lr_schedule=resolved.lr_schedule,
                       params=params, trial_seed=resolved.seed)
        if status != "ok" or folder is None:  # no new checkpoint this epoch (checkpoint_every)
            tune.report(metrics)
            return
        # a folder holding only last.pth (hard link when possible: no copy of best.pth, no extra I/O)
        shutil.rmtree(report_dir, ignore_errors=True)
        report_dir.mkdir(parents=True)
        try:
            os.link(folder / "last.pth", report_dir / "last.pth")
        except OSError:
            shutil.copy2(folder / "last.pth", report_dir / "last.pth")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(report_dir)))

    if donor is not None and _finished(donor, train_config.epochs):
        # a checkpoint of the last epoch (a trial retried after it crashed there): nothing left to train
        shutil.rmtree(scratch, ignore_errors=True)
        return
    on_gpu = train_config.device.startswith("cuda")
    cap_gpu_memory(setup.gpu_fraction, train_config.device if ":" in train_config.device else "cuda:0")
    try:
        fit(train_config, reporter, resume=resume, overwrite=not resume, continue_from=donor,
            checkpoint_dir=ckpt_dir, data=_load_data(setup, keep=not on_gpu), progress=False,
            keep_predictions=(objective,))  # the predictions of its best epoch by the search's objective
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
