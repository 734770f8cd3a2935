"""The typed search specification: one YAML file (plus command-line overrides) -> :class:`SearchSpec`.

A search-space file holds the search settings at its top level, the fixed training configuration under
``train:`` (any :class:`~hiercls.config.TrainConfig` key), the searched parameters under ``search:`` and
optional ``points_to_evaluate:`` (configurations tried first, e.g. a cross-entropy baseline)::

    name: hxe
    epochs: 30                 # the trials' length and ASHA's max_t
    grace_period: 5
    train: {loss: hierarchical-cross-entropy, hierarchy: cifar100-wordnet}
    search:
      alpha: {type: uniform, low: 0.0, high: 0.9}
      lr: {type: loguniform, low: 0.01, high: 0.2}
      loss:                    # a choice whose values are a mapping: one branch per value
        type: choice
        values:
          cross-entropy: {}
          soft-labels: {beta: {type: loguniform, low: 1, high: 30}}
    points_to_evaluate:
      - {loss: cross-entropy, lr: 0.05}

Distributions: ``uniform`` (``low``, ``high``), ``loguniform`` (``low > 0``, ``high``), ``int``
(``low``, ``high``, optional ``log``), ``choice`` (``values``: a list, or a mapping of value -> branch of
further parameters that exist only when that value is chosen). ``uniform``/``int`` also take
``scale: epochs``: the bounds are then fractions of the run length (``high: 0.5`` = half the run). A
plain value instead of a distribution fixes that key inside its branch.

Every problem in a specification is collected and reported at once (:class:`SpecError`) before Ray
starts: see :meth:`SearchSpec.problems`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.config import ConfigError, TrainConfig, _coerce, param_keys
from hiercls.registry import LOSSES, MODELS, param_registries

__all__ = [
    "DEFAULT_SPACE",
    "resolve_space",
    "shipped_spaces",
    "MAX_SAMPLES",
    "SMOKE_SPACE",
    "Param",
    "SearchSpec",
    "SpecError",
    "Objective",
    "parse_objective",
    "parse_params",
    "spec_differences",
]

ROOT = Path(__file__).resolve().parents[2]


def _spaces_dir() -> Path:
    """The shipped search spaces: the top-level ``search_spaces/`` folder, installed as the package data
    ``hiercls.search_spaces`` (the source tree's folder when hiercls runs from a checkout)."""
    try:
        return Path(str(importlib.resources.files("hiercls.search_spaces")))
    except ModuleNotFoundError:
        return ROOT / "search_spaces"


def shipped_spaces() -> list[str]:
    """The names of the shipped search spaces (``default``, ``smoke``, ``hxe``...), sorted."""
    return sorted(p.stem for p in _spaces_dir().glob("*.yaml"))


def resolve_space(name_or_path: str | Path) -> Path:
    """The search-space file ``name_or_path`` names: an existing path as given (it always wins), else a
    shipped space by name (``smoke`` or ``smoke.yaml``), from any working directory.

    Raises:
        SpecError: neither an existing file nor a shipped name (the message lists the shipped ones).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        shipped = _spaces_dir() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
        if shipped.is_file():
            return shipped
    raise SpecError([f"search space file {str(name_or_path)!r} does not exist (and is not a shipped space: "
                     f"{', '.join(shipped_spaces())})"])


DEFAULT_SPACE = _spaces_dir() / "default.yaml"
SMOKE_SPACE = _spaces_dir() / "smoke.yaml"

DIST_TYPES = ("uniform", "loguniform", "int", "choice")
DIST_KEYS = {
    "uniform": {"type", "low", "high", "scale"},
    "loguniform": {"type", "low", "high"},
    "int": {"type", "low", "high", "log", "scale"},
    "choice": {"type", "values"},
}
MAX_SAMPLES = 10_000
"""``num_samples`` above this is refused unless ``allow_large_search`` (``--allow-large-search``)."""
# keys a trial sets itself: searching or fixing them in the space makes no sense
TRIAL_KEYS = ("epochs", "seed", "out_folder", "evaluate_test", "device", "num_threads", "download")
MISTAKE_SEVERITY_WARNING = (
    "objective val_mistake_severity alone rewards many small mistakes over few large ones (a model "
    "that is wrong more often, but always near the truth, scores well); prefer val_hdist@1 or "
    "'val_top1_error + W * val_mistake_severity'"
)


class SpecError(ValueError):
    """An invalid search specification; the message lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"invalid search specification ({len(self.problems)} problem(s)):\n  - "
            + "\n  - ".join(self.problems)
        )


# ---------------------------------------------------------------------------------------------- objective
@dataclasses.dataclass(frozen=True)
class Objective:
    """The single number a search minimises, computed from one epoch's report.

    ``metric`` is a report key, or ``None`` for the weighted sum
    ``val_top1_error + weight * val_mistake_severity``.
    """

    text: str
    metric: str | None
    weight: float = 0.0

    def __call__(self, record: Mapping[str, Any]) -> float:
        if self.metric is not None:
            return float(record.get(self.metric, math.nan))
        top1 = float(record.get("val_top1_error", math.nan))
        severity = float(record.get("val_mistake_severity", math.nan))
        if self.weight == 0.0:
            return top1
        if top1 == 0.0 and math.isnan(severity):  # no mistakes at all: severity is undefined
            return 0.0
        return top1 + self.weight * severity


OBJECTIVE_METRICS = ("val_top1_error", "val_hdist@1", "val_hdist@5", "val_mistake_severity")
_WEIGHTED = re.compile(
    r"^\s*val_top1_error\s*\+\s*(?P<w>[0-9.eE+-]+)\s*\*\s*val_mistake_severity\s*$"
)


def parse_objective(text: str) -> Objective:
    """``text`` as an :class:`Objective`.

    Raises:
        ValueError: not one of the accepted forms (the message lists them).
    """
    text = str(text).strip()
    if text in OBJECTIVE_METRICS:
        return Objective(text, text)
    match = _WEIGHTED.match(text)
    if match:
        try:
            weight = float(match.group("w"))
        except ValueError:
            weight = -1.0
        if math.isfinite(weight) and weight >= 0:
            return Objective(text, None, weight)
    raise ValueError(
        f"objective {text!r} is not accepted; valid: {', '.join(OBJECTIVE_METRICS)}, or "
        "'val_top1_error + W * val_mistake_severity' with a number W >= 0"
    )


# ---------------------------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class Param:
    """One searched (or, inside a branch, fixed) key.

    ``kind`` is ``uniform``, ``loguniform``, ``int``, ``choice`` or ``fixed``. A choice with
    ``branches`` (value -> parameters active only under that value) makes the space conditional.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    scale: str | None = None
    values: tuple[Any, ...] = ()
    branches: dict[Any, dict[str, Param]] | None = None
    value: Any = None

    def to_yaml_value(self) -> Any:
        """The plain YAML form (after resolution: no ``scale``)."""
        if self.kind == "fixed":
            return _plain(self.value)
        if self.kind == "choice":
            if self.branches is not None:
                values = {v: {k: p.to_yaml_value() for k, p in self.branches[v].items()} for v in self.values}
            else:
                values = [_plain(v) for v in self.values]
            return {"type": "choice", "values": values}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.kind == "int" and self.log:
            out["log"] = True
        if self.scale:
            out["scale"] = self.scale
        return out

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be drawn from this parameter."""
        if self.kind == "fixed":
            return _plain(value) == _plain(self.value)
        if self.kind == "choice":
            return any(_plain(value) == _plain(v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and float(value) != int(value):
            return False
        return self.low <= value <= self.high

    def can_be_zero(self) -> bool:
        """Whether exactly 0 is a possible draw (a continuous range touching 0 does not count)."""
        if self.kind == "fixed":
            return self.value == 0
        if self.kind == "choice":
            return any(v == 0 and not isinstance(v, bool) for v in self.values)
        if self.kind == "int":
            return self.low <= 0 <= self.high
        return False

    def can_be_positive(self) -> bool:
        if self.kind == "fixed":
            return _is_number(self.value) and self.value > 0
        if self.kind == "choice":
            return any(_is_number(v) and v > 0 for v in self.values)
        return self.high is not None and self.high > 0

    def largest(self) -> float | None:
        if self.kind == "fixed":
            return float(self.value) if _is_number(self.value) else None
        if self.kind == "choice":
            nums = [float(v) for v in self.values if _is_number(v)]
            return max(nums) if nums else None
        return self.high


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_params(raw: Any, where: str, problems: list[str], *, epochs: int | None) -> dict[str, Param]:
    """The ``search:`` mapping (or one branch of it) as parameters; problems are appended, not raised.

    ``epochs`` resolves ``scale: epochs`` bounds (None leaves them as written).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be a mapping of config keys to distributions, got {raw!r}")
        return {}
    out: dict[str, Param] = {}
    valid = set(TrainConfig.valid_keys())
    for name, body in raw.items():
        path = f"{where}.{name}"
        if name not in valid:
            problems.append(f"{path}: unknown config key {name!r}")
            continue
        if name in TRIAL_KEYS:
            problems.append(f"{path}: {name!r} is set by the search itself and cannot be searched")
            continue
        param = _parse_param(name, body, path, problems, epochs=epochs)
        if param is not None:
            out[name] = param
    return out


def _parse_param(name: str, body: Any, path: str, problems: list[str], *, epochs: int | None) -> Param | None:
    if not (isinstance(body, Mapping) and "type" in body):
        if isinstance(body, Mapping):
            problems.append(f"{path}: a distribution needs 'type' (one of {', '.join(DIST_TYPES)})")
            return None
        return Param(name, "fixed", value=body)
    kind = body["type"]
    if kind not in DIST_TYPES:
        problems.append(f"{path}: unknown distribution type {kind!r}; valid: {', '.join(DIST_TYPES)}")
        return None
    unknown = sorted(set(body) - DIST_KEYS[kind])
    if unknown:
        problems.append(
            f"{path}: unknown key(s) {', '.join(unknown)} for type {kind}; valid: "
            + ", ".join(sorted(DIST_KEYS[kind]))
        )
    if kind == "choice":
        return _parse_choice(name, body.get("values"), path, problems, epochs=epochs)
    low, high = body.get("low"), body.get("high")
    ok = True
    for key, v in (("low", low), ("high", high)):
        if not _is_number(v) or not math.isfinite(v):
            problems.append(f"{path}: {key} must be a finite number, got {v!r}")
            ok = False
    if not ok:
        return None
    scale = body.get("scale")
    if scale is not None and scale != "epochs":
        problems.append(f"{path}: scale {scale!r} is unknown; valid: epochs (bounds as fractions of the run)")
        scale = None
    if scale == "epochs" and epochs is not None:
        low, high = low * epochs, high * epochs
        scale = None
    if kind == "int":
        if scale is None and (float(low) != int(low) or float(high) != int(high)):
            if "scale" in body:  # rounded fractions of the run
                low, high = math.ceil(low), math.floor(high)
            else:
                problems.append(f"{path}: int bounds must be whole numbers, got [{low}, {high}]")
                return None
        low, high = int(low), int(high)
    log = bool(body.get("log", False)) or kind == "loguniform"
    if high < low or (high == low and kind != "int"):
        problems.append(f"{path}: {'empty' if high == low else 'inverted'} range [{low}, {high}]")
        return None
    if log and low <= 0:
        problems.append(f"{path}: a log-scale range needs low > 0, got [{low}, {high}]")
        return None
    if kind != "int":
        low, high = float(low), float(high)
    return Param(name, kind, low=low, high=high, log=log and kind == "int", scale=scale)


def _parse_choice(
    name: str, values: Any, path: str, problems: list[str], *, epochs: int | None
) -> Param | None:
    if isinstance(values, Mapping):
        if not values:
            problems.append(f"{path}: choice has no values")
            return None
        branches = {}
        for value, branch in values.items():
            branches[value] = parse_params(branch or {}, f"{path}[{value}]", problems, epochs=epochs)
        return Param(name, "choice", values=tuple(values), branches=branches)
    if not isinstance(values, (list, tuple)) or not values:
        problems.append(f"{path}: choice needs a non-empty list (or mapping of branches) under 'values'")
        return None
    for v in values:
        if v is not None and not isinstance(v, (bool, int, float, str)):
            problems.append(f"{path}: choice values must be numbers, strings, booleans or null, got {v!r}")
            return None
    if len({repr(v) for v in values}) != len(values):
        problems.append(f"{path}: choice values repeat: {list(values)!r}")
    return Param(name, "choice", values=tuple(values))


def iter_params(params: Mapping[str, Param], context: tuple = ()) -> Iterator[tuple[Param, tuple]]:
    """Every parameter with the branch choices above it, ``((name, value), ...)``."""
    for p in params.values():
        yield p, context
        if p.branches is not None:
            for value, branch in p.branches.items():
                yield from iter_params(branch, (*context, (p.name, value)))


def assignments(params: Mapping[str, Param]) -> Iterator[dict[str, Param]]:
    """Every combination of branch choices, as the flat map of the parameters active in it."""
    plain = {n: p for n, p in params.items() if p.branches is None}
    branched = [p for p in params.values() if p.branches is not None]
    if not branched:
        yield dict(plain)
        return
    options = []
    for p in branched:
        subs = []
        for value in p.values:
            for sub in assignments(p.branches[value]):
                subs.append({p.name: Param(p.name, "fixed", value=value), **sub})
        options.append(subs)
    for combo in itertools.product(*options):
        merged = dict(plain)
        for part in combo:
            merged.update(part)
        yield merged


# ---------------------------------------------------------------------------------------------- the spec
@dataclasses.dataclass
class SearchSpec:
    """Everything a search needs; YAML < command line. Paths are made absolute by :meth:`resolved`.

    Search settings: ``name`` (experiment name; default the space file's stem), ``storage_path`` (the
    experiment folder is ``storage_path/name``), ``num_samples`` (trials in all), ``epochs`` (each
    trial's length and ASHA's ``max_t``), ``grace_period``, ``reduction_factor`` (ASHA),
    ``max_concurrent`` (trials at once; None: as many as the cluster's resources can run, see
    :func:`hiercls.tune.runner.cluster_capacity`), ``startup_trials`` (random trials before TPE models the
    results), ``gpus_per_trial``, ``cpus_per_trial``, ``address`` (None: a local Ray; ``auto`` or
    ``HOST:PORT``: join a cluster), ``objective``, ``multi_objective`` (NSGA-II on
    (val_top1_error, val_mistake_severity), no ASHA), ``seed``, ``data_dir`` (overrides
    ``train.data_dir``), ``max_failures`` (retries of a crashed trial from its last checkpoint),
    ``top`` (rows in the final table), ``allow_large_search`` (permit ``num_samples`` above
    :data:`MAX_SAMPLES`). Space: ``train``, ``search``, ``points_to_evaluate``.
    """

    name: str | None = None
    storage_path: str = "runs/tune"
    num_samples: int = 20
    epochs: int = 30
    grace_period: int = 3
    reduction_factor: float = 3.0
    max_concurrent: int | None = None
    startup_trials: int = 10
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    address: str | None = None
    objective: str = "val_top1_error"
    multi_objective: bool = False
    seed: int = 0
    data_dir: str | None = None
    max_failures: int = 1
    top: int = 5
    allow_large_search: bool = False
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    space_file: str | None = None

    # keys that define the search: a change on --resume is refused
    RUNTIME_KEYS = ("name", "storage_path", "address", "max_concurrent", "space_file", "top", "max_failures",
                    "allow_large_search")

    # ------------------------------------------------------------------ construction
    @classmethod
    def settings(cls) -> list[str]:
        """The keys a YAML file (top level) or the command line may set."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "space_file"]

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        overrides: Mapping[str, Any] | None = None,
        *,
        ignore: Sequence[str] = (),
    ) -> SearchSpec:
        """The YAML file at ``path`` (a path, or a shipped space's name: :func:`resolve_space`; default
        :data:`DEFAULT_SPACE`) with ``overrides`` (given, not None,
        command-line values) laid over it. Top-level keys in ``ignore`` are dropped from the file (e.g.
        ``trainable``, which an experiment's saved ``search_spec.yaml`` records beside the spec).

        Raises:
            SpecError: missing or malformed file, unknown keys, wrong types (all listed).
        """
        path = resolve_space(path) if path is not None else DEFAULT_SPACE
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise SpecError([f"{path}: not valid YAML: {err}"]) from err
        if not isinstance(raw, dict):
            raise SpecError([f"{path}: must hold a mapping of settings"])
        values = {k: v for k, v in raw.items() if k not in ignore}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        values.setdefault("name", path.stem)
        values["space_file"] = str(path.resolve())
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SearchSpec:
        """A spec from plain values, type-checked (all problems listed in one SpecError)."""
        valid = {f.name: f for f in dataclasses.fields(cls)}
        problems = [f"unknown setting {k!r}" for k in values if k not in valid]
        if problems:
            problems.append("valid settings: " + ", ".join(cls.settings()))
        kwargs = {}
        for key, value in values.items():
            if key not in valid:
                continue
            try:
                kwargs[key] = _coerce_setting(key, valid[key].type, value)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        if problems:
            raise SpecError(problems)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("space_file")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived
    def params(self, problems: list[str] | None = None) -> dict[str, Param]:
        """The parsed ``search:`` section (``scale: epochs`` resolved with ``epochs``)."""
        sink: list[str] = [] if problems is None else problems
        epochs = self.epochs if isinstance(self.epochs, int) and self.epochs >= 1 else None
        return parse_params(self.search, "search", sink, epochs=epochs)

    def parsed_objective(self) -> Objective:
        return parse_objective(self.objective)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path).expanduser().resolve() / str(self.name)

    def base_config(self) -> dict[str, Any]:
        """The fixed training keys every trial starts from (before its searched values)."""
        base = dict(self.train)
        if self.data_dir is not None:
            base["data_dir"] = self.data_dir
        base.setdefault("evaluate_test", False)
        base["evaluate_test"] = False
        base["download"] = False
        base["epochs"] = self.epochs
        base["seed"] = self.seed
        base["device"] = "cuda" if self.gpus_per_trial > 0 else "cpu"
        base["num_threads"] = max(1, int(self.cpus_per_trial))
        if "data_dir" in base:
            base["data_dir"] = str(Path(base["data_dir"]).expanduser().resolve())
        return base

    def resolved(self) -> SearchSpec:
        """A copy with absolute paths and ``scale: epochs`` bounds written out (what is saved and
        compared on resume)."""
        problems: list[str] = []
        params = self.params(problems)
        if problems:
            raise SpecError(problems)
        out = dataclasses.replace(self)
        out.storage_path = str(Path(self.storage_path).expanduser().resolve())
        data_dir = self.data_dir if self.data_dir is not None else self.train.get("data_dir")
        if data_dir is not None:
            out.data_dir = str(Path(data_dir).expanduser().resolve())
        out.search = {k: p.to_yaml_value() for k, p in params.items()}
        return out

    # ------------------------------------------------------------------ validation
    def validate(self) -> list[str]:
        """Raise :class:`SpecError` listing every problem; returns warnings (to print) when valid."""
        problems, notes = self.problems()
        if problems:
            raise SpecError(problems)
        return notes

    def problems(self) -> tuple[list[str], list[str]]:
        """``(problems, warnings)`` of this spec: settings out of range, unknown train keys or names,
        empty or inverted ranges, loss/schedule parameters outside the branch that selects their loss
        or schedule, an ASHA grace period not above the largest searched start epoch, a space whose
        loss terms can all be off at once, bad ``points_to_evaluate``, an unknown objective."""
        problems: list[str] = []
        notes: list[str] = []
        checks = [
            ("num_samples", isinstance(self.num_samples, int) and self.num_samples >= 1, ">= 1"),
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 1, ">= 1"),
            ("max_concurrent", self.max_concurrent is None or self.max_concurrent >= 1,
             ">= 1, or null for what the cluster can run"),
            ("startup_trials", self.startup_trials >= 0, ">= 0"),
            ("cpus_per_trial", self.cpus_per_trial > 0, "> 0"),
            ("gpus_per_trial", self.gpus_per_trial >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
            ("max_failures", self.max_failures >= 0, ">= 0"),
            ("top", self.top >= 1, ">= 1"),
        ]
        if not self.multi_objective:
            checks += [
                ("grace_period", 1 <= self.grace_period <= max(self.epochs, 1), "in 1..epochs"),
                ("reduction_factor", self.reduction_factor > 1, "> 1"),
            ]
        for key, ok, valid in checks:
            if not ok:
                problems.append(f"{key}={getattr(self, key)!r} is out of range; valid: {valid}")
        large = isinstance(self.num_samples, int) and self.num_samples > MAX_SAMPLES
        if large and not self.allow_large_search:
            problems.append(
                f"num_samples={self.num_samples:,} is above {MAX_SAMPLES:,}: Ray Tune keeps every trial in "
                "the driver's memory and rewrites all of them in the experiment state after every epoch of "
                "every trial; check for a typo, or pass --allow-large-search (allow_large_search: true)"
            )
        if (not self.multi_objective and isinstance(self.grace_period, int) and isinstance(self.epochs, int)
                and self.grace_period == self.epochs):
            notes.append(
                f"grace_period={self.grace_period} equals epochs: ASHA stops no trial before its last epoch, "
                "so every trial runs in full; lower grace_period to let ASHA stop weak trials early"
            )
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            problems.append(f"gpus_per_trial={self.gpus_per_trial} : above 1 it must be a whole number")
        if self.cpus_per_trial > 1 and self.cpus_per_trial != int(self.cpus_per_trial):
            problems.append(f"cpus_per_trial={self.cpus_per_trial}: above 1 it must be a whole number")
        if not self.name or "/" in str(self.name) or str(self.name).startswith("."):
            problems.append(f"name={self.name!r} must be a non-empty folder name without '/'")
        if self.multi_objective:
            if self.objective != "val_top1_error":
                notes.append(
                    f"--multi-objective searches (val_top1_error, val_mistake_severity); objective "
                    f"{self.objective!r} is only used to sort the table"
                )
        try:
            objective = self.parsed_objective()
            if objective.metric == "val_mistake_severity" and not self.multi_objective:
                notes.append(MISTAKE_SEVERITY_WARNING)
        except ValueError as err:
            problems.append(str(err))

        # the fixed training keys
        valid_keys = set(TrainConfig.valid_keys())
        for key in self.train:
            if key not in valid_keys:
                problems.append(f"train.{key}: unknown config key {key!r}")
            elif key in TRIAL_KEYS and key not in ("download", "device"):
                problems.append(f"train.{key}: set by the search itself (use the top-level setting)")
        train = {k: v for k, v in self.train.items() if k in valid_keys}
        try:
            TrainConfig.from_dict(train)
        except ConfigError as err:
            problems += [f"train: {problem}" for problem in err.problems]
            train = {}

        params = self.params(problems)
        for p, context in iter_params(params):
            if p.name in train and not context:
                problems.append(f"search.{p.name}: also fixed under train: (remove one)")
        problems += self._branch_problems(params, train)
        if not self.multi_objective and isinstance(self.grace_period, int):
            problems += self._grace_problems(params, train)
        problems += self._all_off_problems(params, train)
        problems += self._point_problems(params)
        problems += self._config_problems(params, train)
        if self.data_dir is None and "data_dir" not in self.train:
            notes.append("no data_dir given: trials use TrainConfig's default 'data' (pass --data-dir)")
        return _dedupe(problems), notes

    def _choices_of(self, params: Mapping[str, Param], train: Mapping[str, Any], key: str) -> list[Any]:
        """The values ``key`` (loss or lr_schedule) can take at the top of the space."""
        if key in params:
            return list(params[key].values) if params[key].kind == "choice" else [params[key].value]
        return [train.get(key, getattr(TrainConfig(), key))]

    def _branch_problems(self, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
        """Loss (schedule) parameters where a loss (schedule) that does not take them can be selected."""
        problems = []
        for key, registry in param_registries().items():
            owned = param_keys(key)

            def params_of(name: str, registry=registry) -> dict[str, Any]:
                return registry.params(name)

            for value in self._choices_of(params, train, key):
                if value not in registry:
                    problems.append(f"{key} {value!r} is unknown; valid: {', '.join(registry.names())}")
            for p, context in iter_params(params):
                if p.name == key and context:
                    problems.append(f"search: {key} cannot be chosen inside a branch ({_where(context)})")
            top = [v for v in self._choices_of(params, train, key) if v in registry]

            def selected(context: tuple, key=key, top=top) -> list[Any]:
                chosen = [v for k, v in context if k == key]
                return chosen if chosen else top

            for p, context in iter_params(params):
                if p.name not in owned:
                    continue
                takes = [v for v in selected(context) if v in registry and p.name in params_of(v)]
                refuse = [v for v in selected(context) if v in registry and p.name not in params_of(v)]
                if refuse:
                    owners = [n for n in registry.names() if p.name in params_of(n)]
                    problems.append(
                        f"search{_where(context, prefix=True)}.{p.name}: a parameter of {key} "
                        f"{' / '.join(owners)}, but this branch selects {key} {', '.join(map(repr, refuse))}"
                        + ("" if takes else " only")
                        + f"; move it under the {key} branch that uses it"
                    )
            for name in train:
                if name in owned:
                    refuse = [v for v in top if name not in params_of(v)]
                    if refuse:
                        problems.append(
                            f"train.{name}: a parameter the selected {key} {', '.join(map(repr, refuse))} "
                            "does not take; move it under the branch that uses it"
                        )
        for value in self._choices_of(params, train, "architecture"):
            if value not in MODELS:
                problems.append(f"architecture {value!r} is unknown; valid: {', '.join(MODELS.names())}")
        return problems

    def _grace_problems(self, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
        """ASHA's grace period must outlast every loss term's start epoch that can be drawn (the loss
        parameters declared with ``role="start"``)."""
        largest, which = None, None
        start_keys = [k for k, p in param_keys("loss").items() if p.role == "start"]
        for key in start_keys:
            candidates = [p.largest() for p, _ in iter_params(params) if p.name == key]
            if key in train and _is_number(train[key]):
                candidates.append(float(train[key]))
            for c in candidates:
                if c is not None and (largest is None or c > largest):
                    largest, which = c, key
        if largest is not None and largest > 0 and self.grace_period <= largest:
            return [
                f"grace_period={self.grace_period} is not above the largest start epoch searched "
                f"({which} up to {largest:g}): ASHA would stop trials before that loss term has started; "
                f"raise grace_period above {largest:g} or narrow the range"
            ]
        return []

    def _all_off_problems(self, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
        """A loss made of terms (parameters declared with ``term`` and ``role``): every term can be
        switched off at once (its ``weight`` exactly 0, or its ``start`` after epoch 0)."""
        problems = []
        for combo in assignments(params):
            loss = combo["loss"].value if "loss" in combo else train.get("loss", TrainConfig.loss)
            if loss not in LOSSES:
                continue
            declared = LOSSES.params(loss)
            terms: dict[str, dict[str, str]] = {}
            for key, p in declared.items():
                if p.term and p.role:
                    terms.setdefault(p.term, {})[p.role] = key
            if not terms:
                continue

            def param(key: str, combo=combo, declared=declared) -> Param:
                if key in combo:
                    return combo[key]
                return Param(key, "fixed", value=train.get(key, declared[key].default))

            off = {}
            for term, roles in terms.items():
                reasons = []
                if "weight" in roles and param(roles["weight"]).can_be_zero():
                    reasons.append(f"{roles['weight']} can be 0")
                if "start" in roles and param(roles["start"]).can_be_positive():
                    reasons.append(f"{roles['start']} can be after epoch 0")
                off[term] = reasons
            if all(off.values()):
                first = next(iter(terms))
                weight = terms[first].get("weight", "its weight")
                problems.append(
                    f"search: every loss term of {LOSSES.canonical(loss)} can be switched off at once ("
                    + "; ".join(r for reasons in off.values() for r in reasons)
                    + f"): keep the {first} term from epoch 0 with a {weight} range that excludes 0"
                    + (", as in the original project" if LOSSES.canonical(loss) == "simple-hierarchy" else "")
                )
        return problems

    def _point_problems(self, params: Mapping[str, Param]) -> list[str]:
        problems = []
        if not isinstance(self.points_to_evaluate, list):
            return [f"points_to_evaluate must be a list of mappings, got {self.points_to_evaluate!r}"]
        for i, point in enumerate(self.points_to_evaluate):
            where = f"points_to_evaluate[{i}]"
            if not isinstance(point, Mapping):
                problems.append(f"{where} must be a mapping of searched keys to values")
                continue
            problems += _check_point(point, params, where)
        return problems

    def _config_problems(self, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
        """:func:`~hiercls.build.check_config` on both ends of every branch combination: names, declared
        ranges, and what the loss and schedule check on the hierarchy."""
        from hiercls.build import check_config

        problems = []
        if not isinstance(self.epochs, int) or self.epochs < 1:
            return problems
        base = {**train, "epochs": self.epochs, "evaluate_test": False, "download": False}
        seen = set()
        for combo in assignments(params):
            for end in ("low", "high"):
                values = dict(base)
                for name, p in combo.items():
                    values[name] = _end_value(p, end)
                key = repr(sorted(values.items(), key=lambda kv: kv[0]))
                if key in seen:
                    continue
                seen.add(key)
                label = ", ".join(f"{n}={combo[n].value}" for n in ("loss", "lr_schedule") if n in combo
                                  and combo[n].kind == "fixed")
                try:
                    check_config(TrainConfig.from_dict(values))
                except ConfigError as err:
                    for problem in err.problems:
                        where = f" ({label})" if label else ""
                        problems.append(f"search{where}, {end} end of the ranges: {problem}")
        return problems


def _end_value(p: Param, end: str) -> Any:
    if p.kind == "fixed":
        return p.value
    if p.kind == "choice":
        return p.values[0] if end == "low" else p.values[-1]
    return p.low if end == "low" else p.high


def _check_point(point: Mapping[str, Any], params: Mapping[str, Param], where: str) -> list[str]:
    """A point must name searched keys only, with values in range, and branch keys under their branch."""
    problems = []
    active: dict[str, Param] = {}

    def walk(ps: Mapping[str, Param]) -> None:
        for name, p in ps.items():
            active[name] = p
            if p.branches is not None and name in point:
                for value in p.values:
                    if _plain(point[name]) == _plain(value):
                        walk(p.branches[value])

    walk(params)
    every = {p.name for p, _ in iter_params(params)}
    for key, value in point.items():
        if key not in every:
            problems.append(f"{where}: {key!r} is not a searched key")
        elif key not in active:
            problems.append(f"{where}: {key!r} belongs to a branch this point does not select")
        elif not active[key].contains(value):
            dist = active[key].to_yaml_value()
            problems.append(f"{where}: {key}={value!r} is outside its distribution {dist}")
    return problems


def _where(context: tuple, *, prefix: bool = False) -> str:
    text = "".join(f"[{k}={v}]" for k, v in context) if prefix else ", ".join(f"{k}={v}" for k, v in context)
    return text


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _coerce_setting(name: str, annotation: str, value: Any) -> Any:
    """Scalars as TrainConfig's fields are checked; mappings and lists of mappings for the spec's own."""
    base = annotation.replace(" | None", "")
    if value is None or not base.startswith(("dict", "list")):
        return _coerce(name, annotation, value)
    if base.startswith("dict"):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {value!r}")
    return [dict(v) if isinstance(v, Mapping) else v for v in value]


def spec_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys (dotted paths) where two resolved spec dicts differ, runtime-only keys ignored."""
    ignore = set(SearchSpec.RUNTIME_KEYS)
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in dict.fromkeys([*a, *b]):
                if not path and k in ignore:
                    continue
                walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k))
        elif _plain(a) != _plain(b):
            shown_a = "(absent)" if a is _MISSING else repr(a)
            shown_b = "(absent)" if b is _MISSING else repr(b)
            out.append(f"{path}: saved {shown_a}, now {shown_b}")

    walk(saved, current, "")
    return out


_MISSING = object()


def warn_notes(notes: Sequence[str]) -> None:
    for note in notes:
        warnings.warn(note, stacklevel=2)
