"""The Ray Tune trainable: a plain function of the trial's config around :func:`hiercls.engine.fit`.

The engine knows nothing of Ray; this module adapts it:

* the trial's full :class:`~hiercls.config.TrainConfig` = the space's fixed keys (:class:`TrialSetup`)
  + the searched values (the trial's ``config``) + a seed derived from the search seed and the trial id
  + ``out_folder`` = the trial's folder in the experiment (next to Ray's ``result.json``);
* after every epoch the engine's reporter calls ``tune.report`` with the epoch's metrics, the objective
  under the stable name ``objective``, ``status`` and the trial's loss/schedule parameters, and a
  ``tune.Checkpoint`` holding the engine's ``last.pth``;
* a restored trial (``tune.get_checkpoint()``) copies that ``last.pth`` back and calls
  ``fit(resume=True)``, which continues from the next epoch; under PB2 the checkpoint may be another
  trial's (the exploit step): ``fit(continue_from=...)`` takes its model, optimiser and history and goes
  on with this trial's ``lr`` and loss values, which every epoch's report carries (``base_lr``,
  ``alpha``, ...: the value trajectory);
* CIFAR-100 is decoded once per node: the driver warms the decode cache before Ray starts, and every
  trial process reads the cache (about 0.5 s), never the JPEG files. A CPU trial keeps the decoded set
  for the next trial in its process; a GPU trial does not (its splits live on the GPU, and the host
  copies, about 340 MB, are freed once they are there);
* a trial given a fraction of a GPU (``gpus_per_trial`` 0.25: four trials per GPU) caps its own CUDA
  memory at that fraction (``torch.cuda.set_per_process_memory_fraction``), so one trial cannot starve
  the others of memory; it fails with CUDA's out-of-memory error instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hiercls.tune.layout import trial_config, trial_seed

__all__ = ["TrialSetup", "trial_seed", "train_trial"]

_DATA_CACHE: dict[tuple[str, str | None], Any] = {}


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (passed with ``tune.with_parameters``; all paths absolute).

    ``base``: fixed TrainConfig keys; ``experiment_dir``: ``storage_path/name``; ``objective``: the
    objective text (:func:`hiercls.tune.spec.parse_objective`); ``search_seed``; ``cache_dir``: the
    decode cache; ``toy_sleep``: seconds per epoch of the toy trainable; ``gpu_fraction``: the GPUs
    per trial (a fraction below 1 caps the trial's CUDA memory to it); ``continuation``: a restored
    checkpoint may be another trial's, to continue with this trial's values (PB2's exploit step);
    ``value_bounds``: PB2's ranges, which the trial's values are clipped to (PB2 proposes them through a
    float32 Gaussian process: ``0.2`` may come back as ``0.20000000298``).
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
    """Silence Ray's per-epoch INFO lines in a trial process ("Checkpoint successfully created at ...",
    one per trial and epoch); warnings and errors still show."""
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)


def trial_folder(setup: TrialSetup) -> Path:
    """The trial's folder in the experiment: ``experiment_dir/<trial dir name>``."""
    from ray import tune

    name = Path(tune.get_context().get_trial_dir()).name
    return Path(setup.experiment_dir) / name


def _load_data(setup: TrialSetup, *, keep: bool):
    """The decoded CIFAR-100 from the node's decode cache; ``keep`` holds it in this process for the next
    trial (CPU trials), otherwise the process keeps no reference and the caller's run owns it."""
    from hiercls.data import load_cifar100

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
    import torch

    if not 0 < fraction < 1 or not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))
    return True


def within_bounds(config: dict[str, Any], setup: TrialSetup) -> dict[str, Any]:
    """``config`` with each value of ``setup.value_bounds`` clipped into its ``(low, high)``."""
    out = dict(config)
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
    """Whether the engine checkpoint ``checkpoint`` has trained all ``epochs`` (read with the engine's own
    safe loader)."""
    from hiercls.engine import load_checkpoint

    return int(load_checkpoint(checkpoint, require=("epoch",)).get("epoch", 0)) >= epochs


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: train ``setup.base`` + ``config`` with the engine, reporting every epoch to Tune."""
    from ray import tune

    from hiercls.engine import fit
    from hiercls.tune.spec import parse_objective

    quiet_ray_logs()
    config = within_bounds(config, setup)
    objective = parse_objective(setup.objective)
    context = tune.get_context()
    out = trial_folder(setup)
    train_config = trial_config(setup.base, config, setup.search_seed, context.get_trial_id(), str(out))
    resolved = train_config.resolved()
    params = report_params(resolved)

    # the engine's last.pth/best.pth live in local scratch space; Ray persists last.pth as the trial's
    # checkpoint in the experiment folder (one copy, not three)
    scratch = Path(tempfile.mkdtemp(prefix=f"hiercls-{context.get_trial_id()}-"))
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
        metrics["status"] = status
        metrics["objective"] = value
        metrics["loss"] = resolved.loss
        metrics["lr_schedule"] = resolved.lr_schedule
        metrics["params"] = params
        metrics["trial_seed"] = resolved.seed
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
        fit(
            train_config,
            reporter,
            resume=resume,
            overwrite=not resume,
            continue_from=donor,
            checkpoint_dir=ckpt_dir,
            data=_load_data(setup, keep=not on_gpu),
            progress=False,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
