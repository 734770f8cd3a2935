"""The typed training configuration: defaults < YAML < command line, validated before any work.

One frozen :class:`TrainConfig` flows from the entry point (``python -m hiercls.train``, a search
trial, an exported config) inward. Loss and schedule parameters are flat keys with the original
project's names (``alpha``, ``beta``, ``lambda_fine``, ``coarse_loss_start_epoch``, ``t0``, ...); a
key left at None takes the chosen loss's or schedule's default, and :meth:`TrainConfig.resolved`
fills those in, so the ``config.yaml`` written next to the results states every value used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError", "LOSS_KEYS", "RESUME_FREE_KEYS", "SCHEDULE_KEYS", "SWITCH_VALUES", "TrainConfig",
    "load_config", "parse_overrides", "read_saved_config", "upgrade_saved_values",
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


# Keys passed to the loss / schedule factories when the chosen loss / schedule takes them.
LOSS_KEYS = (
    "alpha", "normalize", "beta", "lambda_fine", "lambda_coarse", "fine_loss_start_epoch",
    "fine_loss_ramp_epochs", "coarse_loss_start_epoch", "coarse_loss_ramp_epochs", "coarse_level",
)
SCHEDULE_KEYS = (
    "t0", "t_mult", "eta_min", "min_lr", "step_size", "milestones", "milestone_fractions", "gamma",
    "warmup_fraction",
)


Switch = str
"""A config value ``auto`` (decided by the device: on for CUDA), ``true`` or ``false``; YAML booleans and
``on``/``off`` are read as ``true``/``false``."""
SWITCH_VALUES = ("auto", "true", "false")
# keys that may differ when a run is resumed: they change how fast it runs, not what it computes
RESUME_FREE_KEYS = ("compile", "num_threads", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Units: epochs are whole passes over the training split;
    learning rates are absolute; sizes are image counts.

    Data: ``data_dir`` (CIFAR-100 in torchvision's or the ImageFolder layout), ``download`` (through
    torchvision when absent), ``hierarchy`` (built-in name or file), ``val_size`` (images held out of the
    official training set, stratified; 0 = train on all 50,000, no validation), ``max_train_samples``
    (stratified subset for quick runs), ``cutout`` (Cutout square side in pixels, 0 = off).

    Model and loss: ``architecture`` (model registry name), ``loss`` (loss registry name) and its flat
    parameters (:data:`LOSS_KEYS`).

    Optimisation: ``optimizer`` (``sgd`` = Nesterov SGD, ``adamw``), ``lr`` (base learning rate; the
    default 0.05 is the linear scaling rule 0.1 x batch_size / 256 of Goyal et al. (2017) at batch 128;
    the original project hard-coded 0.1, which leaves Plain-11 near chance for its first epochs),
    ``momentum``, ``weight_decay``, ``amsgrad`` (adamw only), ``lr_schedule`` and its flat parameters
    (:data:`SCHEDULE_KEYS`), ``epochs``, ``batch_size``, ``eval_batch_size``.

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
    data_dir: str = "data"
    download: bool = True
    hierarchy: str = "cifar100-l5"
    val_size: int = 5000
    max_train_samples: int | None = None
    cutout: int = 0
    # model and loss
    architecture: str = "plainnet"
    loss: str = "cross-entropy"
    alpha: float | None = None
    normalize: bool | None = None
    beta: float | None = None
    lambda_fine: float | None = None
    lambda_coarse: float | None = None
    fine_loss_start_epoch: float | None = None
    fine_loss_ramp_epochs: float | None = None
    coarse_loss_start_epoch: float | None = None
    coarse_loss_ramp_epochs: float | None = None
    coarse_level: int | None = None
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    amsgrad: bool = False
    lr_schedule: str = "cosine"
    t0: float | None = None
    t_mult: float | None = None
    eta_min: float | None = None
    min_lr: float | None = None
    step_size: float | None = None
    milestones: tuple[int, ...] | None = None
    milestone_fractions: tuple[float, ...] | None = None
    gamma: float | None = None
    warmup_fraction: float | None = None
    epochs: int = 180
    batch_size: int = 128
    eval_batch_size: int = 1000
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
        """Every config key, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
        """A config from ``values`` laid over ``base`` (default: the defaults), type-checked.

        Raises:
            ConfigError: unknown keys (with the valid ones) or values of the wrong type, all listed.
        """
        values = {ALIASES.get(k, k): v for k, v in values.items()}
        valid = set(cls.field_names())
        problems = [f"unknown key {k!r}" for k in values if k not in valid]
        if problems:
            problems.append("valid keys: " + ", ".join(cls.field_names()))
            raise invalid_config(problems)
        merged = dataclasses.asdict(base or cls())
        merged.update(values)
        coerced, problems = {}, []
        for field in dataclasses.fields(cls):
            try:
                coerced[field.name] = _coerce(field.name, field.type, merged[field.name])
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        if problems:
            raise invalid_config(problems)
        return cls(**coerced)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (type-checked like :meth:`from_dict`)."""
        return TrainConfig.from_dict(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_yaml(self) -> str:
        """The config as YAML, keys in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived values
    def use_amp(self, device_type: str) -> bool:
        """Whether training runs under bf16 autocast on a ``device_type`` (``cuda``, ``cpu``) device."""
        return _switch(self.amp, device_type)

    def use_channels_last(self, device_type: str) -> bool:
        """Whether images and convolution weights use ``torch.channels_last`` on ``device_type``."""
        return _switch(self.channels_last, device_type)

    def loss_kwargs(self) -> dict[str, Any]:
        """The parameters of the chosen loss that are set (not None), by its factory's names."""
        from hiercls.losses import loss_params

        accepted = loss_params(self.loss)
        return {k: getattr(self, k) for k in LOSS_KEYS if k in accepted and getattr(self, k) is not None}

    def schedule_kwargs(self) -> dict[str, Any]:
        """The parameters of the chosen schedule that are set (not None)."""
        from hiercls.schedules import schedule_params

        accepted = schedule_params(self.lr_schedule)
        out = {k: getattr(self, k) for k in SCHEDULE_KEYS if k in accepted and getattr(self, k) is not None}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def resolved(self) -> TrainConfig:
        """This config with the chosen loss's and schedule's defaults filled in for unset keys.

        Parameters that the chosen loss or schedule does not take stay as they are (None by default).
        """
        from hiercls.losses import loss_params
        from hiercls.schedules import schedule_params

        changes: dict[str, Any] = {}
        pairs = ((loss_params(self.loss), LOSS_KEYS), (schedule_params(self.lr_schedule), SCHEDULE_KEYS))
        for params, keys in pairs:
            for key in keys:
                if key in params and getattr(self, key) is None and params[key] is not None:
                    default = params[key]
                    changes[key] = tuple(default) if isinstance(default, (list, tuple)) else default
        return self.replace(**changes) if changes else self

    def _inactive_parameters(self) -> list[str]:
        """Problems for loss / schedule parameters that are set but not taken by the chosen ones."""
        from hiercls.losses import loss_params
        from hiercls.schedules import schedule_params

        problems = []
        for kind, name, accepted, keys in (
            ("loss", self.loss, loss_params(self.loss), LOSS_KEYS),
            ("lr_schedule", self.lr_schedule, schedule_params(self.lr_schedule), SCHEDULE_KEYS),
        ):
            for key in keys:
                if getattr(self, key) is not None and key not in accepted:
                    takes = ", ".join(k for k in keys if k in accepted) or "no parameters"
                    problems.append(
                        f"{key}={getattr(self, key)!r} is set, but {kind} {name!r} does not take it "
                        f"({name} takes: {takes}); choose the {kind} that uses it or unset it"
                    )
        return problems

    def validate(self) -> None:
        """Check names and ranges before any work starts.

        Raises:
            ConfigError: listing every problem: unknown registry names (with the valid ones), values
                out of range (negative epochs, batch size 0, ...), an invalid hierarchy, parameters set
                for a loss or schedule that is not the chosen one, and values the chosen loss or schedule
                rejects.
        """
        from hiercls.hierarchy import BUILTIN_HIERARCHIES, load_cifar100_hierarchy
        from hiercls.losses import LOSSES, build_loss
        from hiercls.models import MODELS
        from hiercls.schedules import SCHEDULES, learning_rate

        problems: list[str] = []
        for kind, registry, name in (
            ("architecture", MODELS, self.architecture),
            ("loss", LOSSES, self.loss),
            ("lr_schedule", SCHEDULES, self.lr_schedule),
        ):
            if name not in registry:
                problems.append(f"{kind} {name!r} is unknown; valid: {', '.join(registry.names())}")
        if self.optimizer not in OPTIMIZERS:
            valid = ", ".join(sorted(OPTIMIZERS))
            problems.append(f"optimizer {self.optimizer!r} is unknown; valid: {valid}")
        checks = [
            ("epochs", self.epochs >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("eval_batch_size", self.eval_batch_size >= 1, "a positive integer"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
            ("val_size", 0 <= self.val_size < 50_000, "in 0..49999 (0 = no validation split)"),
            ("cutout", 0 <= self.cutout <= 32, "in 0..32 pixels"),
            ("seed", self.seed >= 0, ">= 0"),
            ("checkpoint_every", self.checkpoint_every >= 1, "a positive integer (epochs)"),
        ]
        if self.max_train_samples is not None:
            checks.append(("max_train_samples", self.max_train_samples >= 100, "None or at least 100"))
        if self.num_threads is not None:
            checks.append(("num_threads", self.num_threads >= 1, "None or a positive integer"))
        for key, ok, valid in checks:
            if not ok:
                problems.append(f"{key}={getattr(self, key)!r} is out of range; valid: {valid}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            problems.append(f"device {self.device!r} is unknown; valid: auto, cpu, cuda, cuda:N, mps")
        hierarchy = None
        if self.hierarchy in BUILTIN_HIERARCHIES or Path(self.hierarchy).is_file():
            try:
                hierarchy = load_cifar100_hierarchy(self.hierarchy)
            except ValueError as err:
                problems.append(f"hierarchy {self.hierarchy!r}: {err}")
        else:
            problems.append(
                f"hierarchy {self.hierarchy!r} is neither a built-in ({', '.join(BUILTIN_HIERARCHIES)}) "
                "nor an existing file"
            )
        if self.loss in LOSSES and self.lr_schedule in SCHEDULES:
            problems += self._inactive_parameters()
        if not problems and hierarchy is not None:
            try:  # the factories' own range checks, on the real hierarchy
                build_loss(self.loss, hierarchy, **self.loss_kwargs())
            except ValueError as err:
                problems.append(f"loss {self.loss!r}: {err}")
            try:
                kwargs = self.schedule_kwargs()
                learning_rate(self.lr_schedule, 0.0, base_lr=self.lr, epochs=self.epochs, **kwargs)
            except ValueError as err:
                problems.append(f"lr_schedule {self.lr_schedule!r}: {err}")
        if problems:
            raise invalid_config(problems)


OPTIMIZERS = ("sgd", "adamw")
ALIASES = {"data_path": "data_dir"}  # the original project's spelling


def _switch(value: str, device_type: str) -> bool:
    return device_type == "cuda" if value == "auto" else value == "true"


def _coerce(name: str, annotation: str, value: Any) -> Any:
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
        return tuple(_coerce(name, item_type, v) for v in items)
    raise TypeError(f"{name}: unsupported field type {annotation}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (from ``--set``) to a dict; values are parsed as YAML (``0.1``,
    ``true``, ``[60, 120]``, ``null``).

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip().replace("-", "_")] = yaml.safe_load(text) if text.strip() else None
    return out


ADDED_KEYS = ("channels_last", "deterministic", "compile", "checkpoint_every")
"""Keys a ``config.yaml`` written before the accelerated path (hiercls 0.2) lacks; they take their
defaults when such a file is read with :func:`upgrade_saved_values`."""


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
    return out


def read_saved_config(path: str | Path) -> TrainConfig:
    """A ``config.yaml`` written by an earlier run, read with the meaning it had when written
    (:func:`upgrade_saved_values`).

    Raises:
        ConfigError: as :func:`load_config`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {str(path)!r} is unreadable: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    loaded.pop("source", None)
    return TrainConfig.from_dict(upgrade_saved_values(loaded))


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < the YAML file at ``path`` < ``overrides``.

    A YAML file may carry a ``source:`` block (written by ``analysis.export``); it is ignored here.

    Raises:
        ConfigError: missing or malformed file, unknown keys, wrong types.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
        loaded.pop("source", None)
        values.update(loaded)
    values.update(overrides or {})
    return TrainConfig.from_dict(values)
