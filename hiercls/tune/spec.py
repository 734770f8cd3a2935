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

A grid search (:func:`~hiercls.tune.parameters.grid_points`) lists values instead of drawing them:
``{type: grid, values: [...]}``, or ``values`` as a mapping of branches (each branch's grid is its own
combination; the search's points are the union of the branches' points)::

    search:
      loss:
        type: grid
        values:
          cross-entropy: {}                                        # 1 point
          hierarchical-cross-entropy:
            alpha: {type: grid, values: [0.1, 0.2, 0.4]}           # 3 points
          soft-labels: {beta: {type: grid, values: [4, 30]}}       # 2 points

Every point runs once (Ray's basic variant generator, no Optuna: :mod:`hiercls.tune.runner`);
``num_samples`` is the number of points (another value is refused); a distribution beside a grid entry is
refused; ``scheduler`` (``asha`` or ``none``) defaults to ``none`` for a grid, ``asha`` otherwise.

Every problem in a specification is collected and reported at once (:class:`SpecError`) before Ray
starts: see :meth:`SearchSpec.problems`.

The objective, the searched parameters and the checks of the space are :mod:`hiercls.tune.objective`,
:mod:`hiercls.tune.parameters` and :mod:`hiercls.tune.checks`; the names other code imports from here
(``Objective``, ``parse_objective``, ``Param``, ``parse_params``, ``iter_params``) are re-exported.
Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.config import ConfigError, TrainConfig, _coerce
from hiercls.tune.checks import (
    all_off_problems,
    branch_problems,
    config_problems,
    grace_problems,
    grid_problems,
    point_problems,
)
from hiercls.tune.constraints import Constraint, parse_constraint
from hiercls.tune.objective import MISTAKE_SEVERITY_WARNING, Objective, parse_objective
from hiercls.tune.parameters import (
    TRIAL_KEYS,
    Param,
    _plain,
    grid_points,
    grid_size,
    is_grid,
    iter_params,
    parse_params,
)
from hiercls.value_schedule import all_variable_keys

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SPACE",
    "SCHEDULERS",
    "pb2_keys",
    "resolve_space",
    "shipped_spaces",
    "MAX_SAMPLES",
    "SMOKE_SPACE",
    "Param",
    "SearchSpec",
    "SpecError",
    "DataNotReadyError",
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

MAX_SAMPLES = 10_000
"""``num_samples`` above this is refused unless ``allow_large_search`` (``--allow-large-search``)."""
DEFAULT_NUM_SAMPLES = 20
"""The trials of a TPE search when ``num_samples`` is not given (a grid search: its number of points)."""
SCHEDULERS = ("asha", "none", "pb2")
"""The ``scheduler`` values: ASHA stops weak trials at its rungs; ``none`` runs every trial in full;
``pb2`` is population-based training with a Gaussian-process bandit (Ray Tune's PB2): every
``perturbation_interval`` epochs a weak trial continues from a strong one's checkpoint with new values."""


def pb2_keys() -> tuple[str, ...]:
    """What PB2 changes during training: ``lr`` and the losses' parameters declared ``variable`` (the
    engine's ``value_schedule`` keys: ``alpha``, ``beta``, ``lambda_fine``, ``lambda_coarse``). A function:
    reading the loss registry imports the losses (and torch), which this module otherwise does not."""
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
    """Everything a search needs; YAML < command line. Paths are made absolute by :meth:`resolved`.

    Search settings: ``name`` (experiment name; default the space file's stem), ``storage_path`` (the
    experiment folder is ``storage_path/name``), ``num_samples`` (trials in all; None:
    :data:`DEFAULT_NUM_SAMPLES`, or a grid's number of points), ``epochs`` (each trial's length and
    ASHA's ``max_t``), ``scheduler`` (``asha`` or ``none``; None: ``none`` for a grid search or
    ``multi_objective``, else ``asha``), ``grace_period``, ``reduction_factor`` (ASHA),
    ``max_concurrent`` (trials at once; None: as many as the cluster's resources can run, see
    :func:`hiercls.tune.cluster.cluster_capacity`), ``startup_trials`` (random trials before TPE models the
    results), ``gpus_per_trial``, ``cpus_per_trial``, ``address`` (None: a local Ray; ``auto`` or
    ``HOST:PORT``: join a cluster), ``objective``, ``multi_objective`` (NSGA-II on
    (val_top1_error, val_mistake_severity), no ASHA), ``seed``, ``data_dir`` (overrides
    ``train.data_dir``), ``max_failures`` (retries of a crashed trial from its last checkpoint),
    ``top`` (rows in the final table), ``allow_large_search`` (permit ``num_samples`` above
    :data:`MAX_SAMPLES`), ``optuna_storage`` (a database URL for the Optuna study; None: the journal file
    in the experiment folder, :mod:`hiercls.tune.study`), ``constraints`` (``METRIC <= BOUND`` lines,
    :mod:`hiercls.tune.constraints`: a bound relative to ``baseline`` is the first
    ``points_to_evaluate`` trial's value), ``perturbation_interval`` (PB2: epochs between
    perturbations). Space: ``train``, ``search``, ``points_to_evaluate``.
    """

    name: str | None = None
    storage_path: str = "runs/tune"
    num_samples: int | None = None
    epochs: int = 30
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
    data_dir: str | None = None
    max_failures: int = 1
    top: int = 5
    allow_large_search: bool = False
    optuna_storage: str | None = None
    constraints: list[str] = dataclasses.field(default_factory=list)
    perturbation_interval: int = 4
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
            if key == "constraints" and isinstance(value, str):  # one constraint written as a string
                value = [value]
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

    def pb2_bounds(self) -> dict[str, tuple[float, float]]:
        """PB2's ``hyperparam_bounds``: each searched key's ``(low, high)`` (a ``pb2`` search's ``search:``
        holds only :func:`pb2_keys` with uniform or loguniform ranges)."""
        return {name: (float(p.low), float(p.high)) for name, p in self.params().items()
                if p.kind in ("uniform", "loguniform")}

    def _pb2_problems(self, params: Mapping[str, Param], grid: bool) -> list[str]:
        """What a PB2 search refuses: no Optuna (constraints, NSGA-II, grids), one loss family (no
        choices), only time-varying float values, and a perturbation interval the checkpoints divide."""
        out: list[str] = []
        why = "PB2 runs without Optuna (Ray's PBT and PB2 take no search algorithm): no study, "
        if self.constraints:
            out.append(why + "so no constraints; drop --constraint or use scheduler: asha|none")
        if self.multi_objective:
            out.append(why + "so no NSGA-II; drop --multi-objective")
        if grid:
            out.append("scheduler='pb2' with a grid search: a grid runs fixed points; use ranges")
        searched, keys = 0, pb2_keys()
        for name, p in params.items():
            if p.kind == "fixed":
                continue
            if p.kind in ("choice", "grid"):
                out.append(f"search.{name}: scheduler pb2 searches one loss family with continuous values; "
                           f"fix {name} under train: (one PB2 search per loss)")
            elif name in keys and p.kind not in ("uniform", "loguniform"):
                out.append(f"search.{name}: PB2 needs a range: {{type: uniform, low: ..., high: ...}} or "
                           "loguniform (it moves values within the bounds)")
            elif name not in keys:
                out.append(f"search.{name}: PB2 changes only values that may vary during training "
                           f"({', '.join(keys)}); fix {name} under train:")
            else:
                searched += 1
        if not searched and not out:
            out.append(f"scheduler pb2 needs at least one searched range among {', '.join(keys)}")
        interval = self.perturbation_interval
        if not isinstance(interval, int) or not 1 <= interval < max(int(self.epochs or 1), 2):
            out.append(f"perturbation_interval={interval!r} is out of range; valid: 1..epochs-1 (epochs)")
        else:
            every = self.train.get("checkpoint_every", TrainConfig().checkpoint_every)
            if isinstance(every, int) and every >= 1 and interval % every:
                out.append(f"perturbation_interval={interval} is not a multiple of train.checkpoint_every="
                           f"{every}: a trial continues from the checkpoint of a perturbation epoch")
        return out

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

    def is_grid(self) -> bool:
        """Whether this is a grid search (a ``grid`` entry anywhere in ``search:``)."""
        return is_grid(self.params())

    def grid_points(self) -> list[dict[str, Any]]:
        """The points of a grid search in their fixed order (:func:`~hiercls.tune.parameters.grid_points`):
        the searched values of each trial's config ([] when this is not a grid search)."""
        params = self.params()
        return grid_points(params) if is_grid(params) else []

    def scheduler_in_use(self) -> str:
        """``asha``, ``none`` or ``pb2``: the ``scheduler`` setting, else ``none`` for a grid search or a
        multi-objective one (ASHA ranks trials on one number), ``asha`` otherwise."""
        return self._scheduler(self.is_grid())

    def _scheduler(self, grid: bool) -> str:
        if self.scheduler is not None:
            return str(self.scheduler)
        return "none" if self.multi_objective or grid else "asha"

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
        for key in ("data_dir", "word_vectors"):  # trials run in their own folders: absolute paths
            if base.get(key) is not None:
                base[key] = str(Path(base[key]).expanduser().resolve())
        return base

    def resolved(self) -> SearchSpec:
        """A copy with absolute paths, ``scale: epochs`` bounds written out and ``num_samples`` set (a
        grid's number of points, else :data:`DEFAULT_NUM_SAMPLES` when not given): what is saved and
        compared on resume. ``scheduler`` stays as given (None: the default for the kind of search)."""
        problems: list[str] = []
        params = self.params(problems)
        if problems:
            raise SpecError(problems)
        out = dataclasses.replace(self)
        if out.num_samples is None:
            out.num_samples = grid_size(params) if is_grid(params) else DEFAULT_NUM_SAMPLES
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
        """``(problems, warnings)`` of this spec: settings out of range, unknown train keys or names,
        empty or inverted ranges, loss/schedule parameters outside the branch that selects their loss
        or schedule, an ASHA grace period not above the largest searched start epoch, a space whose
        loss terms can all be off at once, bad ``points_to_evaluate``, an unknown objective or
        scheduler; for a grid search: a distribution beside the grid, a ``num_samples`` other than the
        number of points, ``points_to_evaluate``."""
        problems: list[str] = []
        notes: list[str] = []
        param_problems: list[str] = []
        params = self.params(param_problems)
        grid = is_grid(params)
        asha = self._scheduler(grid) == "asha"
        checks = [
            ("num_samples", self.num_samples is None or (isinstance(self.num_samples, int)
                                                         and self.num_samples >= 1), ">= 1"),
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
        if asha:
            checks += [
                ("grace_period", 1 <= self.grace_period <= max(self.epochs, 1), "in 1..epochs"),
                ("reduction_factor", self.reduction_factor > 1, "> 1"),
            ]
        for key, ok, valid in checks:
            if not ok:
                problems.append(f"{key}={getattr(self, key)!r} is out of range; valid: {valid}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler={self.scheduler!r} is unknown; valid: {', '.join(SCHEDULERS)} "
                            "(default: asha for a TPE search, none for a grid search; pb2: population-based "
                            "training)")
            asha = False
        if self._scheduler(grid) == "pb2":
            problems += self._pb2_problems(params, grid)
        if self.multi_objective and grid:
            problems.append("--multi-objective with a grid search: a grid runs its fixed points once each, "
                            "NSGA-II has nothing to choose; rank the grid's (error, severity) front with "
                            "analysis.rank instead")
        elif self.multi_objective and asha:
            problems.append("scheduler='asha' with --multi-objective: ASHA ranks trials on one number and "
                            "would stop trials on the Pareto front; use scheduler: none (the default)")
        size = grid_size(params) if grid else self.num_samples
        large = isinstance(size, int) and size > MAX_SAMPLES
        if large and not self.allow_large_search:
            what = f"the grid's {size:,} points are" if grid else f"num_samples={size:,} is"
            problems.append(
                f"{what} above {MAX_SAMPLES:,}: Ray Tune keeps every trial in "
                "the driver's memory and rewrites all of them in the experiment state after every epoch of "
                "every trial; check for a typo, or pass --allow-large-search (allow_large_search: true)"
            )
        if grid:
            if self.num_samples is not None and self.num_samples != size:
                problems.append(
                    f"num_samples={self.num_samples!r} differs from the grid's {size:,} points: a grid runs "
                    f"each point exactly once (leave num_samples out, or set it to {size})"
                )
            if self.points_to_evaluate:
                problems.append("points_to_evaluate in a grid search: a grid runs its own points only; add "
                                "the point to the grid instead")
        if (asha and isinstance(self.grace_period, int) and isinstance(self.epochs, int)
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
        constraints = self.parsed_constraints(problems)
        try:
            objective = self.parsed_objective()
            # under a constraint on the error, severity alone is the question the constraint makes sensible
            if objective.metric == "val_mistake_severity" and not self.multi_objective and not constraints:
                notes.append(MISTAKE_SEVERITY_WARNING)
        except ValueError as err:
            problems.append(str(err))
        if constraints and grid:
            problems.append("constraints with a grid search: a grid runs its fixed points without Optuna; "
                            "judge them afterwards with analysis.rank --constraint")
        if any(c.relative for c in constraints) and not self.points_to_evaluate and not grid:
            problems.append("a constraint relative to 'baseline' needs points_to_evaluate: its first point "
                            "(e.g. {loss: cross-entropy}) is the baseline trial, run in full before any "
                            "other")

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

        problems += param_problems
        for p, context in iter_params(params):
            if p.name in train and not context:
                problems.append(f"search.{p.name}: also fixed under train: (remove one)")
        problems += grid_problems(params)
        problems += branch_problems(params, train)
        if asha and isinstance(self.grace_period, int):
            problems += grace_problems(self.grace_period, params, train)
        problems += all_off_problems(params, train)
        if not grid:
            problems += point_problems(self.points_to_evaluate, params)
        problems += config_problems(self.epochs, params, train)
        return _dedupe(problems), notes


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
