"""The typed training configuration: defaults < YAML < command line, validated before any work.

One frozen :class:`TrainConfig` flows from the entry point (``python -m hiercls.train``, a search
trial, an exported config) inward. It has typed fixed fields plus the chosen loss's and schedule's
parameters (``loss_params``, ``schedule_params``), checked against what their registry entries declare
(:mod:`hiercls.registry`). In YAML, on the command line and in the written ``config.yaml`` those
parameters are flat keys with the original project's names (``alpha``, ``beta``, ``lambda_fine``,
``coarse_loss_start_epoch``, ``t0``, ...); a key not set takes the entry's default, and
:meth:`TrainConfig.resolved` fills those in, so the ``config.yaml`` written next to the results states
every value used.

A ``value_schedule`` changes ``lr`` and the loss's variable parameters from a given epoch on
(:mod:`hiercls.value_schedule`); :meth:`TrainConfig.values_at` gives the values in effect in an epoch.

This module imports only the standard library, ``yaml``, :mod:`hiercls.registry` and
:mod:`hiercls.value_schedule`; the registries load their entries on first use.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hiercls.registry import (
    HIERARCHIES,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    TRAINING_PARAMS,
    Param,
    param_registries,
)
from hiercls.value_schedule import (
    ValueSchedule,
    parse_value_schedule,
    value_schedule_problems,
    values_in_effect,
    variable_keys,
)

__all__ = [
    "ConfigError", "RESUME_FREE_KEYS", "SWITCH_VALUES", "TrainConfig", "invalid_config", "load_config",
    "param_keys", "coerce_field",
    "EMBEDDING_KEYS", "VALUE_SCHEDULE_KEYS", "fill_added_keys", "read_saved_config", "upgrade_saved_values",
    "RUN_FOLDER_MARKERS", "read_config_file", "recorded_run_folder", "FLIP_MODES", "FIDELITY_KEYS",
    "SPLIT_KEYS",
    "resolve_config_file", "shipped_dir", "shipped_recipes", "check_config_keys", "param_owner",
    "read_config_values",
]


class ConfigError(ValueError):
    """An invalid configuration: every problem found is listed in the message, and in ``problems``
    (one string each, without the ``invalid config:`` heading)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def invalid_config(problems: list[str]) -> ConfigError:
    """The error listing ``problems``: one line for one problem, else one indented line per problem."""
    if len(problems) == 1:
        return ConfigError(f"invalid config: {problems[0]}", problems)
    return ConfigError("invalid config:\n  " + "\n  ".join(problems), problems)


PARAM_FIELDS = {"architecture": "model_params", "loss": "loss_params", "lr_schedule": "schedule_params"}
"""The config key naming a registry entry -> the field holding that entry's parameters."""


def param_keys(kind: str) -> dict[str, Param]:
    """Every parameter the entries of registry ``kind`` (``architecture``, ``loss`` or ``lr_schedule``)
    declare: the flat
    config keys of that kind, as :data:`hiercls.registry` holds them now."""
    return param_registries()[kind].all_params()


def param_owner(key: str) -> str | None:
    """``architecture``/``loss``/``lr_schedule`` when ``key`` is a parameter of such an entry, else None."""
    for kind in PARAM_FIELDS:
        if key in param_keys(kind):
            return kind
    return None


Params = dict
"""The set parameters of the chosen loss or schedule, by their flat config keys (values already typed)."""
Switch = str
"""A config value ``auto`` (decided by the device: on for CUDA), ``true`` or ``false``; YAML booleans and
``on``/``off`` are read as ``true``/``false``."""
SWITCH_VALUES = ("auto", "true", "false")
FLIP_MODES = ("random", "alternate", "none")
"""The values of ``flip`` (:class:`TrainConfig`)."""
RESUME_FREE_KEYS = ("out_folder", "compile", "num_threads", "checkpoint_every")
"""Keys that may differ when a run is resumed: ``out_folder`` is where the run is, not what it is (a run
folder copied or moved elsewhere resumes where it now is, and its ``config.yaml`` then names that
folder); the others change how fast it runs, not what it computes."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Units: epochs are whole passes over the training split;
    learning rates are absolute; sizes are image counts.

    Data: ``data_dir`` (CIFAR-100 in torchvision's or the ImageFolder layout; None = found as
    :func:`hiercls.data.find_cifar100` does: ``$HIERCLS_DATA_DIR``, the project's ``.data/cifar-100``, the
    shared archive, torchvision's download; a run records the folder it read), ``download`` (through
    torchvision when absent), ``hierarchy`` (built-in name or file), ``val_size`` (images held out of the
    official training set, stratified; 0 = train on all 50,000, no validation), ``split_seed`` (the seed of
    the validation split and of the ``max_train_samples`` subset; None = ``seed``, as runs before it
    existed: a search fixes it for all its trials, so they train on the same images and are validated on
    the same ones while weights, batches and augmentation follow each trial's ``seed``),
    ``val_split_sha256`` (the identity of the validation images: :func:`hiercls.evidence.split_sha256` of
    their sorted positions; a run records it, and a value set must equal the split the run draws),
    ``max_train_samples`` (stratified subset for quick runs), ``cutout`` (Cutout square side in pixels,
    0 = off),
    ``crop_padding`` (the random crop's zero padding in pixels on each side, 0 = no crop; default 4),
    ``flip`` (horizontal flips of the training images: ``random``, each image with probability 1/2 in
    every epoch; ``alternate``, each image flipped in every other epoch, the first choice random per
    image (Jordan 2024, airbench's derandomised flip); ``none``).

    Model and loss: ``architecture`` (model registry name) and ``model_params`` (its parameters that
    are set, e.g. ``speednet``'s ``width``), ``loss`` (loss registry name) and ``loss_params`` (its
    parameters that are set): flat keys in YAML and ``config.yaml``.

    Class embeddings and head (the reference code's flags): ``barzdenzler`` (the embedding losses'
    class embeddings are Barz & Denzler's, the default for those losses), ``devise`` (DeViSE: the class
    embeddings are fastText word vectors of the class names read from ``word_vectors``, a ``.bin`` model or
    ``.vec`` file; a run records it as an absolute path, and in ``word_vectors_sha256`` the sha256 of the
    class vectors it gave, float64 ``[C, D]``: a resume, an evaluation or a rerun of the run's
    ``config.yaml`` whose file now gives other vectors is refused), ``embedding_size`` (taken from the
    embedding; a value set must equal it), ``use_2fc``, ``fc_inner_dim`` and ``use_fc_batchnorm`` (a
    two-layer head, see :func:`hiercls.models.build_model`),
    ``train_backbone_after`` (epochs during which only the head trains: the backbone's parameters are
    frozen, its BatchNorm statistics still update; the reference code counted optimiser steps).

    Optimisation: ``optimizer`` (``sgd`` = Nesterov SGD, ``adamw``), ``lr`` (base learning rate, declared
    in :data:`hiercls.registry.TRAINING_PARAMS` with its range and default; the default 0.05 is the linear
    scaling rule 0.1 x batch_size / 256 of Goyal et al. (2017) at batch 128; the original project
    hard-coded 0.1, which leaves Plain-11 near chance for its first epochs),
    ``momentum``, ``weight_decay``, ``lr_fc`` and ``weight_decay_fc`` (the head's learning rate (scaled by
    the schedule like ``lr``) and weight decay, a second parameter group; None: as the backbone's),
    ``amsgrad`` (adamw only), ``lr_schedule`` and ``schedule_params``
    (flat keys, as for the loss), ``epochs``, ``batch_size``, ``eval_batch_size``, ``value_schedule``
    (None, or ``{epoch: {key: value}}`` with 1-based epochs in ``1..epochs`` and keys among ``lr`` and the
    loss's variable parameters: from the start of that epoch the key takes that value, the LR schedule's
    shape applying on top of ``lr``; :mod:`hiercls.value_schedule`, :meth:`values_at`).

    Weights and evaluation (:mod:`hiercls.weights`): ``ema_decay`` (0 = off; else an exponential moving
    average of the weights, updated after every optimiser step with decay ``min(ema_decay, (1 + t) /
    (10 + t))`` at step ``t``, is what validation, ``best.pth``, ``final_model.pth`` and the test score:
    the raw weights keep training), ``whiten_init`` (the model's first convolution is set from the
    training images' patch covariance, the leading eigenvectors scaled by ``1/sqrt(eigenvalue + 5e-4)``
    with both signs (Jordan 2024, airbench), and its weight is frozen; its bias still trains),
    ``flip_tta`` (validation and test score the mean of the outputs of each image and its mirror image:
    every metric then comes from those averaged outputs).
    Run: ``seed``, ``device`` (``auto`` = CUDA when available, else CPU), ``out_folder``,
    ``evaluate_test`` (score the official test set at the end; search trials turn it off),
    ``num_threads`` (CPU threads for torch, None = torch's default).

    Accelerated path (one code path on every device, so CI on the CPU runs the branches a GPU takes):
    ``amp`` (bf16 autocast of the training forward pass; validation and test metrics always come from
    fp32 logits) and ``channels_last`` (NHWC memory format of images and convolution weights) take
    ``auto`` (on for CUDA, off for the CPU), ``true`` or ``false``; ``deterministic`` (cuDNN benchmark
    off, deterministic cuDNN and torch algorithms, ``CUBLAS_WORKSPACE_CONFIG``: bit-exact resume and
    reproduction on CUDA, slower); ``compile`` (``torch.compile`` of the model: one training and one
    evaluation graph; a batch of another size runs the same weights eagerly); ``checkpoint_every``
    (epochs between ``last.pth`` writes, default 1; the last epoch is always written, and a resumed run
    recomputes at most ``checkpoint_every - 1`` epochs).

    Before hiercls 0.3, ``amp: true`` (then the default) meant "bf16 on CUDA only"; a ``config.yaml``
    written then (it has no ``channels_last`` key) is read with ``amp: auto``, its old meaning.
    """

    # data
    data_dir: str | None = None
    download: bool = True
    hierarchy: str = "cifar100-l5"
    val_size: int = 5000
    split_seed: int | None = None
    val_split_sha256: str | None = None
    max_train_samples: int | None = None
    cutout: int = 0
    crop_padding: int = 4
    flip: str = "random"
    # model and loss
    architecture: str = "plainnet"
    model_params: Params = dataclasses.field(default_factory=dict)
    loss: str = "cross-entropy"
    loss_params: Params = dataclasses.field(default_factory=dict)
    # class embeddings and the model's head (the reference code's flags)
    barzdenzler: bool = False
    devise: bool = False
    word_vectors: str | None = None
    word_vectors_sha256: str | None = None
    embedding_size: int | None = None
    use_2fc: bool = False
    fc_inner_dim: int = 1024
    use_fc_batchnorm: bool = False
    train_backbone_after: int = 0
    # optimisation
    optimizer: str = "sgd"
    lr: float = TRAINING_PARAMS["lr"].default
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_fc: float | None = None
    weight_decay_fc: float | None = None
    amsgrad: bool = False
    lr_schedule: str = "cosine"
    schedule_params: Params = dataclasses.field(default_factory=dict)
    epochs: int = 180
    batch_size: int = 128
    eval_batch_size: int = 1000
    value_schedule: ValueSchedule | None = None
    ema_decay: float = 0.0
    whiten_init: bool = False
    flip_tta: bool = False
    # run
    seed: int = 0
    device: str = "auto"
    out_folder: str | None = None
    evaluate_test: bool = True
    num_threads: int | None = None
    # accelerated path
    amp: Switch = "auto"
    channels_last: Switch = "auto"
    deterministic: bool = False
    compile: bool = False
    checkpoint_every: int = 1

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        """The fixed keys, in declaration order: those every ``config.yaml`` holds (the chosen loss's
        and schedule's parameters come after ``loss`` and ``lr_schedule``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in PARAM_FIELDS.values()]

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Every key a config may set: the fixed ones and each registered loss's and schedule's
        parameters."""
        out = []
        for name in cls.field_names():
            out.append(name)
            if name in PARAM_FIELDS:
                out += [k for k in param_keys(name) if k not in out]
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
        """A config from flat ``values`` laid over ``base`` (default: the defaults), type-checked.

        A loss or schedule parameter set to None is unset (it takes the entry's default).

        Raises:
            ConfigError: unknown keys (with the valid ones) or values of the wrong type, all listed.
        """
        values = {ALIASES.get(k, k): v for k, v in values.items()}
        fixed = cls.field_names()
        problems = [f"unknown key {k!r}" for k in values if k not in fixed and param_owner(k) is None]
        if problems:
            problems.append("valid keys: " + ", ".join(cls.valid_keys()))
            raise invalid_config(problems)
        base = base or cls()
        coerced: dict[str, Any] = {}
        for name in fixed:
            value = values.get(name, getattr(base, name))
            if name == "value_schedule":  # a mapping of mappings: each bad part is its own problem
                coerced[name], bad = parse_value_schedule(value)
                problems += bad
                continue
            try:
                coerced[name] = coerce_field(name, _FIELD_TYPES[name], value)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        for kind, field in PARAM_FIELDS.items():
            params = dict(getattr(base, field))
            declared = param_keys(kind)
            for key, value in values.items():
                if key not in declared:
                    continue
                if value is None:
                    params.pop(key, None)
                    continue
                try:
                    params[key] = declared[key].convert(value)
                except ValueError as err:
                    problems.append(str(err))
            coerced[field] = params
        if problems:
            raise invalid_config(problems)
        return cls(**coerced)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat ``changes`` applied (type-checked like :meth:`from_dict`)."""
        return TrainConfig.from_dict(changes, base=self)

    def __getattr__(self, name: str) -> Any:
        # loss and schedule parameters read as attributes (config.alpha): the set value, else None
        if name.startswith("_") or name in PARAM_FIELDS.values():
            raise AttributeError(name)
        for kind, field in PARAM_FIELDS.items():
            params = self.__dict__.get(field, {})
            if name in params:
                return params[name]
            if name in param_keys(kind):
                return None
        raise AttributeError(f"TrainConfig has no key {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Flat, YAML/JSON-friendly values (tuples as lists), keys in :meth:`valid_keys` order: every
        registered loss (schedule) parameter right after ``loss`` (``lr_schedule``), null where it is not
        set, as the original project's config files have them."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            out[name] = _plain(getattr(self, name))
            if name in PARAM_FIELDS:
                params = getattr(self, PARAM_FIELDS[name])
                out.update({k: _plain(params.get(k)) for k in param_keys(name)})
                out.update({k: _plain(v) for k, v in params.items() if k not in out})
        return out

    def to_yaml(self) -> str:
        """The config as YAML, keys in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived values
    @property
    def data_split_seed(self) -> int:
        """The seed of the validation split and the training subset: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    def use_amp(self, device_type: str) -> bool:
        """Whether training runs under bf16 autocast on a ``device_type`` (``cuda``, ``cpu``) device."""
        return _switch(self.amp, device_type)

    def use_channels_last(self, device_type: str) -> bool:
        """Whether images and convolution weights use ``torch.channels_last`` on ``device_type``."""
        return _switch(self.channels_last, device_type)

    def values_at(self, epoch: int) -> dict[str, float]:
        """The values in effect in ``epoch`` (1-based: 1 is the first epoch): the variable run-level
        parameters (``lr``, the base learning rate) and the loss's variable parameters
        (:func:`hiercls.value_schedule.variable_keys`), each the value of the latest ``value_schedule``
        entry at or before ``epoch`` that sets it, else this config's own value (a loss parameter not set:
        its default).

        Raises:
            ValueError: unknown loss, or ``epoch`` not a whole number >= 1.
        """
        own = {**{k: getattr(self, k) for k in TRAINING_PARAMS}, **LOSSES.defaults(self.loss),
               **self.loss_params}
        initial = {k: float(own[k]) for k in variable_keys(self.loss)}
        return values_in_effect(initial, self.value_schedule, epoch)

    def model_kwargs(self) -> dict[str, Any]:
        """The parameters of the chosen model that are set, by its factory's names."""
        accepted = _accepted(MODELS, self.architecture)
        return {k: v for k, v in self.model_params.items() if k in accepted}

    def loss_kwargs(self) -> dict[str, Any]:
        """The parameters of the chosen loss that are set, by its factory's names."""
        accepted = _accepted(LOSSES, self.loss)
        return {k: v for k, v in self.loss_params.items() if k in accepted}

    def schedule_kwargs(self) -> dict[str, Any]:
        """The parameters of the chosen schedule that are set (tuples as lists)."""
        accepted = _accepted(SCHEDULES, self.lr_schedule)
        return {k: _plain(v) for k, v in self.schedule_params.items() if k in accepted}

    def resolved(self) -> TrainConfig:
        """This config with the chosen loss's and schedule's defaults filled in for unset keys (a
        default of None, "derived by the entry", stays unset), and ``barzdenzler`` true for an embedding
        loss without ``devise`` (the embeddings it uses). Unknown names are left as they are."""
        changes: dict[str, Any] = {}
        for kind, field in PARAM_FIELDS.items():
            registry, name = param_registries()[kind], getattr(self, kind)
            if name not in registry:
                continue
            params = dict(getattr(self, field))
            for key, default in registry.defaults(name).items():
                if key not in params and default is not None:
                    params[key] = default
            changes[field] = params
        if _embedding_loss(self.loss) and not self.devise:
            changes["barzdenzler"] = True  # the embedding losses' default class embeddings, stated
        return dataclasses.replace(self, **changes)

    def _inactive_parameters(self) -> list[str]:
        """Problems for loss / schedule parameters that are set but not taken by the chosen ones."""
        problems = []
        for kind, field in PARAM_FIELDS.items():
            registry, name = param_registries()[kind], getattr(self, kind)
            accepted = registry.params(name)
            for key, value in getattr(self, field).items():
                if key not in accepted:
                    takes = ", ".join(accepted) or "no parameters"
                    problems.append(
                        f"{key}={value!r} is set, but {kind} {name!r} does not take it "
                        f"({name} takes: {takes}); choose the {kind} that uses it or unset it "
                        f"(--set {key}=null)"
                    )
        return problems

    def _embedding_problems(self) -> list[str]:
        """Problems of the class-embedding and head keys (bad combinations the reference code refused)."""
        problems = []
        embedding_loss = _embedding_loss(self.loss)
        losses = ", ".join(n for n in LOSSES.names() if _embedding_loss(n))
        if self.barzdenzler and self.devise:
            problems.append("barzdenzler and devise are both set; choose one class embedding")
        for key in ("barzdenzler", "devise"):
            if getattr(self, key) and self.loss in LOSSES and not embedding_loss:
                problems.append(f"{key} needs an embedding loss ({losses}), not loss {self.loss!r}")
        if self.devise and self.loss == "cosine-plus-xent":
            problems.append("devise cannot use loss 'cosine-plus-xent': its cross-entropy reads the output "
                            "as one logit per class, and word vectors have another dimension; use "
                            "cosine-distance or ranking-loss")
        if self.devise and self.word_vectors is None:
            problems.append("devise needs word_vectors FILE (a fastText .bin model or .vec text file)")
        if self.word_vectors is not None and not self.devise:
            problems.append(f"word_vectors={self.word_vectors!r} is set, but devise is not; set devise or "
                            "unset it")
        if self.embedding_size is not None and self.loss in LOSSES and not embedding_loss:
            problems.append(f"embedding_size={self.embedding_size!r} is set, but loss {self.loss!r} has no "
                            f"embedding ({losses} do)")
        if self.use_fc_batchnorm and not self.use_2fc:
            problems.append("use_fc_batchnorm needs use_2fc (the batch norm sits between the head's two "
                            "layers)")
        return problems

    def validate(self) -> None:
        """Check names, types and ranges before any work starts (no hierarchy is loaded, nothing built).

        Each run-level parameter (``lr``, :data:`~hiercls.registry.TRAINING_PARAMS`) and each loss and
        schedule parameter is checked against its declaration; what needs the hierarchy or two values at
        once (``coarse_level`` within the tree's height, ``min_lr`` at most ``lr``) is checked when the
        run is built (:func:`hiercls.build.check_config`).

        Raises:
            ConfigError: listing every problem: unknown registry names (with the valid ones), values
                out of range (negative epochs, batch size 0, ...), an unknown hierarchy, parameters set
                for a loss or schedule that is not the chosen one, and parameter values out of their
                declared range.
        """
        problems: list[str] = []
        for kind, registry, name in (
            ("architecture", MODELS, self.architecture),
            ("loss", LOSSES, self.loss),
            ("lr_schedule", SCHEDULES, self.lr_schedule),
            ("optimizer", OPTIMIZERS, self.optimizer),
        ):
            if name not in registry:
                problems.append(f"{kind} {name!r} is unknown; valid: {', '.join(registry.names())}")
        checks = [
            ("epochs", self.epochs >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("eval_batch_size", self.eval_batch_size >= 1, "a positive integer"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("val_size", 0 <= self.val_size < 50_000, "in 0..49999 (0 = no validation split)"),
            ("cutout", 0 <= self.cutout <= 32, "in 0..32 pixels"),
            ("crop_padding", 0 <= self.crop_padding <= 16, "in 0..16 pixels (0 = no random crop)"),
            ("flip", self.flip in FLIP_MODES, ", ".join(FLIP_MODES)),
            ("ema_decay", math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1,
             "in [0, 1) (0 = no weight average; 0.99 averages about the last 100 steps)"),
            ("seed", self.seed >= 0, ">= 0"),
            ("split_seed", self.split_seed is None or self.split_seed >= 0, "None (= seed) or >= 0"),
            ("val_split_sha256", self.val_split_sha256 is None or bool(re.fullmatch(r"[0-9a-f]{64}",
                                                                                    self.val_split_sha256)),
             "None or 64 lower-case hex digits (a run records it)"),
            ("checkpoint_every", self.checkpoint_every >= 1, "a positive integer (epochs)"),
        ]
        checks += [
            ("fc_inner_dim", self.fc_inner_dim >= 1, "a positive integer"),
            ("train_backbone_after", 0 <= self.train_backbone_after <= self.epochs,
             f"in 0..epochs ({self.epochs}): epochs during which only the head trains"),
        ]
        if self.lr_fc is not None:
            ok = math.isfinite(self.lr_fc) and self.lr_fc > 0
            checks.append(("lr_fc", ok, "None or a positive number"))
        if self.weight_decay_fc is not None:
            ok = math.isfinite(self.weight_decay_fc) and self.weight_decay_fc >= 0
            checks.append(("weight_decay_fc", ok, "None or >= 0"))
        if self.embedding_size is not None:
            checks.append(("embedding_size", self.embedding_size >= 1, "None or a positive integer"))
        if self.max_train_samples is not None:
            checks.append(("max_train_samples", self.max_train_samples >= 100, "None or at least 100"))
        if self.num_threads is not None:
            checks.append(("num_threads", self.num_threads >= 1, "None or a positive integer"))
        for key, ok, valid in checks:
            if not ok:
                problems.append(f"{key}={getattr(self, key)!r} is out of range; valid: {valid}")
        for key, param in TRAINING_PARAMS.items():
            try:
                param.check(getattr(self, key))
            except ValueError as err:
                problems.append(str(err))
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            problems.append(f"device {self.device!r} is unknown; valid: auto, cpu, cuda, cuda:N, mps")
        if self.hierarchy not in HIERARCHIES and not Path(self.hierarchy).is_file():
            problems.append(
                f"hierarchy {self.hierarchy!r} is neither a built-in ({', '.join(HIERARCHIES.names())}) "
                "nor an existing file"
            )
        problems += self._embedding_problems()
        problems += value_schedule_problems(self.value_schedule, self.loss, self.epochs)
        if self.loss in LOSSES and self.lr_schedule in SCHEDULES and self.architecture in MODELS:
            problems += self._inactive_parameters()
            for kind, field in PARAM_FIELDS.items():
                registry = param_registries()[kind]
                declared = registry.params(getattr(self, kind))
                for key, value in getattr(self, field).items():
                    if key in declared:
                        try:
                            declared[key].check(value)
                        except ValueError as err:
                            problems.append(f"{kind} {registry.canonical(getattr(self, kind))!r}: {err}")
        if problems:
            raise invalid_config(problems)


def _embedding_loss(name: str) -> bool:
    """Whether ``name`` is a registered loss on class embeddings (False for an unknown name)."""
    return name in LOSSES and bool(getattr(LOSSES.get(name), "takes_class_embeddings", False))


def _accepted(registry, name: str) -> dict[str, Param]:
    return registry.params(name) if name in registry else {}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):  # a value_schedule: a copy, so the config's own mapping stays unchanged
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
ALIASES = {"data_path": "data_dir"}  # the original project's spelling


def _switch(value: str, device_type: str) -> bool:
    return device_type == "cuda" if value == "auto" else value == "true"


def coerce_field(name: str, annotation: str, value: Any) -> Any:
    """Check/convert ``value`` for a field declared as ``annotation`` (a string under __future__)."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must not be null")
    base = annotation.replace(" | None", "")
    if base == "Switch":
        text = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        text = {"on": "true", "off": "false"}.get(str(text).strip().lower(), str(text).strip().lower())
        if not isinstance(value, (bool, str)) or text not in SWITCH_VALUES:
            raise TypeError(f"{name}={value!r} must be one of {', '.join(SWITCH_VALUES)}")
        return text
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise TypeError(f"{name}={value!r} must be true or false")
    if base == "int":
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise TypeError(f"{name}={value!r} must be an integer")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}={value!r} must be a number")
        return float(value)
    if base == "str":
        if not isinstance(value, (str, Path)):
            raise TypeError(f"{name}={value!r} must be a string")
        return str(value)
    if base.startswith("tuple["):
        if isinstance(value, str):  # "60,120,160" as well as the YAML list [60, 120, 160]
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        items = value if isinstance(value, (list, tuple)) else [value]
        item_type = "int" if "int" in base else "float"
        return tuple(coerce_field(name, item_type, v) for v in items)
    raise TypeError(f"{name}: unsupported field type {annotation}")


ADDED_KEYS = ("channels_last", "deterministic", "compile", "checkpoint_every")
"""Keys a ``config.yaml`` written before the accelerated path (hiercls 0.2) lacks; they take their
defaults when such a file is read with :func:`upgrade_saved_values`."""


EMBEDDING_KEYS = ("barzdenzler", "devise", "word_vectors", "word_vectors_sha256", "embedding_size", "use_2fc",
                  "fc_inner_dim", "use_fc_batchnorm", "train_backbone_after", "lr_fc", "weight_decay_fc")
"""Keys added with the embedding losses (hiercls 0.4); a ``config.yaml`` written before lacks them, and
they take their defaults (no embedding, the one-layer head) when it is read."""


VALUE_SCHEDULE_KEYS = ("value_schedule",)
"""Keys added with value schedules; a ``config.yaml`` written before lacks them, and they take their
defaults (no schedule) when it is read."""


FIDELITY_KEYS = ("crop_padding", "flip", "ema_decay", "whiten_init", "flip_tta")
"""Keys added with the speedrun recipe's training options; a ``config.yaml`` written before lacks them,
and they take their defaults (the training and evaluation it ran) when it is read."""

SPLIT_KEYS = ("split_seed", "val_split_sha256")
"""Keys added with one validation split per search; a ``config.yaml`` written before lacks them, and reads
as ``split_seed`` None (the split of its ``seed``, as it ran) and no recorded split identity."""


def fill_added_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the :data:`EMBEDDING_KEYS`, :data:`VALUE_SCHEDULE_KEYS`, :data:`FIDELITY_KEYS` and
    :data:`SPLIT_KEYS` defaults filled in when
    those are the only fixed keys missing (a complete ``config.yaml`` of an earlier hiercls); anything
    else is returned unchanged, so a torn file still shows as torn."""
    out = dict(values)
    missing = [k for k in TrainConfig.field_names() if k not in out]
    added = {*EMBEDDING_KEYS, *VALUE_SCHEDULE_KEYS, *FIDELITY_KEYS, *SPLIT_KEYS}
    if missing and set(missing) <= added:
        out.update({k: getattr(TrainConfig, k) for k in missing})
    return out


def upgrade_saved_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a ``config.yaml`` written by an earlier hiercls, with the meaning they had then.

    A file without ``channels_last`` predates the accelerated path: its ``amp: true`` (then the default)
    meant "bf16 on CUDA only", which is ``amp: auto`` today; the keys of :data:`ADDED_KEYS` it lacks take
    their defaults. Newer files are returned unchanged.
    """
    out = dict(values)
    if "channels_last" not in out:
        if out.get("amp") is True:
            out["amp"] = "auto"
        for key in ADDED_KEYS:
            out.setdefault(key, getattr(TrainConfig, key))
    return fill_added_keys(out)


def shipped_dir(package: str, folder: str) -> Path:
    """The folder of YAML files shipped as the package data ``package`` (``hiercls.recipes``,
    ``hiercls.search_spaces``): the top-level ``folder`` of a checkout, installed under that name."""
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / folder


def shipped_recipes() -> list[str]:
    """The names of the shipped training recipes (``recipes/*.yaml``: ``speedrun``...), sorted."""
    return sorted(p.stem for p in shipped_dir("hiercls.recipes", "recipes").glob("*.yaml"))


def resolve_config_file(name_or_path: str | Path) -> Path:
    """The config file ``name_or_path`` names: an existing file as given (it always wins), else a shipped
    recipe by name (``speedrun`` or ``speedrun.yaml``, from any working directory), else the path as given
    (:func:`read_config_file` then says it does not exist, listing the recipes)."""
    path = Path(name_or_path)
    if path.is_file() or len(path.parts) != 1:
        return path
    shipped = shipped_dir("hiercls.recipes", "recipes") / (path.name if path.suffix == ".yaml"
                                                            else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of keys to values in the YAML file at ``path`` (an empty file: no keys); a bare name
    that is no file is a shipped recipe (:func:`resolve_config_file`).

    Raises:
        ConfigError: one line naming the file and what is wrong with it: it does not exist (and is not a
            shipped recipe: the message lists them), cannot be read (the OS error), is not UTF-8 text (the
            first bad byte and its offset), is not YAML (the line and column of the first problem), or
            holds something other than a mapping.
    """
    path = resolve_config_file(path)
    name = repr(str(path))
    if not path.is_file():
        raise ConfigError(f"config file {name} does not exist (and is not a shipped recipe: "
                          f"{', '.join(shipped_recipes())})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad = f"byte 0x{err.object[err.start]:02x} at offset {err.start}"
        raise ConfigError(
            f"config file {name} is not UTF-8 text ({bad}); a config is a YAML text file of 'key: value' "
            "lines"
        ) from err
    except OSError as err:
        raise ConfigError(f"config file {name} cannot be read: {err.strerror or err}") from err
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file {name} is not valid YAML ({_yaml_problem(err)}); a config is a mapping of "
            "'key: value' lines"
        ) from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {name} must hold a mapping of keys to values, not a "
                          f"{type(loaded).__name__}")
    return loaded


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parser's error in one line: where (1-based line and column) and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


RUN_FOLDER_MARKERS = ("checkpoints", "all_epoch_results.json")
"""What a training run writes beside its ``config.yaml`` before its first epoch ends (the ``checkpoints/``
folder) or after (``all_epoch_results.json``): a ``config.yaml`` beside one of them is a run's recorded
config (:func:`recorded_run_folder`)."""


def recorded_run_folder(path: str | Path) -> Path | None:
    """The run folder whose recorded config ``path`` is, else None.

    A config file is a run's recorded config when it is named ``config.yaml`` and the folder holding it
    also holds a ``checkpoints/`` folder or an ``all_epoch_results.json`` (:data:`RUN_FOLDER_MARKERS`).
    That folder is the run, wherever the file's ``out_folder`` points: the folder it was written in,
    which may since have been copied or moved. ``python -m hiercls.train --config PATH`` runs there
    unless ``--out_folder`` (or ``--set out_folder=``) says otherwise. Any other config file (an
    exported ``best.yaml``, a ``config.yaml`` kept elsewhere) is None: its ``out_folder`` applies.
    """
    path = Path(path)
    if path.name != "config.yaml":
        return None
    folder = path.parent
    if (folder / "checkpoints").is_dir() or (folder / "all_epoch_results.json").is_file():
        return folder
    return None


def read_saved_config(path: str | Path) -> TrainConfig:
    """A ``config.yaml`` written by an earlier run, read with the meaning it had when written
    (:func:`upgrade_saved_values`).

    Raises:
        ConfigError: as :func:`load_config`.
    """
    loaded = read_config_file(path)
    loaded.pop("source", None)
    return TrainConfig.from_dict(upgrade_saved_values(loaded))


def check_config_keys(values: Mapping[str, Any], source: str) -> None:
    """Refuse a key of the config file ``source`` that is no config key, in one line naming the file and
    the closest valid key (``difflib``), before the file's values meet any other.

    Raises:
        ConfigError: ``config file 'r.yaml': unknown key 'widht' (did you mean 'width'?)``.
    """
    valid = TrainConfig.valid_keys()
    unknown = [k for k in values if ALIASES.get(k, k) not in valid and k != "source"]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"config file {str(source)!r}: unknown key{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(parts)}; the valid keys: docs/reference/parameters.md and "
                      "python -m hiercls.train --help")


def read_config_values(path: str | Path) -> dict[str, Any]:
    """The config keys of the YAML file (or shipped recipe) ``path``: :func:`read_config_file` without an
    exported file's ``source:`` block, every key checked by :func:`check_config_keys`.

    Raises:
        ConfigError: as those two (one line naming the file).
    """
    loaded = read_config_file(path)
    loaded.pop("source", None)
    check_config_keys(loaded, str(path))
    return loaded


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < the YAML file at ``path`` < ``overrides``.

    A YAML file may carry a ``source:`` block (written by ``analysis.export``); it is ignored here.

    Raises:
        ConfigError: a missing or unreadable file, one that is not UTF-8 text, not YAML or not a mapping
            (:func:`read_config_file`), unknown keys (one line naming the file, :func:`check_config_keys`),
            wrong types.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_config_values(path))
    values.update(overrides or {})
    return TrainConfig.from_dict(values)
