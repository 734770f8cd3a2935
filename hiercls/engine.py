"""One training run: ``fit(config, reporter)`` trains, validates every epoch, checkpoints, reports.

Conventions (shared by every report and file):

* ``epoch`` is the number of completed epochs, 1..E. Losses and schedules see the fractional training
  progress e = completed optimiser steps / steps per epoch, from 0.
* Metrics are fractions (``val_top1_error`` 0.25 = 25 %); only ``test_accuracy`` and
  ``coarse_accuracy`` in ``final_test_results.json`` are percentages, as in the original project.
* ``val`` (held out of the official training set) drives every model-selection decision; the official
  test set is scored only at the end, and only when ``config.evaluate_test`` is true.

Files in the output folder: ``config.yaml`` (the resolved config), ``all_epoch_results.json`` (the
per-epoch reports, rewritten after every epoch), ``checkpoints/last.pth`` and ``checkpoints/best.pth``
(written atomically), ``final_model.pth`` (the last model's weights) and ``final_test_results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hiercls.config import ConfigError, TrainConfig
from hiercls.data import Cifar100, DeviceLoader, load_cifar100, make_splits
from hiercls.hierarchy import Hierarchy, cifar100_superclass_labels, load_cifar100_hierarchy
from hiercls.losses import build_loss
from hiercls.metrics import MetricAccumulator
from hiercls.models import build_model
from hiercls.registry import Registry
from hiercls.schedules import build_schedule

__all__ = [
    "OPTIMIZERS",
    "Reporter",
    "DataError",
    "RunExistsError",
    "build_optimizer",
    "evaluate",
    "fit",
    "resolve_device",
    "test_results",
]

log = logging.getLogger("hiercls")

Reporter = Callable[[dict[str, Any], Path], None]
"""Called after every epoch with the flat report dict and the folder holding ``last.pth``."""

VAL_KS = (1, 5, 10, 20)
TEST_KS = (1, 5, 10, 20, 100)  # the original project's topK_to_consider
RESULT_FILES = ("all_epoch_results.json", "final_test_results.json", "final_model.pth")
NAN_CHECK_EVERY = 50  # optimiser steps between host-side finiteness checks of the running loss

OPTIMIZERS: Registry = Registry("optimizer")


class RunExistsError(FileExistsError):
    """The output folder already holds results; pass resume or overwrite."""


class DataError(ValueError):
    """CIFAR-100 could not be loaded (missing folder, failed download, unreadable image)."""


@OPTIMIZERS.register("sgd")
def _sgd(params, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (``config.momentum``, default 0.9) and L2 weight decay."""
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )


@OPTIMIZERS.register("adamw")
def _adamw(params, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, ICLR 2019) with decoupled weight decay; ``config.amsgrad`` switch."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, amsgrad=config.amsgrad)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` over ``model``'s parameters (ValueError lists valid names)."""
    return OPTIMIZERS.get(config.optimizer)(model.parameters(), config)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given.

    Raises:
        ConfigError: a CUDA device requested on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


# ---------------------------------------------------------------------- small file helpers
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are for colleagues too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a torn file."""
    _atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file, then rename."""
    _atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    hierarchy: Hierarchy,
    criterion: nn.Module | None = None,
    *,
    ks: tuple[int, ...] = VAL_KS,
    amp: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on every batch of an evaluation loader (fixed order, last partial batch included).

    Args:
        model: the network (switched to eval mode here, back to its previous mode afterwards).
        loader: a ``DeviceLoader`` with ``train=False``.
        hierarchy: gives the LCA distances.
        criterion: the training loss, for ``loss`` (mean over samples); None skips it.
        ks: the k of the @k metrics.
        amp: bf16 autocast (CUDA only).

    Returns:
        :func:`hiercls.metrics.compute_metrics`' keys (fractions; ``coarse_error`` on CIFAR-100's 20
        official superclasses), plus ``loss``, ``num_samples`` and ``num_mistakes``.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    acc = MetricAccumulator(hierarchy, ks, cifar100_superclass_labels())
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    use_amp = amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
    for images, labels in loader.epoch(0):
        with autocast:
            logits = model(images)
        logits = logits.float()
        acc.update(logits, labels)
        if criterion is not None:
            loss_sum += criterion(logits, labels).double() * labels.shape[0]
    model.train(was_training)
    out: dict[str, Any] = dict(acc.compute())
    out["loss"] = float(loss_sum) / acc.num_samples if criterion is not None else float("nan")
    out["num_samples"] = acc.num_samples
    out["num_mistakes"] = acc.num_mistakes
    return out


def test_results(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``final_test_results.json`` fields from :func:`evaluate` output computed with ``TEST_KS``.

    The original project's fields (``test_accuracy`` and ``coarse_accuracy`` in percent; the
    ``hierarchical_*`` lists hold one value per k in ``topk``) followed by ours under ``metrics``
    (fractions, every key of :func:`evaluate`).
    """
    ks = TEST_KS

    def per_k(name: str) -> list[float]:
        return [metrics[f"{name}@{k}"] for k in ks]

    return {
        "test_loss": metrics["loss"],
        "test_accuracy": 100.0 * (metrics["num_samples"] - metrics["num_mistakes"]) / metrics["num_samples"],
        "num_mistakes": metrics["num_mistakes"],
        "total_samples": metrics["num_samples"],
        "topk": list(ks),
        "hierarchical_distance_avg": per_k("hdist"),
        "hierarchical_distance_top": per_k("hdist_top"),
        "hierarchical_distance_mistakes": per_k("hdist_mistakes"),
        "hierarchical_precision": per_k("hprecision"),
        "hierarchical_mAP": per_k("mAHP"),
        "coarse_accuracy": round(100.0 * (1.0 - metrics["coarse_error"]), 10),
        "metrics": {k: v for k, v in metrics.items() if k not in ("num_samples", "num_mistakes", "loss")},
    }


# ---------------------------------------------------------------------- the run
class _Run:
    """Everything built from a config: data, model, loss, optimiser, schedule (no training state)."""

    def __init__(self, config: TrainConfig, data: Cifar100 | None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.cuda = self.device.type == "cuda"
        self.amp = config.amp and self.cuda
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.hierarchy = load_cifar100_hierarchy(config.hierarchy)
        if data is None:
            try:
                data = load_cifar100(config.data_dir, download=config.download)
            except (OSError, RuntimeError, ValueError) as err:
                raise DataError(str(err)) from err
        self.splits = make_splits(
            data, val_size=config.val_size, seed=config.seed, max_train_samples=config.max_train_samples
        )
        common = {"device": self.device, "channels_last": self.cuda}
        self.train_loader = DeviceLoader(
            self.splits.train, batch_size=config.batch_size, train=True, seed=config.seed,
            cutout=config.cutout, **common,
        )
        self.val_loader = (
            DeviceLoader(self.splits.val, batch_size=config.eval_batch_size, train=False, **common)
            if self.splits.val is not None
            else None
        )
        torch.manual_seed(config.seed)
        model = build_model(config.architecture, num_classes=self.hierarchy.num_classes).to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if self.cuda else model
        self.criterion = build_loss(config.loss, self.hierarchy, **config.loss_kwargs()).to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.schedule = build_schedule(
            config.lr_schedule, self.optimizer, base_lr=config.lr, epochs=config.epochs,
            steps_per_epoch=len(self.train_loader), **config.schedule_kwargs(),
        )

    def test_loader(self) -> DeviceLoader:
        return DeviceLoader(
            self.splits.test, batch_size=self.config.eval_batch_size, train=False, device=self.device,
            channels_last=self.cuda,
        )

    def state(self, epoch: int, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "loss_epoch": float(getattr(self.criterion, "epoch", 0.0)),
            "rng": _rng_state(),
            "history": history,
            "best": best,
            "config": self.config.to_dict(),
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.criterion.set_epoch(state["loss_epoch"])
        _set_rng_state(state["rng"])

    def train_epoch(self, epoch: int, progress: Callable[[int], Any] | None) -> tuple[float, bool]:
        """One pass over the training split (``epoch`` counts completed epochs before it, from 0).

        Returns (mean training loss over the samples, whether it stayed finite).
        """
        self.model.train()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        steps = len(self.train_loader)
        for step, (images, labels) in enumerate(self.train_loader.epoch(epoch), start=1):
            self.criterion.set_epoch(self.schedule.epoch)
            with autocast:
                logits = self.model(images)
            loss = self.criterion(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            loss_sum += loss.detach().double() * labels.shape[0]
            seen += labels.shape[0]
            if step % NAN_CHECK_EVERY == 0 or step == steps:
                if not math.isfinite(float(loss_sum)):
                    return float("nan"), False
            if progress is not None:
                progress(1)
        return float(loss_sum) / seen, True


def _existing_results(out: Path, ckpt_dir: Path) -> list[str]:
    """Result files in ``out`` (a lone config.yaml from a run that failed before training is not one)."""
    found = [name for name in RESULT_FILES if (out / name).exists()]
    return found + [f"{ckpt_dir.name}/{p.name}" for p in sorted(ckpt_dir.glob("*.pth"))]


def _prepare_output(config: TrainConfig, out: Path, ckpt_dir: Path, *, resume: bool, overwrite: bool) -> None:
    existing = _existing_results(out, ckpt_dir)
    if resume:
        if not (ckpt_dir / "last.pth").exists():
            if existing:
                raise ConfigError(
                    f"cannot resume in {str(out)!r}: it holds results ({', '.join(existing)}) but no "
                    f"{ckpt_dir.name}/last.pth; pass --overwrite to start again"
                )
            log.warning("nothing to resume in %s (no checkpoint yet): starting a new run", out)
            return
        from hiercls.config import load_config

        saved = load_config(out / "config.yaml").to_dict()
        current = config.to_dict()
        differing = sorted(k for k in current if saved.get(k) != current[k])
        if differing:
            detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current[k]!r}" for k in differing)
            raise ConfigError(
                f"refusing to resume in {str(out)!r}: the config differs in {len(differing)} key(s): "
                f"{detail}"
            )
        return
    if existing and not overwrite:
        raise RunExistsError(
            f"output folder {str(out)!r} already holds results ({', '.join(existing)}); pass --resume to "
            "continue that run, --overwrite to replace it, or choose another --out_folder"
        )
    if overwrite:
        for name in ("config.yaml", *RESULT_FILES):
            (out / name).unlink(missing_ok=True)
        for name in ("last.pth", "best.pth"):
            (ckpt_dir / name).unlink(missing_ok=True)


def default_out_folder(config: TrainConfig) -> Path:
    """``runs/<loss>_<architecture>_seed<seed>`` when ``out_folder`` is not set."""
    return Path("runs") / f"{config.loss}_{config.architecture}_seed{config.seed}"


def _log_line(record: Mapping[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"lr {record['lr']:.4g}",
        f"train_loss {record['train_loss']:.4f}",
    ]
    for key in ("val_loss", "val_top1_error", "val_mistake_severity", "val_hdist@1", "val_hdist@5"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['epoch_seconds']:.1f}s {record['images_per_second']:.0f} img/s")
    if record["status"] != "ok":
        parts.append(f"status {record['status']}")
    return " | ".join(parts)


def fit(
    config: TrainConfig,
    reporter: Reporter | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_dir: str | Path | None = None,
    data: Cifar100 | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` to the end (or to a non-finite loss), validating and checkpointing every epoch.

    Args:
        config: the run's configuration; validated before any work (ConfigError lists every problem).
        reporter: called after every epoch with the flat report (``epoch``, ``lr`` (the rate of the
            epoch's first step), ``train_loss``, ``val_loss``, ``val_top1_error``,
            ``val_mistake_severity``, ``val_hdist@{1,5,10,20}``, ``val_coarse_error``, all other
            ``val_*`` metric keys including ``val_crm/...``, ``epoch_seconds``, ``images_per_second``,
            ``status`` ``ok``/``nan``) and the checkpoint folder, which then holds ``last.pth``.
        resume: continue from ``checkpoint_dir/last.pth`` if present; the folder's saved config must
            equal ``config`` in every key.
        overwrite: replace the results of an earlier run in the output folder.
        checkpoint_dir: where ``last.pth``/``best.pth`` live (default ``<out_folder>/checkpoints``).
        data: the decoded CIFAR-100, to skip loading (e.g. shared by search trials on one node).
        progress: progress bar (default: when stderr is a terminal), else one log line per epoch.

    Returns:
        ``{"status", "epochs_run", "best_epoch", "best_val_top1_error", "out_folder", "history",
        "test"}`` with ``test`` the contents of ``final_test_results.json`` (None when not evaluated).

    Raises:
        ConfigError: invalid config, or resume with a differing saved config.
        RunExistsError: the output folder has results and neither ``resume`` nor ``overwrite``.
        DataError: the data could not be loaded (the message names the folder or file).
    """
    config.validate()
    config = config.resolved()
    out = Path(config.out_folder) if config.out_folder else default_out_folder(config)
    config = config.replace(out_folder=str(out))
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out / "checkpoints"
    _prepare_output(config, out, ckpt_dir, resume=resume, overwrite=overwrite)
    run = _Run(config, data)  # data, model, loss: fails here, before anything is written
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config.to_yaml())
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "val_top1_error": math.inf}
    start_epoch = 0
    last_path, best_path = ckpt_dir / "last.pth", ckpt_dir / "best.pth"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=run.device, weights_only=False)
        run.load(state)
        history, best, start_epoch = list(state["history"]), dict(state["best"]), int(state["epoch"])
        log.info("resumed %s at epoch %d/%d", out, start_epoch, config.epochs)

    show_bar = sys.stderr.isatty() if progress is None else progress
    status = history[-1]["status"] if history else "ok"
    n_train = run.train_loader.num_samples
    for epoch in range(start_epoch, config.epochs):
        if status != "ok":
            break
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=len(run.train_loader), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        lr = run.schedule.lr
        t0 = time.perf_counter()
        train_loss, finite = run.train_epoch(epoch, bar.update if bar else None)
        if run.cuda:
            torch.cuda.synchronize(run.device)
        train_seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss}
        status = "ok" if finite else "nan"
        if run.val_loader is not None:
            if finite:
                metrics = evaluate(run.model, run.val_loader, run.hierarchy, run.criterion, amp=run.amp)
                if not math.isfinite(metrics["loss"]):
                    status = "nan"
            if not finite or status == "nan":
                template = evaluate_keys(run.hierarchy)
                metrics = dict.fromkeys(template, float("nan"))
            record["val_loss"] = metrics["loss"]
            skip = ("loss", "num_samples", "num_mistakes")
            record.update({f"val_{k}": v for k, v in metrics.items() if k not in skip})
        record["epoch_seconds"] = time.perf_counter() - t0
        record["images_per_second"] = n_train / train_seconds if train_seconds > 0 else float("nan")
        record["status"] = status
        history.append(record)

        if status == "ok":
            if run.val_loader is not None and record["val_top1_error"] < best["val_top1_error"]:
                best = {"epoch": epoch + 1, "val_top1_error": record["val_top1_error"]}
                weights = {"epoch": epoch + 1, "model": run.model.state_dict(), "config": config.to_dict()}
                atomic_torch_save(weights, best_path)
            atomic_torch_save(run.state(epoch + 1, history, best), last_path)
        atomic_write_text(out / "all_epoch_results.json", json.dumps(history, indent=2))
        log.info(_log_line(record, config.epochs))
        if reporter is not None:
            reporter(dict(record), ckpt_dir)

    atomic_torch_save(run.model.state_dict(), out / "final_model.pth")
    test = None
    if config.evaluate_test and status == "ok":
        test = _final_test(run, out, best_path if best["epoch"] is not None else None, best)
    elif (out / "final_test_results.json").exists():
        test = json.loads((out / "final_test_results.json").read_text())
    return {
        "status": status,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_top1_error": best["val_top1_error"] if best["epoch"] is not None else None,
        "out_folder": str(out),
        "history": history,
        "test": test,
    }


def evaluate_keys(hierarchy: Hierarchy) -> list[str]:
    """The metric keys :func:`evaluate` returns for ``hierarchy`` (used to fill NaN reports)."""
    probe = MetricAccumulator(hierarchy, VAL_KS, cifar100_superclass_labels())
    probe.update(torch.zeros(1, hierarchy.num_classes), torch.zeros(1, dtype=torch.long))
    return [*probe.compute().keys(), "loss"]


def _final_test(run: _Run, out: Path, best_path: Path | None, best: Mapping[str, Any]) -> dict[str, Any]:
    loader = run.test_loader()
    scores = evaluate(run.model, loader, run.hierarchy, run.criterion, ks=TEST_KS, amp=run.amp)
    results = test_results(scores)
    results["epoch"] = run.config.epochs
    if best_path is not None:
        last_weights = {k: v.clone() for k, v in run.model.state_dict().items()}
        run.model.load_state_dict(torch.load(best_path, map_location=run.device, weights_only=False)["model"])
        best_results = test_results(
            evaluate(run.model, loader, run.hierarchy, run.criterion, ks=TEST_KS, amp=run.amp)
        )
        best_results["epoch"] = best["epoch"]
        results["best_val_model"] = best_results
        run.model.load_state_dict(last_weights)
    atomic_write_text(out / "final_test_results.json", json.dumps(results, indent=2))
    log.info(
        "test: accuracy %.2f%%, mistake severity %.4f, hdist@1 %.4f (last model, epoch %d)",
        results["test_accuracy"], results["metrics"]["mistake_severity"], results["metrics"]["hdist@1"],
        results["epoch"],
    )
    return results
