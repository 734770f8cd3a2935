"""One training run: ``fit(config, reporter)`` trains, validates every epoch, checkpoints, reports.

Conventions (shared by every report and file):

* ``epoch`` is the number of completed epochs, 1..E. Losses and schedules see the fractional training
  progress e = completed optimiser steps / steps per epoch, from 0.
* Metrics are fractions (``val_top1_error`` 0.25 = 25 %); only ``test_accuracy`` and
  ``coarse_accuracy`` in ``final_test_results.json`` are percentages, as in the original project.
* ``val`` (held out of the official training set) drives every model-selection decision; the official
  test set is scored only at the end, and only when ``config.evaluate_test`` is true.
* The values of ``lr`` and the loss's variable parameters in effect in an epoch
  (:meth:`~hiercls.config.TrainConfig.values_at`: the config's own, or its ``value_schedule``'s) are set
  at the start of that epoch and recorded with it under the config's names (``lr``, ``lambda_fine``,
  ``alpha``, ...), next to ``scheduled_lr``, the rate of the epoch's first step (the LR schedule's shape
  applied to ``lr``), so a run's history is the whole value trajectory of its model, also across
  ``fit(continue_from=...)`` (:func:`value_schedule_from_history` turns it back into a schedule). Records
  written before (``base_lr`` the value, ``lr`` the scheduled rate) are read in this spelling
  (:func:`~hiercls.value_schedule.upgrade_record`) when a run resumes or continues them.

Files in the output folder: ``config.yaml`` (the resolved config), ``all_epoch_results.json`` (the
per-epoch reports, rewritten after every epoch), ``checkpoints/last.pth`` and ``checkpoints/best.pth``
(written atomically), ``final_model.pth`` (the last model's weights) and ``final_test_results.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import pickle
import pickletools
import random
import re
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hiercls.build import Checked, check_config
from hiercls.config import (
    RESUME_FREE_KEYS,
    ConfigError,
    TrainConfig,
    read_saved_config,
    upgrade_saved_values,
)
from hiercls.data import Cifar100, DeviceLoader, check_complete, load_cifar100, make_splits, resolve_data_dir
from hiercls.data.locate import has_dataset, project_data_dir, shared_archive
from hiercls.evidence import kept_epochs, prune_predictions, save_predictions, split_sha256
from hiercls.hierarchy import Hierarchy, cifar100_superclass_labels
from hiercls.metrics import TEST_KS, VAL_KS, MetricAccumulator
from hiercls.models import backbone_parameters, build_model
from hiercls.numerics import deterministic_mode, ieee_fp32
from hiercls.optim import OPTIMIZERS, build_optimizer
from hiercls.registry import TRAINING_PARAMS
from hiercls.schedules import LR_SCALE_KEY, build_schedule
from hiercls.storage import (
    StorageError,
    atomic_write_bytes,
    atomic_write_files,
    atomic_write_text,
    check_writable,
    serialize,
)
from hiercls.value_schedule import all_variable_keys, upgrade_record, value_schedule_from_history
from hiercls.weights import WHITEN_IMAGES, WeightAverage, whiten_first_conv

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "OPTIMIZERS",
    "Run",
    "build_run",
    "CheckpointError",
    "Reporter",
    "DataError",
    "RunExistsError",
    "StorageError",
    "build_optimizer",
    "deterministic_mode",
    "evaluate",
    "fit",
    "load_checkpoint",
    "resolve_device",
    "test_results",
    "value_schedule_from_history",
]

log = logging.getLogger("hiercls")

Reporter = Callable[[dict[str, Any], "Path | None"], None]
"""Called after every epoch with the flat report dict and the folder holding ``last.pth`` when this
epoch wrote it (every ``checkpoint_every`` epochs and the last one), else None."""

RESULT_FILES = ("all_epoch_results.json", "final_test_results.json", "final_model.pth")
NAN_CHECK_EVERY = 50  # optimiser steps between host-side finiteness checks of the running loss

class RunExistsError(FileExistsError):
    """The output folder already holds results; pass resume or overwrite."""


class DataError(ValueError):
    """CIFAR-100 could not be loaded (missing folder, failed download, unreadable image)."""


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


# ---------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "hiercls-checkpoint"
CHECKPOINT_VERSION = 2
"""Checkpoints hold only tensors and plain Python values (dicts, lists, numbers, strings), so they are
read with ``torch.load(weights_only=True)``, which never runs code from the file. Version 1 (before
this format had a version) stored numpy RNG arrays and cannot be read that way."""


class CheckpointError(ValueError):
    """A file that is not a readable hiercls checkpoint: missing, corrupt or truncated, from another
    program or an older hiercls, or holding Python objects other than tensors (never executed)."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` into memory, then :func:`hiercls.storage.atomic_write_bytes`: never a torn file,
    and a full disk raises :class:`~hiercls.storage.StorageError` naming the file and ENOSPC."""
    atomic_write_bytes(path, _serialize(obj))


def _serialize(obj: Any) -> bytes:
    return serialize(lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, *, require: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Read a hiercls checkpoint safely: ``torch.load(..., weights_only=True, map_location="cpu")``.

    Every tensor lands on the CPU (RNG states must be CPU ByteTensors; model and optimiser states are
    copied to the run's device by ``load_state_dict``). Nothing in the file is executed. A file torch's
    weights-only reader refuses is told apart without unpickling it (:func:`_pickle_imports` reads its
    opcodes): one that holds a pickle importing Python objects "could run code"; one that is no pickle at
    all (random bytes, text, a torn file) is corrupt.

    Args:
        path: a ``last.pth``, ``best.pth`` (or any dict checkpoint with ``require``'s keys).
        require: keys the checkpoint must hold.

    Raises:
        CheckpointError: one line naming ``path`` and what is wrong: missing, empty, corrupt or
            truncated (not a torch checkpoint, nor a pickle), an older hiercls format, Python objects
            other than tensors and plain values (refused, since unpickling them could run code), or
            missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): a write was cut short")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a plain pickle
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" not in text and "Unsupported" not in text:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt ({_first_line(text)})"
            ) from err
        imports = _pickle_imports(path)
        if imports is None:  # torch's reader stopped on bytes that are no pickle: not an object, garbage
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt or truncated (not a torch checkpoint: {_NOT_A_PICKLE})"
            ) from err
        if not imports:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a torch checkpoint: a pickle of plain Python values that "
                "torch's reader does not take; it is corrupt, or another program's file"
            ) from err
        if "numpy" in text:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is in an older hiercls format (numpy RNG state) that cannot be "
                "read without unpickling Python objects; finish that run with the hiercls version that "
                "wrote it, or start again"
            ) from err
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", text)  # the one torch refused
        named = refused.group(1) if refused else ", ".join(imports[:3])
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds Python objects other than tensors and plain values (it imports "
            f"{named}); it was not loaded, since unpickling it could run code"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as err:
        reason = _first_line(str(err)) if isinstance(err, (RuntimeError, OSError, ValueError)) else ""
        reason = reason or f"not a torch checkpoint: {_NOT_A_PICKLE}"
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({reason})") from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{str(path)!r} is not a hiercls checkpoint (it holds a {type(state).__name__}, not a dict)"
        )
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a hiercls checkpoint (no {', '.join(repr(k) for k in missing)} entry)"
        )
    return state


_NOT_A_PICKLE = "neither torch's zip format nor a complete pickle"

_IMPORT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"})
"""The pickle opcodes that fetch a Python object by name (or by copyreg's extension code): without one, a
pickle has nothing to call, so unpickling it runs no code."""


def _pickle_imports(path: Path, *, most: int = 16) -> list[str] | None:
    """What the pickle in ``path`` (a plain pickle file, torch's legacy sequence of pickles, or the
    ``data.pkl`` of torch's zip format) would import when unpickled, read with :mod:`pickletools`
    (opcodes parsed, nothing unpickled or executed): ``module.name`` for each import (``EXT1`` ... for an
    extension code), in order; an empty list for a pickle of plain values; None when the bytes do not
    begin with a complete pickle (random bytes, text, a truncated file).

    Up to ``most`` pickles in a row are read (torch's legacy format writes several, then raw tensor bytes,
    where reading stops)."""
    try:
        if zipfile.is_zipfile(path):  # torch's format: the pickle is data.pkl, the tensors other members
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
                if name is None:
                    return None
                data = archive.read(name)
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError, EOFError):
        return None
    stream = io.BytesIO(data)
    imports: list[str] = []
    for count in range(most):
        if stream.tell() >= len(data):
            break
        found: list[str] = []
        strings: list[Any] = []  # the strings pushed, also from the memo: STACK_GLOBAL's module and name
        memo: dict[Any, Any] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                kind = opcode.name
                if kind in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif kind == "STACK_GLOBAL":
                    names = [str(v) for v in strings[-2:] if v is not None]
                    found.append(".".join(names) if len(names) == 2 else "a name (STACK_GLOBAL)")
                elif kind in _IMPORT_OPCODES:
                    found.append(f"extension code {arg} ({kind})")
                elif "UNICODE" in kind or "STRING" in kind:
                    strings.append(arg)
                elif kind == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif kind.endswith("PUT"):
                    memo[arg] = strings[-1] if strings else None
                elif kind.endswith("GET"):
                    strings.append(memo.get(arg))
        except Exception:  # pickletools raises ValueError; whatever it raises, these bytes are no pickle
            if count == 0:
                return None
            break  # the raw bytes after the pickles of torch's legacy format
        imports += [name for name in found if name not in imports]
    return imports


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]


def _check_training_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    """Refuse a checkpoint that :meth:`Run.load` cannot continue from (one line)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a hiercls training checkpoint (no format marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} is a version {state.get('version')!r} hiercls checkpoint; this hiercls reads "
            f"version {CHECKPOINT_VERSION}"
        )


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states as tensors and plain values: torch's CPU generator (ByteTensor), Python's
    ``random`` (a list), numpy's legacy generator (a dict of plain values), and, on a CUDA run, the
    run device's CUDA generator only (so the state restores whatever the number of visible GPUs)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore :func:`_rng_state`'s output; the CUDA state (if any) goes to ``device`` when it is a CUDA
    device. RNG tensors are handed to torch as CPU ByteTensors, as it requires."""

    def cpu_bytes(t: Any) -> torch.Tensor:
        return torch.as_tensor(t).to(device="cpu", dtype=torch.uint8)

    torch.set_rng_state(cpu_bytes(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    numpy = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np.asarray(torch.as_tensor(numpy["key"]).cpu().numpy(), dtype=np.uint32),
                  "pos": int(numpy["pos"])},
        "has_gauss": int(numpy["has_gauss"]),
        "gauss": float(numpy["gauss"]),
    })
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(cpu_bytes(state["cuda"]), device)


# ---------------------------------------------------------------------- compiled models
def eager_for(net: nn.Module, batch: int, full: int) -> nn.Module:
    """``net``, or the module it compiles when ``batch`` differs from the loader's ``full`` batch size:
    a compiled model runs one graph per mode; a last partial batch runs the same weights eagerly instead
    of compiling a second graph."""
    return getattr(net, "_orig_mod", net) if batch != full else net


# ---------------------------------------------------------------------- evaluation
def model_outputs(criterion: nn.Module, hierarchy: Hierarchy) -> int:
    """The number of outputs the model needs for ``criterion``: its ``num_outputs`` (a
    :class:`~hiercls.losses.HierarchyLoss`), else one logit per class."""
    return int(getattr(criterion, "num_outputs", None) or hierarchy.num_classes)


def class_scores(criterion: nn.Module | None, outputs: torch.Tensor) -> torch.Tensor:
    """The ``[N, C]`` class scores of the model's outputs: ``criterion.scores(outputs)`` where the loss
    defines it, else the outputs themselves (class logits)."""
    scores = getattr(criterion, "scores", None)
    return outputs if scores is None else scores(outputs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    hierarchy: Hierarchy,
    criterion: nn.Module | None = None,
    *,
    ks: tuple[int, ...] = VAL_KS,
    tta: bool = False,
    rankings: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on every batch of an evaluation loader (fixed order, last partial batch included).

    With ``tta`` (flip test-time augmentation, the config's ``flip_tta``) the outputs of a batch are the
    mean of the model's outputs on the images and on their mirror images (``images.flip(3)``), float
    ``[B, num_outputs]``; the loss, the class scores and every metric are computed from those averaged
    outputs.

    The forward pass runs in IEEE fp32 (:func:`ieee_fp32`: no bf16 autocast, no TF32), whatever the
    training used: bf16 logits tie for the top-1 class in about 2 % of samples and flip it in about 1 %,
    and ties are broken differently by each device's ``topk``.

    Args:
        model: the network, or its ``torch.compile`` wrapper (switched to eval mode here, back to its
            previous mode afterwards).
        loader: a ``DeviceLoader`` with ``train=False``.
        hierarchy: gives the LCA distances.
        criterion: the training loss, for ``loss`` (mean over samples) and for the class scores the
            metrics rank (``criterion.scores(outputs)``: the logits themselves, cosines to the class
            embeddings, yolo-v2's log leaf probabilities); None: the outputs are the class logits and
            ``loss`` is NaN.
        ks: the k of the @k metrics.
        rankings: also return the per-image rankings the metrics were computed from, under
            ``rankings`` (:meth:`~hiercls.metrics.MetricAccumulator.rankings`: CPU tensors; what
            :func:`hiercls.evidence.save_predictions` writes).

    Returns:
        :func:`hiercls.metrics.compute_metrics`' keys (fractions; ``coarse_error`` on CIFAR-100's 20
        official superclasses), plus ``loss``, ``num_samples`` and ``num_mistakes``. The ``crm/`` keys are
        NaN when the loss's scores are not log-probabilities (``criterion.probabilistic`` False: the
        embedding losses), since CRM needs a class distribution.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    crm = bool(getattr(criterion, "probabilistic", True))
    acc = MetricAccumulator(hierarchy, ks, cifar100_superclass_labels(), crm=crm)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    # a loss that draws random numbers (ranking-loss's single negative) draws the same ones at every
    # evaluation, and the training's random stream is left as it was
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), ieee_fp32():
        torch.random.default_generator.manual_seed(0)
        if forked:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(0)
        for images, labels in loader.epoch(0):
            net = eager_for(model, labels.shape[0], loader.batch_size)
            outputs = net(images).float()
            if tta:
                outputs = (outputs + net(images.flip(3)).float()) / 2
            acc.update(class_scores(criterion, outputs), labels)
            if criterion is not None:
                loss_sum += criterion(outputs, labels).double() * labels.shape[0]
    model.train(was_training)
    out: dict[str, Any] = dict(acc.compute())
    if not crm:
        out.update({f"crm/{key}": float("nan") for key in list(out)})
    out["loss"] = float(loss_sum) / acc.num_samples if criterion is not None else float("nan")
    out["num_samples"] = acc.num_samples
    out["num_mistakes"] = acc.num_mistakes
    if rankings:
        out["rankings"] = acc.rankings()
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
class Run:
    """Everything built from a config: data, model, loss, optimiser, schedule (no training state). Build
    one with :func:`build_run`.

    ``model`` is the module whose ``state_dict`` is checkpointed (never a compile wrapper, so compiled and
    eager runs read each other's checkpoints); ``net`` is what runs the batches: ``model`` itself, or
    ``torch.compile(model)`` with ``config.compile``. On a non-CPU device the host copies of the data are
    dropped once the splits are on the device (only the loaders keep the images).
    """

    def __init__(
        self, config: TrainConfig, data: Cifar100 | None = None, checked: Checked | None = None
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.cuda = self.device.type == "cuda"
        self.amp = config.use_amp(self.device.type)
        self.channels_last = config.use_channels_last(self.device.type)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        checked = checked if checked is not None else check_config(config)
        self.hierarchy = checked.hierarchy
        if data is None:
            data = _load_data(config)
        try:
            check_complete(data, config.data_dir)
        except ValueError as err:
            raise DataError(str(err)) from err
        splits = make_splits(
            data, val_size=config.val_size, seed=config.data_split_seed,
            max_train_samples=config.max_train_samples,
        )
        del data
        sha = split_sha256(splits.val.indices if splits.val is not None else None)
        if config.val_split_sha256 is not None and config.val_split_sha256 != sha:
            raise DataError(
                f"the validation split (val_size {config.val_size}, split_seed {config.data_split_seed}) is "
                f"not the one this config records: "
                f"{'no validation split' if sha is None else f'val_split_sha256 {sha[:12]}...'} vs recorded "
                f"{config.val_split_sha256[:12]}... (another data set or another split); unset "
                "val_split_sha256 (--set val_split_sha256=null) to run on this split")
        # the run's config records the identity of its validation images (config.yaml, every record)
        self.config = config = dataclasses.replace(config, val_split_sha256=sha)
        self.val_indices = splits.val.indices if splits.val is not None else None
        common = {"device": self.device, "channels_last": self.channels_last}
        self.train_loader = DeviceLoader(
            splits.train, batch_size=config.batch_size, train=True, seed=config.seed,
            cutout=config.cutout, crop_padding=config.crop_padding, flip=config.flip, **common,
        )
        self.val_loader = (
            DeviceLoader(splits.val, batch_size=config.eval_batch_size, train=False, **common)
            if splits.val is not None
            else None
        )
        # the test split stays on the host (it is scored once, at the end) unless the run is on a device
        # whose memory should hold everything: then the host copies can go
        self._test_split = splits.test
        self._test_loader: DeviceLoader | None = None
        if self.device.type != "cpu" and config.evaluate_test:
            self._test_loader = DeviceLoader(splits.test, batch_size=config.eval_batch_size, train=False,
                                             **common)
            self._test_split = None
        del splits
        torch.manual_seed(config.seed)
        model = build_model(
            config.architecture, num_classes=model_outputs(checked.criterion, self.hierarchy),
            use_2fc=config.use_2fc,
            fc_inner_dim=config.fc_inner_dim, use_fc_batchnorm=config.use_fc_batchnorm,
            **config.model_kwargs(),
        ).to(self.device)
        if config.whiten_init:  # the first training images, normalised as the model sees them
            sample = self.train_loader.images[:WHITEN_IMAGES]
            whiten_first_conv(model, self.train_loader.normalise(sample))
        # parameters the model or an option keeps fixed (whiten_init's filters): never unfrozen
        self._fixed = {id(p) for p in model.parameters() if not p.requires_grad}
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.net: nn.Module = torch.compile(self.model) if config.compile else self.model
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.criterion = checked.criterion.to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.schedule = build_schedule(
            config.lr_schedule, self.optimizer, base_lr=config.lr, epochs=config.epochs,
            steps_per_epoch=len(self.train_loader), **config.schedule_kwargs(),
        )
        self.set_values(config.values_at(1))  # a new run stands at the start of epoch 1

    def set_values(self, values: Mapping[str, float]) -> None:
        """Put the values of an epoch in effect (:meth:`~hiercls.config.TrainConfig.values_at`), each as
        its declaration's role says: a run-level parameter of role ``rate`` (``lr``,
        :data:`~hiercls.registry.TRAINING_PARAMS`) becomes the schedule's base learning rate (the
        optimiser's rates follow at once, the schedule's shape on top, a head group keeping its
        ``lr_fc / lr`` scale); the loss's parameters are set on the loss in place
        (:meth:`hiercls.losses.HierarchyLoss.set_values`).

        Raises:
            ValueError: a key the loss cannot change, a run-level parameter no run can change, or a value
                out of range.
        """
        loss_values = {}
        for key, value in values.items():
            param = TRAINING_PARAMS.get(key)
            if param is None:
                loss_values[key] = value
            elif param.role == "rate":
                self.schedule.set_base_lr(value)
            else:
                raise ValueError(f"{key} is not a value a run can change from one epoch to the next")
        if loss_values:
            self.criterion.set_values(**loss_values)

    @property
    def eval_net(self) -> nn.Module:
        """What validation and test score: the moving average of the weights (``ema_decay``), else
        :attr:`net`."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def eval_model(self) -> nn.Module:
        """The module whose weights :attr:`eval_net` runs (the average's copy, or :attr:`model`): the weights
        ``best.pth`` and ``final_model.pth`` hold."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, loader: DeviceLoader, ks: tuple[int, ...] = VAL_KS, *, rankings: bool = False
                 ) -> dict[str, Any]:
        """:func:`evaluate` of :attr:`eval_net` on ``loader`` with the run's loss and ``flip_tta``."""
        return evaluate(self.eval_net, loader, self.hierarchy, self.criterion, ks=ks,
                        tta=self.config.flip_tta, rankings=rankings)

    def autocast(self) -> torch.autocast:
        """bf16 autocast of the training forward pass when ``amp`` is on (any device), else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def test_loader(self) -> DeviceLoader:
        """The official test set as an evaluation loader on the run's device."""
        if self._test_loader is None:
            assert self._test_split is not None
            self._test_loader = DeviceLoader(
                self._test_split, batch_size=self.config.eval_batch_size, train=False, device=self.device,
                channels_last=self.channels_last,
            )
        return self._test_loader

    def warm_up(self) -> float:
        """Compile the training and evaluation graphs (``config.compile``) before the first epoch.

        One forward and backward pass on the first training batch and one evaluation forward pass on
        the first validation batch, after which the weights, BatchNorm statistics, gradients and RNG
        states are put back exactly as they were: the run's results do not depend on the warm-up.

        Returns:
            seconds spent (0.0 when not compiling).
        """
        if not self.config.compile:
            return 0.0
        t0 = time.perf_counter()
        weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        rng = _rng_state(self.device)
        was_training = self.model.training
        images, labels = next(iter(self.train_loader.epoch(0)))
        self.model.train()
        with self.autocast():
            logits = eager_for(self.net, labels.shape[0], self.train_loader.batch_size)(images)
        self.criterion(logits.float(), labels).backward()
        self.optimizer.zero_grad(set_to_none=True)
        if self.val_loader is not None:
            images, labels = next(iter(self.val_loader))
            with torch.no_grad(), ieee_fp32():
                self.model.eval()
                eager_for(self.net, labels.shape[0], self.val_loader.batch_size)(images)
        self.model.train(was_training)
        self.model.load_state_dict(weights)
        _set_rng_state(rng, self.device)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def state(self, epoch: int, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        """The training state after ``epoch`` completed epochs (``last.pth``): tensors and plain values
        only (see :data:`CHECKPOINT_FORMAT`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": "last",
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "loss_epoch": float(getattr(self.criterion, "epoch", 0.0)),
            "rng": _rng_state(self.device),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "history": history,
            "best": best,
            "config": self.config.to_dict(),
        }

    def best_state(
        self, epoch: int, history: list[dict[str, Any]], best: dict[str, Any],
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """The weights of the best validation epoch so far (``best.pth``; default the model's current
        weights), with the history up to it."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": "best",
            "epoch": epoch,
            "model": self.eval_model.state_dict() if weights is None else dict(weights),
            "history": list(history),
            "best": best,
            "config": self.config.to_dict(),
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Continue exactly from a ``last.pth`` state (read with :func:`load_checkpoint`: CPU tensors,
        copied here to the run's device).

        The base learning rate is the checkpoint's (the one in effect in its last epoch; the training
        loop sets the next epoch's values at its start), and every parameter group keeps the rate scale
        this run's config gives it (``lr_fc / lr``), which differs from the checkpoint's when a run
        continues another with another ``lr`` (:func:`fit` ``continue_from``).
        """
        self.model.load_state_dict(state["model"])
        scales = [group.get(LR_SCALE_KEY) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, scale in zip(self.optimizer.param_groups, scales):
            if scale is None:
                group.pop(LR_SCALE_KEY, None)
            else:
                group[LR_SCALE_KEY] = scale
        schedule = dict(state["schedule"])
        if "base_lr" in schedule:
            self.schedule.set_base_lr(schedule["base_lr"])
        self.schedule.load_state_dict(schedule)
        self.criterion.set_epoch(state["loss_epoch"])
        if self.ema is not None:
            if "ema" not in state:
                raise CheckpointError("the checkpoint holds no moving average of the weights (it was written "
                                      "with ema_decay 0), but this run averages them")
            self.ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"], self.device)

    def load_best(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``best.pth`` state: its weights and epoch; a fresh optimiser (no momentum),
        the schedule and loss set to the start of the next epoch, the RNGs reseeded from the seed and
        the epoch. Not exact: the result differs from an uninterrupted run."""
        epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None:  # best.pth holds the averaged weights: both start from them
            self.ema.reset(self.model)
        position = {**self.schedule.state_dict(), "step": epoch * self.schedule.steps_per_epoch}
        self.schedule.load_state_dict(position)
        self.criterion.set_epoch(self.schedule.epoch)
        reseed = self.config.seed * 1_000_003 + epoch
        torch.manual_seed(reseed)
        random.seed(reseed)
        np.random.seed(reseed % 2**32)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch (float32 [B, 3, H, W] on the device, int64 [B]).

        The forward pass runs under :meth:`autocast`; the loss is computed from fp32 logits. No host
        synchronisation. Returns the batch's mean loss as a detached 0-dim tensor on the device.
        """
        self.criterion.set_epoch(self.schedule.epoch)
        with self.autocast():
            logits = eager_for(self.net, labels.shape[0], self.train_loader.batch_size)(images)
        loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def train_epoch(self, epoch: int, progress: Callable[[int], Any] | None) -> tuple[float, bool]:
        """One pass over the training split (``epoch`` counts completed epochs before it, from 0).

        The host reads the running loss every :data:`NAN_CHECK_EVERY` steps and at the end (the only
        synchronisations). Returns (mean training loss over the samples, whether it stayed finite).
        """
        self.model.train()
        self.freeze_backbone(epoch < self.config.train_backbone_after)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        steps = len(self.train_loader)
        for step, (images, labels) in enumerate(self.train_loader.epoch(epoch), start=1):
            loss_sum += self.train_step(images, labels).double() * labels.shape[0]
            seen += labels.shape[0]
            if step % NAN_CHECK_EVERY == 0 or step == steps:
                if not math.isfinite(float(loss_sum)):
                    return float("nan"), False
            if progress is not None:
                progress(1)
        return float(loss_sum) / seen, True

    def freeze_backbone(self, frozen: bool) -> None:
        """Freeze (or unfreeze) every parameter outside the model's head (``train_backbone_after``): a
        frozen parameter gets no gradient, so the optimiser leaves it, its momentum and its weight decay
        alone; BatchNorm statistics still update in training mode."""
        for p in backbone_parameters(self.model):
            if id(p) not in self._fixed:
                p.requires_grad_(not frozen)

    def weights_copy(self) -> dict[str, torch.Tensor]:
        """A host copy of the evaluated weights (:attr:`eval_model`: the ``best.pth`` of an epoch that is not
        checkpointed)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.eval_model.state_dict().items()}


def build_run(config: TrainConfig, data: Cifar100 | None = None) -> Run:
    """The one build path of a run (used by :func:`fit`, ``hiercls.evaluate`` and the benchmarks):
    :func:`~hiercls.build.check_config` (the hierarchy loaded once, the loss built once), then the data
    splits on the device, the model, the optimiser and the schedule, for ``config`` with its defaults
    filled in (:meth:`~hiercls.config.TrainConfig.resolved`).

    Args:
        config: the run's configuration.
        data: the decoded CIFAR-100, to skip loading it (e.g. shared by the trials of one process).

    Raises:
        ConfigError: as :func:`~hiercls.build.check_config`, or CUDA asked for where there is none.
        DataError: the data could not be loaded or is not the complete CIFAR-100.
    """
    return Run(config.resolved(), data)  # Run checks the config itself when given no Checked


def _data_dir(config: TrainConfig, *, fetch: bool = True) -> str:
    """The folder the run reads: ``config.data_dir``, or the one :func:`hiercls.data.find_cifar100`
    finds when it is None (the shared archive extracted, or a download, when that is where it is;
    ``fetch=False``: neither, the folder as it will be once filled).

    Raises:
        DataError: no CIFAR-100 anywhere (the message names every place tried) or a bad shared archive.
        StorageError: extracting the shared archive failed on an OS error (nothing is kept).
    """
    try:
        return str(resolve_data_dir(config.data_dir, download=config.download, fetch=fetch))
    except StorageError:
        raise
    except (OSError, ValueError) as err:
        raise DataError(str(err)) from err


def _load_data(config: TrainConfig) -> Cifar100:
    data_dir = _data_dir(config)  # an explicit folder is checked (exists, a folder) before any download
    try:
        return load_cifar100(data_dir, download=config.download)
    except (OSError, RuntimeError, ValueError) as err:
        raise DataError(str(err)) from err


def _existing_results(out: Path, ckpt_dir: Path) -> list[str]:
    """Result files in ``out`` (a lone config.yaml from a run that failed before training is not one)."""
    found = [name for name in RESULT_FILES if (out / name).exists()]
    return found + [f"{ckpt_dir.name}/{p.name}" for p in sorted(ckpt_dir.glob("*.pth"))]


def _resume_hint(ckpt_dir: Path) -> str:
    best = ckpt_dir / "best.pth"
    from_best = (
        "continue from the best epoch's weights with --resume-from-best (not exact: fresh optimiser "
        "momentum, RNG reseeded), or " if best.is_file() else ""
    )
    return f"{from_best}start again with --overwrite instead of --resume (replaces this run's results)"


def _prepare_output(
    config: TrainConfig, out: Path, ckpt_dir: Path, *, resume: bool, overwrite: bool, from_best: bool = False,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Check the output folder before any work and read the state to continue from (nothing is written;
    ``overwrite`` then deletes the old results, unless ``dry_run``).

    Returns the checkpoint to continue from (``last.pth``, or ``best.pth`` with ``from_best``), or None
    for a new run.

    Raises:
        ConfigError: resume and overwrite together; resume with a changed config or without a
            checkpoint in a folder holding results.
        CheckpointError: the checkpoint to continue from is unreadable (the message names two ways on).
        RunExistsError: results exist and neither ``resume`` nor ``overwrite``.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    existing = _existing_results(out, ckpt_dir)
    if resume:
        source = ckpt_dir / ("best.pth" if from_best else "last.pth")
        if not source.exists():
            if from_best:
                raise ConfigError(
                    f"cannot resume from the best epoch in {str(out)!r}: {ckpt_dir.name}/best.pth does not "
                    "exist (no epoch has been validated)"
                )
            if existing == ["all_epoch_results.json"]:
                # interrupted before its first checkpoint (checkpoint_every > 1): the same run starts
                # again from epoch 1 and rewrites those records (their epochs were never checkpointed)
                _check_same_run(config, out)
                log.warning("nothing to resume in %s (interrupted before its first checkpoint): starting "
                            "again from epoch 1", out)
                return None
            if existing:
                raise ConfigError(
                    f"cannot resume in {str(out)!r}: it holds results ({', '.join(existing)}) but no "
                    f"{ckpt_dir.name}/last.pth; pass --overwrite instead of --resume to start again"
                )
            log.warning("nothing to resume in %s (no checkpoint yet): starting a new run", out)
            return None
        _check_same_run(config, out)
        if from_best:
            state = load_checkpoint(source, require=("model", "epoch"))
            if not isinstance(state.get("history"), list):  # a best.pth of format version 1
                state["history"] = _history_until(out / "all_epoch_results.json", int(state["epoch"]))
            return state
        try:
            state = load_checkpoint(
                source, require=("model", "optimizer", "schedule", "rng", "epoch", "history", "best")
            )
            _check_training_checkpoint(state, source)
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume: {err}; {_resume_hint(ckpt_dir)}") from err
        return state
    if from_best:
        raise ConfigError("--resume-from-best continues a run: it needs --resume")
    if existing and not overwrite:
        raise RunExistsError(
            f"output folder {str(out)!r} already holds results ({', '.join(existing)}); pass --resume to "
            "continue that run, --overwrite to replace it, or choose another --out_folder"
        )
    if overwrite and not dry_run:
        for name in ("config.yaml", *RESULT_FILES):
            (out / name).unlink(missing_ok=True)
        for name in ("last.pth", "best.pth"):
            (ckpt_dir / name).unlink(missing_ok=True)
        prune_predictions(out, set())  # the replaced run's saved predictions go with its records
    return None


def _check_same_run(config: TrainConfig, out: Path) -> None:
    """Raise :class:`ConfigError` naming every key in which ``config`` differs from ``out/config.yaml``
    (compared as :func:`_comparable` does)."""
    saved = _comparable(read_saved_config(out / "config.yaml"))
    current = _comparable(config)
    differing = sorted(k for k in current if saved.get(k) != current[k])
    if differing:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current[k]!r}" for k in differing)
        switches = [k for k in differing if k in ("amp", "channels_last")]
        hint = (f" ({' and '.join(switches)} compared as on/off on this device: --set {switches[0]}=true "
                "or =false matches the saved run)") if switches else ""
        if "data_dir" in differing:
            hint += f" (--data-dir {saved.get('data_dir')} reads the saved run's data folder)"
        if "word_vectors_sha256" in differing:
            hint += " (the word-vectors file gives other class vectors than when the run started)"
        raise ConfigError(
            f"refusing to resume in {str(out)!r}: the config differs in {len(differing)} key(s): "
            f"{detail}{hint}"
        )


def _comparable(config: TrainConfig) -> dict[str, Any]:
    """The keys that must match for a resume: all but :data:`~hiercls.config.RESUME_FREE_KEYS` (where the
    run is, and speed only), with ``amp`` and ``channels_last`` as the on/off they mean on the run's
    device."""
    # val_split_sha256 is what the run draws from keys compared here (the data, val_size, split_seed);
    # a config given again on the command line has none yet
    out = {k: v for k, v in config.to_dict().items() if k not in (*RESUME_FREE_KEYS, "val_split_sha256")}
    try:
        kind = resolve_device(config.device).type
    except ConfigError:
        return out
    out["amp"] = "on" if config.use_amp(kind) else "off"
    out["channels_last"] = "on" if config.use_channels_last(kind) else "off"
    return out


def _history_until(path: Path, epoch: int) -> list[dict[str, Any]]:
    """The per-epoch records of ``all_epoch_results.json`` up to ``epoch`` (JSON, never unpickled)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot resume from the best epoch: {str(path)!r} is unreadable ({err}) and best.pth has no "
            "history of its own"
        ) from err
    return [r for r in records if isinstance(r, dict) and int(r.get("epoch", 0)) <= epoch]


def default_out_folder(config: TrainConfig) -> Path:
    """``runs/<loss>_<architecture>_seed<seed>`` when ``out_folder`` is not set."""
    return Path("runs") / f"{config.loss}_{config.architecture}_seed{config.seed}"


def _log_line(record: Mapping[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"lr {record['scheduled_lr']:.4g}",  # the rate the epoch starts with
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
    resume_from_best: bool = False,
    continue_from: str | Path | None = None,
    keep_predictions: Sequence[Callable[[Mapping[str, Any]], float]] = (),
) -> dict[str, Any]:
    """Train ``config`` to the end (or to a non-finite loss), validating every epoch and checkpointing
    every ``config.checkpoint_every`` epochs and after the last.

    Args:
        config: the run's configuration; validated before any work (ConfigError lists every problem).
        reporter: called after every epoch with the flat report (``epoch``, ``scheduled_lr`` (the rate
            of the epoch's first step: the LR schedule's shape applied to ``lr``), ``lr`` (the base
            learning rate in effect: the config's ``lr`` or its ``value_schedule``'s), the loss's variable
            parameters in effect under their own names (``lambda_fine`` and ``lambda_coarse``, ``alpha``
            or ``beta``; only those the loss takes), ``train_loss``, ``val_loss``, ``val_top1_error``,
            ``val_mistake_severity``, ``val_hdist@{1,5,10,20}``, ``val_coarse_error``, all other
            ``val_*`` metric keys including ``val_crm/...``, ``epoch_seconds``, ``images_per_second``,
            ``compile_seconds`` (compiling before this epoch; 0 when eager or already compiled),
            ``status`` ``ok``/``nan``) and the checkpoint folder when this epoch wrote ``last.pth``
            into it, else None. The same records, in order, are ``all_epoch_results.json`` and the
            result's ``history``; records of a resumed or continued history written by an earlier
            hiercls (``base_lr`` the value, ``lr`` the scheduled rate; or no values at all) are read in
            this spelling (:func:`~hiercls.value_schedule.upgrade_record`, the values missing taken
            from the config that ran them).
        resume: continue from ``checkpoint_dir/last.pth`` if present; the folder's saved config must
            equal ``config`` in every key but ``out_folder`` (a run folder copied or moved elsewhere
            resumes where it now is, and its ``config.yaml`` is rewritten to name it), ``compile``,
            ``num_threads`` and ``checkpoint_every`` (``amp``/``channels_last`` compared as on/off on the
            run's device). Epochs after the last checkpoint are recomputed. Bit-exact on the CPU always;
            on CUDA only with ``deterministic: true``.
        overwrite: replace the results of an earlier run in the output folder.
        resume_from_best: with ``resume``, continue from ``best.pth`` instead (its weights and epoch;
            fresh optimiser momentum, RNGs reseeded: not exact), e.g. when ``last.pth`` is corrupt; the
            unreadable ``last.pth`` is kept as ``last.pth.corrupt``.
        checkpoint_dir: where ``last.pth``/``best.pth`` live (default ``<out_folder>/checkpoints``).
        data: the decoded CIFAR-100, to skip loading (e.g. shared by search trials on one node).
        progress: progress bar (default: when stderr is a terminal), else one log line per epoch.
        continue_from: a ``last.pth`` of another run (population-based training's exploit step): this
            new run starts from its weights, optimiser state, schedule position, RNG states, epoch and
            history, and trains on from the next epoch with this config's values (``lr``, the loss's
            variable parameters, ``value_schedule``: :meth:`~hiercls.config.TrainConfig.values_at`).
            That run's config must equal this one in every key but those, ``seed``, ``out_folder``,
            ``compile``, ``num_threads`` and ``checkpoint_every``; the run takes that run's ``seed`` (its
            model's initialisation, validation split and data order; ``config.yaml`` records it), and
            its history starts with that run's records. The run writes its own ``last.pth`` at once, so
            ``resume`` continues it (not from epoch 1) whenever it is interrupted. ``best.pth`` and
            ``best_epoch`` cover this run's own epochs (``last.pth`` holds no best weights). Excludes
            ``resume``; the file is read before anything in the output folder is touched, and may not be
            one ``overwrite`` deletes.
        keep_predictions: objectives (functions of an epoch record, lower is better) whose best epoch's
            validation predictions are kept (:mod:`hiercls.evidence`, ``val_predictions/``) besides the
            last epoch's and the best by ``val_top1_error``'s (a search passes its objective).

    Returns:
        ``{"status", "epochs_run", "best_epoch", "best_val_top1_error", "out_folder", "history",
        "test"}`` with ``test`` the contents of ``final_test_results.json`` (None when not evaluated).

    Raises:
        ConfigError: invalid config, or resume with a differing saved config; ``continue_from`` with
            ``resume``, from a run whose config differs in a key that must stay the same (all named), or
            from a run that has completed all its epochs.
        RunExistsError: the output folder has results and neither ``resume`` nor ``overwrite``.
        CheckpointError: the checkpoint to resume or continue from is unreadable, foreign or of an older
            format (nothing is written then).
        DataError: the data could not be loaded (the message names the folder or file), or it is not
            the complete CIFAR-100 (all 100 classes in training and test).
        StorageError: the output folder is not writable (checked before training), or a write failed
            during the run (the last completed epoch's checkpoint stays intact: free space and resume).
    """
    if continue_from is not None and (resume or resume_from_best):
        raise ConfigError("continue_from and resume exclude each other: resume continues the run in its own "
                          "folder with its own config; continue_from starts a new run from another run's "
                          "last.pth")
    config, checked, out = _recorded(config)
    if data is None:  # checked before any work; a folder found (no data_dir) is recorded in config.yaml
        found = _data_dir(config)
        if config.data_dir is None:
            config = dataclasses.replace(config, data_dir=found)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out / "checkpoints"
    donor = None
    if continue_from is not None:  # read and checked before anything in the output folder is touched
        donor, config = _continuation(config, Path(continue_from), ckpt_dir, overwrite=overwrite)
    state = _prepare_output(
        config, out, ckpt_dir, resume=resume, overwrite=overwrite, from_best=resume_from_best
    )
    check_writable(out, "output folder")
    check_writable(ckpt_dir, "checkpoint folder")
    data_box = [data]
    del data  # the run owns the decoded set from here (and drops it once on a device)
    with deterministic_mode(config.deterministic, resolve_device(config.device)):
        return _fit(config, reporter, out, ckpt_dir, donor if donor is not None else state, resume_from_best,
                    progress, data_box, checked, continued=donor is not None,
                    keep_predictions=keep_predictions)


def _recorded(config: TrainConfig) -> tuple[TrainConfig, Checked, Path]:
    """``config`` checked (:func:`~hiercls.build.check_config`) and as a run records it: resolved, with its
    output folder, and ``word_vectors`` absolute with the vectors' sha256; the check's result; the folder.

    Raises:
        ConfigError: as :func:`~hiercls.build.check_config`.
    """
    checked = check_config(config)
    config = config.resolved()
    out = Path(config.out_folder) if config.out_folder else default_out_folder(config)
    config = dataclasses.replace(config, out_folder=str(out))
    if config.word_vectors is not None:  # recorded as read: absolute, with the vectors' sha256
        config = dataclasses.replace(config, word_vectors=str(Path(config.word_vectors).resolve()),
                                     word_vectors_sha256=checked.word_vectors_sha256)
    return config, checked, out


def check_run(
    config: TrainConfig, *, resume: bool = False, overwrite: bool = False, resume_from_best: bool = False
) -> tuple[TrainConfig, str]:
    """Everything :func:`fit` checks before its work, without the work (``python -m hiercls.train
    --check``): the config, hierarchy, loss, schedule and word vectors (:func:`~hiercls.build.check_config`);
    where the data is (found as a run finds it, but nothing is extracted, downloaded or read: an explicit
    folder must exist, and hold a CIFAR-100 layout unless ``download``); the output folder (existing
    results, ``resume``'s checkpoint and unchanged config, ``overwrite``); and that the output folder can be
    created (without writing). Nothing is written or deleted.

    Returns:
        The resolved config a run would record in ``config.yaml`` (``out_folder`` and a found
        ``data_dir`` filled in), and one line saying where the data comes from.

    Raises:
        ConfigError, RunExistsError, CheckpointError, DataError, StorageError: as :func:`fit` before its
            work.
    """
    config, _, out = _recorded(config)
    found = Path(_data_dir(config, fetch=False))
    if has_dataset(found):
        data = f"CIFAR-100 from {found}"
    elif found == project_data_dir() and shared_archive().is_file():
        data = f"CIFAR-100 from {found}, extracted there from {shared_archive()} first"
    elif config.download:
        data = f"CIFAR-100 from {found}, downloaded there by torchvision first"
    else:
        raise DataError(f"data folder {str(found)!r} holds no CIFAR-100 layout (torchvision's "
                        "cifar-100-python/ or ImageFolder train/ and val/) and download is off")
    if config.data_dir is None:
        config = dataclasses.replace(config, data_dir=str(found))
    ckpt_dir = out / "checkpoints"
    _prepare_output(config, out, ckpt_dir, resume=resume, overwrite=overwrite, from_best=resume_from_best,
                    dry_run=True)
    check_writable(out, "output folder", probe=False)
    return config, data


CONTINUE_FREE_KEYS = ("seed", "out_folder", "value_schedule")
"""Keys in which a run continued from another's checkpoint (:func:`fit` ``continue_from``) may differ
from it, besides ``lr``, the losses' variable parameters
(:func:`~hiercls.value_schedule.all_variable_keys`) and :data:`~hiercls.config.RESUME_FREE_KEYS`."""


def _continuation(
    config: TrainConfig, path: Path, ckpt_dir: Path, *, overwrite: bool
) -> tuple[dict[str, Any], TrainConfig]:
    """The ``last.pth`` state a run continues from (its records completed with the values in effect) and
    ``config`` with that run's seed, after checking the two runs are the same but for the values.

    Raises:
        ConfigError: a key differs that must not (all named), the checkpoint has completed every epoch,
            or it is a file ``overwrite`` would delete.
        CheckpointError: the file is unreadable, foreign, of an older format, or holds no valid config.
    """
    own = {(ckpt_dir / name).resolve() for name in ("last.pth", "best.pth")}
    if overwrite and path.resolve() in own:
        raise ConfigError(
            f"cannot continue from {str(path)!r}: it is in this run's checkpoint folder, which overwrite "
            "empties before the run writes its own checkpoint; copy it elsewhere first"
        )
    try:
        state = load_checkpoint(
            path, require=("model", "optimizer", "schedule", "rng", "epoch", "history", "best", "config")
        )
        _check_training_checkpoint(state, path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot continue: {err}") from err
    try:
        if not isinstance(state["config"], dict):
            raise ConfigError(f"a {type(state['config']).__name__}, not a mapping of config keys")
        donor = TrainConfig.from_dict(upgrade_saved_values(state["config"]))
    except ConfigError as err:
        raise CheckpointError(f"cannot continue from {str(path)!r}: its config is invalid ({err})") from err
    free = {*CONTINUE_FREE_KEYS, *all_variable_keys()}
    saved = {k: v for k, v in _comparable(donor).items() if k not in free}
    current = {k: v for k, v in _comparable(config).items() if k not in free}
    differing = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differing:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in differing)
        may = ", ".join(sorted(free | set(RESUME_FREE_KEYS)))
        raise ConfigError(
            f"cannot continue from {str(path)!r}: its run differs from this config in {len(differing)} "
            f"key(s) that must stay the same: {detail} (only {may} may differ)"
        )
    epoch = int(state["epoch"])
    if epoch >= config.epochs:
        raise ConfigError(f"cannot continue from {str(path)!r}: it has completed all {config.epochs} epochs")
    state = dict(state)
    state["history"] = _upgraded_history(state["history"], donor)
    if donor.seed != config.seed:
        log.info("continuing %s with seed %d, the seed of the run it continues (its initialisation, "
                 "validation split and data order), not %d", config.out_folder, donor.seed, config.seed)
    return state, dataclasses.replace(config, seed=donor.seed)


def _upgraded_history(history: list[Mapping[str, Any]], config: TrainConfig) -> list[dict[str, Any]]:
    """The records of a run of ``config`` in today's spelling
    (:func:`~hiercls.value_schedule.upgrade_record`), each with the values in effect it lacks (written
    before they were recorded) from ``config`` (:meth:`~hiercls.config.TrainConfig.values_at`)."""
    return [_with_values(r, config.values_at(int(r["epoch"]))) for r in history]


def _with_values(record: Mapping[str, Any], values: Mapping[str, float]) -> dict[str, Any]:
    """``record`` upgraded (:func:`~hiercls.value_schedule.upgrade_record`), with the values it lacks
    right after ``scheduled_lr``, where a new record holds them."""
    record = upgrade_record(record)
    missing = {k: v for k, v in values.items() if k not in record}
    if not missing or "scheduled_lr" not in record:
        return {**record, **missing}
    out: dict[str, Any] = {}
    for key, value in record.items():
        out[key] = value
        if key == "scheduled_lr":
            out.update(missing)
    return out


def _fit(
    config: TrainConfig,
    reporter: Reporter | None,
    out: Path,
    ckpt_dir: Path,
    state: dict[str, Any] | None,
    resume_from_best: bool,
    progress: bool | None,
    data_box: list[Cifar100 | None],
    checked: Checked,
    *,
    continued: bool = False,
    keep_predictions: Sequence[Callable[[Mapping[str, Any]], float]] = (),
) -> dict[str, Any]:
    """:func:`fit` after its checks, inside the run's numerics settings. ``data_box`` holds the decoded
    data set and is emptied once the run has built its loaders, so a device run keeps no host copy.
    ``continued``: ``state`` is another run's ``last.pth`` (``continue_from``), not this run's."""
    run = Run(config, data_box.pop(), checked)  # data, model, loss: fails before any result is written
    config = run.config  # with the identity of its validation split
    atomic_write_text(out / "config.yaml", config.to_yaml())
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "val_top1_error": math.inf}
    start_epoch = 0
    last_path = ckpt_dir / "last.pth"
    if state is not None and resume_from_best:
        run.load_best(state)
        history, start_epoch = _upgraded_history(state["history"], config), int(state["epoch"])
        best = {"epoch": start_epoch, "val_top1_error": float(state.get("best", {}).get(
            "val_top1_error", history[-1]["val_top1_error"] if history else math.inf))}
        if last_path.exists():
            last_path.replace(last_path.with_name("last.pth.corrupt"))
        log.warning("resumed %s from the best epoch %d/%d (not exact: fresh optimiser momentum, RNG "
                    "reseeded)", out, start_epoch, config.epochs)
    elif state is not None and continued:
        run.load(state)  # its history already upgraded with the donor's values (_continuation)
        history, start_epoch = list(state["history"]), int(state["epoch"])
        # this run's own checkpoint of where it starts: resumable (with its own config) from the first
        # moment, so an interruption before its first checkpoint never restarts it from epoch 1
        atomic_write_files([(last_path, _serialize(run.state(start_epoch, history, best)))])
        atomic_write_text(out / "all_epoch_results.json", json.dumps(history, indent=2))
        log.info("continuing %s from another run's epoch %d/%d", out, start_epoch, config.epochs)
    elif state is not None:
        run.load(state)
        history, best, start_epoch = list(state["history"]), dict(state["best"]), int(state["epoch"])
        history = _upgraded_history(history, config)  # records of an earlier hiercls in today's spelling
        log.info("resumed %s at epoch %d/%d", out, start_epoch, config.epochs)
    compile_seconds = run.warm_up() if start_epoch < config.epochs else 0.0
    if config.compile:
        log.info("compiled the training and evaluation graphs in %.1f s", compile_seconds)

    try:
        return _train(run, config, out, ckpt_dir, reporter, history, best, start_epoch, progress,
                      compile_seconds, keep_predictions)
    except StorageError as err:
        raise StorageError(
            f"{err}; the run stopped, and the checkpoint of its last completed epoch is intact: free the "
            "space (or fix the folder) and run the same command with --resume",
            err.errno,
        ) from err


def _train(
    run: Run,
    config: TrainConfig,
    out: Path,
    ckpt_dir: Path,
    reporter: Reporter | None,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    start_epoch: int,
    progress: bool | None,
    compile_seconds: float = 0.0,
    keep_predictions: Sequence[Callable[[Mapping[str, Any]], float]] = (),
) -> dict[str, Any]:
    """The epochs of :func:`fit` from ``start_epoch``, then the final model and test results.

    ``best.pth`` and ``last.pth`` are written together every ``checkpoint_every`` epochs and after the
    last one; a better epoch in between is kept as a host copy of its weights until then.
    """
    last_path, best_path = ckpt_dir / "last.pth", ckpt_dir / "best.pth"
    show_bar = sys.stderr.isatty() if progress is None else progress
    status = history[-1]["status"] if history else "ok"
    n_train = run.train_loader.num_samples
    pending_best: dict[str, Any] | None = None
    for epoch in range(start_epoch, config.epochs):
        if status != "ok":
            break
        values = config.values_at(epoch + 1)
        run.set_values(values)  # the epoch's lr and loss values, from its start
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=len(run.train_loader), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        rate = run.schedule.lr  # the rate of the epoch's first step
        t0 = time.perf_counter()
        train_loss, finite = run.train_epoch(epoch, bar.update if bar else None)
        if run.cuda:
            torch.cuda.synchronize(run.device)
        train_seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        # the values in effect under the config's names (lr, lambda_fine, ...) after the scheduled rate
        record: dict[str, Any] = {"epoch": epoch + 1, "scheduled_lr": rate, **values,
                                  "train_loss": train_loss}
        status = "ok" if finite else "nan"
        ranked = None
        if run.val_loader is not None:
            if finite:
                metrics = run.evaluate(run.val_loader, rankings=True)
                ranked = metrics.pop("rankings")
                if not math.isfinite(metrics["loss"]):
                    status = "nan"
            if not finite or status == "nan":
                template = evaluate_keys(run.hierarchy)
                metrics = dict.fromkeys(template, float("nan"))
            record["val_loss"] = metrics["loss"]
            skip = ("loss", "num_samples", "num_mistakes")
            record.update({f"val_{k}": v for k, v in metrics.items() if k not in skip})
            record["val_split_sha256"] = config.val_split_sha256
        record["epoch_seconds"] = time.perf_counter() - t0
        record["images_per_second"] = n_train / train_seconds if train_seconds > 0 else float("nan")
        record["compile_seconds"] = compile_seconds
        compile_seconds = 0.0
        record["status"] = status
        history.append(record)

        written = None
        if status == "ok":
            checkpoint = (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
            if run.val_loader is not None and record["val_top1_error"] < best["val_top1_error"]:
                best = {"epoch": epoch + 1, "val_top1_error": record["val_top1_error"]}
                weights = None if checkpoint else run.weights_copy()  # None: written below, as they are
                pending_best = run.best_state(epoch + 1, history, best, weights)
            if checkpoint:
                # best.pth and last.pth are replaced together or not at all (a full disk changes neither)
                files = [] if pending_best is None else [(best_path, _serialize(pending_best))]
                files.append((last_path, _serialize(run.state(epoch + 1, history, best))))
                atomic_write_files(files)
                pending_best, written = None, ckpt_dir
        atomic_write_text(out / "all_epoch_results.json", json.dumps(history, indent=2))
        if ranked is not None and status == "ok":  # per-image evidence: the last and the best epochs kept
            save_predictions(out, epoch + 1, ranked, run.val_indices, config.val_split_sha256)
            prune_predictions(out, kept_epochs(history, (_val_top1, *keep_predictions)))
        log.info(_log_line(record, config.epochs))
        if reporter is not None:
            reporter(dict(record), written)

    if pending_best is not None:  # a run that went NaN before its next checkpoint
        atomic_write_files([(best_path, _serialize(pending_best))])
    atomic_torch_save(run.eval_model.state_dict(), out / "final_model.pth")
    test = None
    if config.evaluate_test and status == "ok":
        # a finished run resumed (interrupted after its test, before a search recorded its end) trains
        # nothing: its test results stand, and the test set is not scored a second time
        test = _scored_already(out, config) if start_epoch == config.epochs else None
        if test is None:
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


def _val_top1(record: Mapping[str, Any]) -> float:
    return float(record.get("val_top1_error", math.nan))


def evaluate_keys(hierarchy: Hierarchy) -> list[str]:
    """The metric keys :func:`evaluate` returns for ``hierarchy`` (used to fill NaN reports)."""
    probe = MetricAccumulator(hierarchy, VAL_KS, cifar100_superclass_labels())
    probe.update(torch.zeros(1, hierarchy.num_classes), torch.zeros(1, dtype=torch.long))
    return [*probe.compute().keys(), "loss"]


def _scored_already(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The run's ``final_test_results.json`` when it scored the model of its last epoch
    (``config.epochs``), else None (none, unreadable, or of another length: scored again)."""
    try:
        results = json.loads((out / "final_test_results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("epoch") != config.epochs:
        return None
    log.info("test: scored already at the end of this run (%s); not scored again",
             out / "final_test_results.json")
    return results


def _final_test(run: Run, out: Path, best_path: Path | None, best: Mapping[str, Any]) -> dict[str, Any]:
    loader = run.test_loader()
    results = test_results(run.evaluate(loader, ks=TEST_KS))
    results["epoch"] = run.config.epochs
    if best_path is not None:
        scored = run.eval_model
        last_weights = {k: v.clone() for k, v in scored.state_dict().items()}
        best_weights = load_checkpoint(best_path)["model"]
        if _same_weights(last_weights, best_weights):  # the last epoch was the best: scored already
            best_results = copy.deepcopy(results)
        else:
            scored.load_state_dict(best_weights)
            best_results = test_results(run.evaluate(loader, ks=TEST_KS))
            scored.load_state_dict(last_weights)
        best_results["epoch"] = best["epoch"]
        results["best_val_model"] = best_results
    atomic_write_text(out / "final_test_results.json", json.dumps(results, indent=2))
    log.info(
        "test: accuracy %.2f%%, mistake severity %.4f, hdist@1 %.4f (last model, epoch %d)",
        results["test_accuracy"], results["metrics"]["mistake_severity"], results["metrics"]["hdist@1"],
        results["epoch"],
    )
    return results



def _same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys and bit-identical tensors (compared on the CPU)."""
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu())
        for k in a)


_Run = Run  # the name before hiercls 0.3 (tests and scripts that built a run directly)
