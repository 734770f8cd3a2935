"""The typed search specification: one YAML file (plus command-line overrides) -> :class:`SearchSpec`.

A space file holds the search settings at its top level, the fixed training keys under ``train:``, the
searched parameters under ``search:`` (:mod:`hiercls.tune.parameters`: distributions, branches, grids)
and optional ``points_to_evaluate:``; ``docs/search.md`` describes the format and
``docs/reference/modes.md`` what each search mode takes. Every problem is reported at once
(:class:`SpecError`, :meth:`SearchSpec.problems`) before Ray starts. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.config import (
    ConfigError,
    TrainConfig,
    coerce_field,
    param_owner,
    read_config_values,
    shipped_dir,
)
from hiercls.tune.checks import (
    all_off_problems,
    branch_problems,
    config_problems,
    grid_config_problems,
    nothing_searched_problems,
    point_problems,
)
from hiercls.tune.constraints import Constraint, parse_constraint
from hiercls.tune.modes import mode_problems, range_problems, scheduler_of, searcher_of
from hiercls.tune.objective import MISTAKE_SEVERITY_WARNING, Objective, parse_objective
from hiercls.tune.parameters import (
    TRIAL_KEYS,
    Param,
    grid_points,
    grid_size,
    is_grid,
    iter_params,
    parse_params,
    plain,
)
from hiercls.value_schedule import all_variable_keys

__all__ = [
    "DEFAULT_NUM_SAMPLES", "DEFAULT_SPACE", "MAX_SAMPLES", "SMOKE_SPACE", "DataNotReadyError", "Objective",
    "Param", "SearchSpec", "SpecError", "iter_params", "parse_objective", "parse_params", "pb2_keys",
    "expand_train", "resolve_space", "shipped_spaces", "spec_differences",
]


def _spaces_dir() -> Path:
    """The shipped search spaces: the top-level ``search_spaces/`` folder, installed as the package data
    ``hiercls.search_spaces`` (the source tree's folder when hiercls runs from a checkout)."""
    return shipped_dir("hiercls.search_spaces", "search_spaces")


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

MAX_SAMPLES = 10_000
"""``num_samples`` above this is refused unless ``allow_large_search`` (``--allow-large-search``)."""
DEFAULT_NUM_SAMPLES = 20
PER_TRIAL_SPLITS = "trial"
"""``split_seed: trial``: each trial draws its own validation split from its own seed, as every search did
before ``split_seed`` existed (an experiment saved without the setting resumes so)."""
"""The trials of a TPE search when ``num_samples`` is not given (a grid search: its number of points)."""


def pb2_keys() -> tuple[str, ...]:
    """What PB2 changes during training: the values declared ``variable`` (``lr``, ``alpha``, ``beta``,
    ``lambda_fine``, ``lambda_coarse``). A function: reading the loss registry imports torch."""
    return tuple(all_variable_keys())


class SpecError(ValueError):
    """An invalid search specification; the message lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"invalid search specification ({len(self.problems)} problem(s)):\n  - "
            + "\n  - ".join(self.problems)
        )


class DataNotReadyError(SpecError):
    """The search's CIFAR-100 could not be found or loaded: one line (it names the folder, or every place
    tried), exit status 2 like every :class:`SpecError`."""

    def __init__(self, message: str) -> None:
        self.problems = [message]
        ValueError.__init__(self, message)


# ---------------------------------------------------------------------------------------------- the spec
@dataclasses.dataclass
class SearchSpec:
    """Everything a search needs; defaults < YAML < command line. Paths are made absolute by
    :meth:`resolved`. The settings are the command line's options (``python tune_main.py --help``,
    ``docs/search.md``); ``searcher`` and ``scheduler`` pick the search mode (None: chosen from the rest,
    :mod:`hiercls.tune.modes`); ``max_concurrent`` None (``auto``) is what the cluster runs. The space:
    ``train``, ``search``, ``points_to_evaluate``.

    ``split_seed`` is the seed of the one validation split (and ``max_train_samples`` subset) every trial
    of the search uses: null = the search ``seed``; ``trial`` = each trial its own (searches made before
    it existed). Trials still differ in their own ``seed`` (weights, batches, augmentation).
    ``evaluate_test`` scores the official test set once at the end of every trial (``hiercls-confirm``'s
    runs; a search chooses on validation and never needs it; refused with ASHA, which stops a trial at its
    last report, before its test).

    ``given`` (not saved) names the settings the file, the command line or the dict set: a setting the
    search mode does not take is refused or warned about only when someone set it.
    """

    name: str | None = None
    storage_path: str = "runs/tune"
    num_samples: int | None = None
    epochs: int = 30
    searcher: str | None = None
    scheduler: str | None = None
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
    split_seed: int | str | None = None
    evaluate_test: bool = False
    data_dir: str | None = None
    max_failures: int = 1
    top: int = 5
    allow_large_search: bool = False
    optuna_storage: str | None = None
    constraints: list[str] = dataclasses.field(default_factory=list)
    perturbation_interval: int = 4
    pb2_time_multiplexed: bool = False
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    space_file: str | None = None
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False, repr=False)

    # keys that define the search: a change on --resume is refused
    RUNTIME_KEYS = ("name", "storage_path", "address", "max_concurrent", "space_file", "top", "max_failures",
                    "allow_large_search")

    # ------------------------------------------------------------------ construction
    @classmethod
    def settings(cls) -> list[str]:
        """The keys a YAML file (top level) or the command line may set."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("space_file", "given")]

    @classmethod
    def load(cls, path: str | Path | None, overrides: Mapping[str, Any] | None = None, *,
             ignore: Sequence[str] = ()) -> SearchSpec:
        """The YAML file at ``path`` (a path, or a shipped space's name: :func:`resolve_space`; default
        :data:`DEFAULT_SPACE`) with ``overrides`` (given, not None, command-line values) laid over it.
        Top-level keys in ``ignore`` are dropped from the file (e.g. ``trainable``, which an experiment's
        saved ``search_spec.yaml`` records beside the spec); such a saved spec holds every setting, and
        only the overrides count as ``given``.

        Raises:
            SpecError: missing, unreadable or malformed file, unknown keys, wrong types (all listed).
        """
        path = resolve_space(path) if path is not None else DEFAULT_SPACE
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            bad = f"byte 0x{err.object[err.start]:02x} at offset {err.start}"
            raise SpecError([f"{path}: not UTF-8 text ({bad}); save the space file as UTF-8"]) from err
        except (OSError, yaml.YAMLError) as err:
            raise SpecError([f"{path}: not a readable YAML file: {err}"]) from err
        if not isinstance(raw, dict):
            raise SpecError([f"{path}: must hold a mapping of settings"])
        values = {k: v for k, v in raw.items() if k not in ignore}
        given = {k for k, v in (overrides or {}).items() if v is not None}
        values.update({k: (overrides or {})[k] for k in given})
        values.setdefault("name", path.stem)
        values["space_file"] = str(path.resolve())
        spec = cls.from_dict(values)
        saved = bool(ignore) and any(k in raw for k in ignore)
        return dataclasses.replace(spec, given=frozenset(given if saved else spec.given))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SearchSpec:
        """A spec from plain values, type-checked (all problems listed in one SpecError)."""
        valid = {f.name: f for f in dataclasses.fields(cls) if f.name != "given"}
        problems = [f"unknown setting {k!r}" for k in values if k not in valid]
        if problems:
            problems.append("valid settings: " + ", ".join(cls.settings()))
        kwargs = {}
        if isinstance(values.get("train"), Mapping):
            values = {**values, "train": _prepared_train(values, problems)}
        for key, value in values.items():
            if key not in valid:
                continue
            if key == "constraints" and isinstance(value, str):  # one constraint written as a string
                value = [value]
            if key == "max_concurrent" and value == "auto":  # the cluster's capacity, as null
                value = None
            try:
                kwargs[key] = _coerce_setting(key, valid[key].type, value)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        if problems:
            raise SpecError(problems)
        return cls(**kwargs, given=frozenset(k for k in kwargs if k != "space_file"))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("space_file")
        out.pop("given")
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

    def pb2_bounds(self, params: Mapping[str, Param] | None = None) -> dict[str, tuple[float, float]]:
        """PB2's ranges: each searched key's ``(low, high)`` (a ``pb2`` search's ``search:`` holds only
        :func:`pb2_keys` with uniform or loguniform ranges); ``params``: the parsed space, when at hand."""
        return {name: (float(p.low), float(p.high)) for name, p in (params or self.params()).items()
                if p.kind in ("uniform", "loguniform")}

    def parsed_constraints(self, problems: list[str] | None = None) -> list[Constraint]:
        """The ``constraints`` lines parsed (:func:`~hiercls.tune.constraints.parse_constraint`); a bad one
        is added to ``problems`` (raised as :class:`SpecError` when ``problems`` is None)."""
        sink: list[str] = [] if problems is None else problems
        out: list[Constraint] = []
        for text in self.constraints or []:
            try:
                out.append(parse_constraint(str(text)))
            except ValueError as err:
                sink.append(str(err))
        if problems is None and sink:
            raise SpecError(sink)
        return out

    def grid_count(self, params: Mapping[str, Param] | None = None) -> int:
        """The trials of a grid search: the grid's points, times the ``points_to_evaluate`` configurations
        when there are any (each runs at every point of the grid)."""
        size = grid_size(params if params is not None else self.params())
        return size * max(1, len(self.points_to_evaluate))

    def is_grid(self) -> bool:
        """Whether this is a grid search (a ``grid`` entry anywhere in ``search:``)."""
        return is_grid(self.params())

    def grid_points(self) -> list[dict[str, Any]]:
        """The points of a grid search in their fixed order (:func:`~hiercls.tune.parameters.grid_points`):
        the searched values of each trial's config ([] when this is not a grid search)."""
        params = self.params()
        if not is_grid(params):
            return []
        configs = self.points_to_evaluate or [{}]
        return [{**config, **point} for config in configs for point in grid_points(params)]

    def scheduler_in_use(self) -> str:
        """``asha``, ``none`` or ``pb2``: the ``scheduler`` setting, else the searcher's default (``none``
        for a grid search or a multi-objective one, ``asha`` for TPE)."""
        searcher = searcher_of(self, self.params())
        mode = scheduler_of(self, searcher) if searcher is not None else None
        return mode.name if mode is not None else str(self.scheduler)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path).expanduser().resolve() / str(self.name)

    def base_config(self) -> dict[str, Any]:
        """The fixed training keys every trial starts from (before its searched values)."""
        base = dict(self.train)
        if self.data_dir is not None:
            base["data_dir"] = self.data_dir
        base["evaluate_test"] = self.evaluate_test
        base["download"] = False
        base["epochs"] = self.epochs
        base["seed"] = self.seed
        if self.split_seed != PER_TRIAL_SPLITS:  # one split for every trial: split_seed, else the seed
            base["split_seed"] = self.seed if self.split_seed is None else self.split_seed
        base["device"] = "cuda" if self.gpus_per_trial > 0 else "cpu"
        base["num_threads"] = max(1, int(self.cpus_per_trial))
        for key in ("data_dir", "word_vectors"):  # trials run in their own folders: absolute paths
            if base.get(key) is not None:
                base[key] = str(Path(base[key]).expanduser().resolve())
        return base

    def resolved(self) -> SearchSpec:
        """A copy with absolute paths, ``scale: epochs`` bounds written out and ``num_samples`` set (a
        grid's number of points, else :data:`DEFAULT_NUM_SAMPLES` when not given): what is saved and
        compared on resume. ``searcher`` and ``scheduler`` stay as given (None: chosen by the spec)."""
        problems: list[str] = []
        params = self.params(problems)
        if problems:
            raise SpecError(problems)
        out = dataclasses.replace(self)
        if out.num_samples is None:
            out.num_samples = self.grid_count(params) if is_grid(params) else DEFAULT_NUM_SAMPLES
        out.storage_path = str(Path(self.storage_path).expanduser().resolve())
        data_dir = self.data_dir if self.data_dir is not None else self.train.get("data_dir")
        if data_dir is not None:
            out.data_dir = str(Path(data_dir).expanduser().resolve())
        if self.train.get("word_vectors") is not None:
            vectors = str(Path(self.train["word_vectors"]).expanduser().resolve())
            out.train = {**self.train, "word_vectors": vectors}
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
        """``(problems, warnings)`` of this spec: settings out of range; what the search mode refuses or
        warns about (:func:`~hiercls.tune.modes.mode_problems`: its settings, a grid's or PB2's space);
        the objective and constraints; the fixed training keys; the space: unknown keys or names, empty or
        inverted ranges, parameters outside the branch that selects their loss or schedule, an ASHA grace
        period not above the largest searched start epoch, loss terms that can all be off at once, bad
        ``points_to_evaluate``, values the loss or schedule rejects, a space file that searches nothing."""
        param_problems: list[str] = []
        params = self.params(param_problems)
        problems, notes = mode_problems(self, params)
        problems = self._setting_problems() + self._size_problems(params) + problems
        more, objective_notes = self._objective_problems()
        train, train_problems = self._train_problems()
        problems += more + train_problems + param_problems + self._space_problems(params, train)
        return list(dict.fromkeys(problems)), notes + objective_notes

    def _setting_problems(self) -> list[str]:
        """Settings out of range, whatever the mode."""
        checks = [
            ("num_samples", self.num_samples is None or self.num_samples >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("max_concurrent", self.max_concurrent is None or self.max_concurrent >= 1,
             ">= 1, or auto (null) for what the cluster can run"),
            ("cpus_per_trial", self.cpus_per_trial > 0, "> 0"),
            ("gpus_per_trial", self.gpus_per_trial >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
            ("split_seed", self.split_seed in (None, PER_TRIAL_SPLITS) or (
                isinstance(self.split_seed, int) and self.split_seed >= 0),
             f">= 0, null (the search seed) or {PER_TRIAL_SPLITS!r} (each trial its own split, as searches "
             "before split_seed existed)"),
            ("max_failures", self.max_failures >= 0, ">= 0"),
            ("top", self.top >= 1, ">= 1"),
        ]
        problems = range_problems(self, checks)
        for key in ("gpus_per_trial", "cpus_per_trial"):
            value = getattr(self, key)
            if value > 1 and value != int(value):
                problems.append(f"{key}={value}: above 1 it must be a whole number")
        if not self.name or "/" in str(self.name) or str(self.name).startswith("."):
            problems.append(f"name={self.name!r} must be a non-empty folder name without '/'")
        return problems

    def _size_problems(self, params: Mapping[str, Param]) -> list[str]:
        size = self.grid_count(params) if is_grid(params) else self.num_samples
        if not isinstance(size, int) or size <= MAX_SAMPLES or self.allow_large_search:
            return []
        what = f"the grid's {size:,} points are" if is_grid(params) else f"num_samples={size:,} is"
        return [f"{what} above {MAX_SAMPLES:,}: Ray Tune keeps every trial in the driver's memory and "
                "rewrites all of them in the experiment state after every epoch of every trial; check for a "
                "typo, or pass --allow-large-search (allow_large_search: true)"]

    def _objective_problems(self) -> tuple[list[str], list[str]]:
        """The constraint lines and the objective parsed; severity alone is warned about, unless a
        constraint or the Pareto front makes it the sensible question."""
        problems: list[str] = []
        constraints = self.parsed_constraints(problems)
        try:
            objective = self.parsed_objective()
        except ValueError as err:
            return problems + [str(err)], []
        alone = objective.metric == "val_mistake_severity" and not self.multi_objective and not constraints
        return problems, [MISTAKE_SEVERITY_WARNING] if alone else []

    def _train_problems(self) -> tuple[dict[str, Any], list[str]]:
        """The fixed training keys that are valid, and the problems of the others."""
        valid_keys = set(TrainConfig.valid_keys())
        problems = []
        for key in self.train:
            if key not in valid_keys:
                problems.append(f"train.{key}: unknown config key {key!r}")
            elif key in TRIAL_KEYS and key not in ("download", "device"):
                problems.append(f"train.{key}: set by the search itself (use the top-level setting)")
        train = {k: v for k, v in self.train.items() if k in valid_keys}
        try:
            TrainConfig.from_dict(train)
        except ConfigError as err:
            return {}, problems + [f"train: {problem}" for problem in err.problems]
        return train, problems

    def _space_problems(self, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
        """The searched space against the fixed keys and the registries (mode-independent)."""
        problems = [f"search.{p.name}: also fixed under train: (remove one)"
                    for p, context in iter_params(params) if p.name in train and not context]
        branches = branch_problems(params, train)
        problems += branches + all_off_problems(params, train)
        if self.scheduler != "pb2":  # PB2 says which ranges it needs
            problems += nothing_searched_problems(params, self.space_file)
        if not is_grid(params):
            problems += point_problems(self.points_to_evaluate, params)
        elif self.points_to_evaluate:  # configurations, each run at every point of the grid
            return problems + grid_config_problems(self.points_to_evaluate, params, train, self.epochs)
        if branches:  # the checked configs would repeat a parameter in the wrong place, once per config
            return problems
        return problems + config_problems(self.epochs, params, train)


def _prepared_train(values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """A space's ``train:`` mapping with its ``config:`` expanded (:func:`expand_train`; a problem is added
    to ``problems``) and the model's, loss's or schedule's parameters set to null unset."""
    train = dict(values["train"])
    if "config" in train:
        search = values.get("search")
        try:
            train = expand_train(train, list(search) if isinstance(search, Mapping) else [])
        except ConfigError as err:
            problems.append(f"train.config: {err}")
    return {k: v for k, v in train.items() if v is not None or param_owner(k) is None}


def expand_train(train: Mapping[str, Any], searched: Sequence[str] = ()) -> dict[str, Any]:
    """A space's ``train:`` block with its ``config:`` (a shipped recipe's name, such as ``speedrun``, or a
    YAML file, as ``python -m hiercls.train --config`` takes) laid under its other keys. The file's keys
    that the search sets itself (``epochs``, ``seed``...: the space's top-level settings decide) or
    searches (``searched``: the top-level keys of ``search:``) give way; a key set to null in ``train:``
    is unset (a recipe's ``label_smoothing`` in a space whose branches choose other losses). A relative
    path is read from the working folder, as ``--config`` reads it.

    Raises:
        ConfigError: the file is missing (the message lists the shipped recipes) or unreadable, or has a
            key that is no config key (named with the file and the closest valid key).
    """
    rest = {k: v for k, v in train.items() if k != "config"}
    base = read_config_values(str(train["config"]))
    base = {k: v for k, v in base.items() if k not in TRIAL_KEYS and k not in searched}
    merged = {**base, **rest}
    return {k: v for k, v in merged.items() if v is not None or k not in base}


def _coerce_setting(name: str, annotation: str, value: Any) -> Any:
    """Scalars as TrainConfig's fields are checked; mappings and lists of mappings for the spec's own."""
    base = annotation.replace(" | None", "")
    if name == "split_seed":  # a seed, or the word for the old per-trial splits
        return value if value == PER_TRIAL_SPLITS else coerce_field(name, "int | None", value)
    if value is None or not base.startswith(("dict", "list")):
        return coerce_field(name, annotation, value)
    if base.startswith("dict"):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {value!r}")
    return [dict(v) if isinstance(v, Mapping) else v for v in value]


def spec_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys (dotted paths) where two resolved spec dicts differ, runtime-only keys ignored. A setting
    absent from one of them (a spec saved before the setting existed) counts as its default."""
    ignore = set(SearchSpec.RUNTIME_KEYS)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(SearchSpec)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in dict.fromkeys([*a, *b]):
                if not path and k in ignore:
                    continue
                missing = defaults.get(k, _MISSING) if not path else _MISSING
                walk(a.get(k, missing), b.get(k, missing), f"{path}.{k}" if path else str(k))
        elif plain(a) != plain(b):
            shown_a = "(absent)" if a is _MISSING else repr(a)
            shown_b = "(absent)" if b is _MISSING else repr(b)
            out.append(f"{path}: saved {shown_a}, now {shown_b}")

    walk(saved, current, "")
    return out


_MISSING = object()
