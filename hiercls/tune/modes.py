"""The search modes as one capability table: each searcher (what proposes the trials' values) and
scheduler (what stops or changes trials while they run) says which settings it takes, refuses (and why),
warns about, or lets pass with no effect. The searcher is ``searcher:`` when given, else the first row of
:data:`SEARCHERS` whose ``select`` holds; the scheduler is ``scheduler:``, else the searcher's first. The
spec checks (:func:`mode_problems`), the plan, the builders and ``docs/reference/modes.md`` come from these
rows: a new mode is one :class:`Mode` row (:func:`register`) and one builder. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from hiercls.config import TrainConfig
from hiercls.tune.checks import grace_problems, grid_problems
from hiercls.tune.parameters import Param, is_grid
from hiercls.value_schedule import all_variable_keys

__all__ = [
    "NO_EFFECT", "POPULATION_SETTINGS", "REFUSE", "SCHEDULERS", "SCHEDULER_SETTINGS", "SEARCHERS",
    "SEARCHER_SETTINGS", "WARN", "Mode", "Rule", "mode_problems", "population_problems", "range_problems",
    "register", "scheduler_of", "searcher_of", "unregister",
]

REFUSE, WARN, NO_EFFECT = "refused", "warned", "no effect"
"""What happens to a setting a mode does not take: refused before Ray starts (one line), accepted with a
warning printed once, or accepted silently because it is harmless (documented in the table)."""

SEARCHER_SETTINGS = ("startup_trials", "points_to_evaluate", "constraints", "optuna_storage",
                     "multi_objective")
"""The settings a searcher takes or not (each searcher row has a rule for the others)."""
SCHEDULER_SETTINGS = ("grace_period", "reduction_factor", "perturbation_interval")
"""The settings a scheduler takes or not."""
POPULATION_SETTINGS = ("pb2_time_multiplexed",)
"""Scheduler settings of a population (``Mode.population``): checked as :data:`SCHEDULER_SETTINGS` are
(taken, or a rule), listed apart because the generated table's columns are the settings every mode has."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a mode does with a setting it does not take: ``action`` (:data:`REFUSE`, :data:`WARN` or
    :data:`NO_EFFECT`) and ``why`` (the message, one line)."""

    action: str
    why: str


@dataclasses.dataclass(frozen=True)
class Mode:
    """One row of the capability table: ``name`` (what ``searcher:``/``scheduler:`` say), ``summary`` and
    ``selected_by`` (docs), ``takes`` (the settings of its kind it uses), ``rules`` (a :class:`Rule` for
    each other one; none: refused with a generic line), ``checks(spec, params) -> (problems, warnings)``
    (what only this mode needs). A scheduler with ``population`` compares its trials as one population at
    each perturbation: every member must run at once (:func:`population_problems`). Searchers also have
    ``schedulers`` (default first) and ``scheduler_rules`` (why another is refused), ``select(spec,
    params)`` (chosen without ``searcher:``), ``study`` (keeps an Optuna study) and ``trials`` (what
    ``num_samples`` counts, docs)."""

    name: str
    summary: str
    selected_by: str
    takes: tuple[str, ...] = ()
    rules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)
    schedulers: tuple[str, ...] = ()
    scheduler_rules: Mapping[str, str] = dataclasses.field(default_factory=dict)
    select: Callable[[Any, Mapping[str, Param]], bool] | None = None
    study: bool = False
    checks: Callable[[Any, Mapping[str, Param]], tuple[list[str], list[str]]] | None = None
    trials: str = "trials in all"
    population: bool = False


# ---------------------------------------------------------------------------------------------- checks
def range_problems(spec: Any, checks: list[tuple[str, bool, str]]) -> list[str]:
    """One line per ``(setting, in range, valid values)`` of ``checks`` that is out of range."""
    return [f"{key}={getattr(spec, key)!r} is out of range; valid: {valid}" for key, ok, valid in checks
            if not ok]


def _optuna_checks(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    """TPE and NSGA-II: draws, not grid entries; ``startup_trials`` >= 0; a constraint relative to the
    baseline needs the baseline point."""
    problems = range_problems(spec, [("startup_trials", spec.startup_trials >= 0, ">= 0")])
    if is_grid(params):
        problems.append(f"searcher {spec.searcher!r} draws values: a type: grid entry needs searcher grid "
                        "(leave searcher: out)")
    if any(c.relative for c in spec.parsed_constraints([])) and not spec.points_to_evaluate:
        problems.append("a constraint relative to 'baseline' needs points_to_evaluate: its first point "
                        "(e.g. {loss: cross-entropy}) is the baseline trial, run in full before any other")
    return problems, []


def _nsga2_checks(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    problems, notes = _optuna_checks(spec, params)
    if spec.objective != "val_top1_error":
        notes.append(f"--multi-objective searches (val_top1_error, val_mistake_severity); objective "
                     f"{spec.objective!r} only picks the 'best trial' line and sorts summary.csv (the table "
                     "is the Pareto front, by top-1 error)")
    return problems, notes


def _grid_checks(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    """A grid runs fixed points: no distributions, and ``num_samples`` is its number of points."""
    problems = grid_problems(params) if is_grid(params) else [
        "searcher 'grid' runs the points of type: grid entries, and search: has none"]
    size = spec.grid_count(params)
    if spec.num_samples is not None and spec.num_samples != size:
        problems.append(f"num_samples={spec.num_samples!r} differs from the grid's {size:,} points: a grid "
                        f"runs each point exactly once (leave num_samples out, or set it to {size})")
    return problems, []


def _pb2_checks(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    """PB2 changes values while trials train: one loss family, ranges of the values that may vary."""
    keys, problems, searched = all_variable_keys(), [], 0
    if is_grid(params):
        problems.append("scheduler='pb2' with a grid search: a grid runs fixed points; use ranges")
    for name, p in params.items():
        if p.kind in ("choice", "grid"):
            problems.append(f"search.{name}: scheduler pb2 searches one loss family with continuous values; "
                            f"fix {name} under train: (one PB2 search per loss)")
        elif p.kind != "fixed" and name not in keys:
            problems.append(f"search.{name}: PB2 changes only values that may vary during training "
                            f"({', '.join(keys)}); fix {name} under train:")
        elif p.kind not in ("fixed", "uniform", "loguniform"):
            problems.append(f"search.{name}: PB2 needs a range: {{type: uniform, low: ..., high: ...}} or "
                            "loguniform (it moves values within the bounds)")
        searched += p.kind in ("uniform", "loguniform")
    if not searched and not problems:
        problems.append(f"scheduler pb2 needs at least one searched range among {', '.join(keys)}")
    return problems, []


def _asha_checks(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    problems = range_problems(spec, [
        ("grace_period", 1 <= spec.grace_period <= max(spec.epochs, 1), "in 1..epochs"),
        ("reduction_factor", spec.reduction_factor > 1, "> 1"),
    ])
    notes = []
    if spec.evaluate_test:
        problems.append("evaluate_test: true with scheduler asha: ASHA stops every trial at its last "
                        "report (max_t), before its test set is scored; use scheduler: none (as "
                        "hiercls-confirm does)")
    if spec.grace_period == spec.epochs:
        notes.append(f"grace_period={spec.grace_period} equals epochs: ASHA stops no trial before its last "
                     "epoch, so every trial runs in full; lower grace_period to let ASHA stop weak trials "
                     "early")
    return problems + grace_problems(spec.grace_period, params, spec.train), notes


def _pb2_scheduler_checks(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    interval = spec.perturbation_interval
    if not isinstance(interval, int) or not 1 <= interval < max(int(spec.epochs or 1), 2):
        return [f"perturbation_interval={interval!r} is out of range; valid: 1..epochs-1 (epochs)"], []
    every = spec.train.get("checkpoint_every", TrainConfig().checkpoint_every)
    if isinstance(every, int) and every >= 1 and interval % every:
        return [f"perturbation_interval={interval} is not a multiple of train.checkpoint_every={every}: a "
                "trial continues from the checkpoint of a perturbation epoch"], []
    return [], []


# ---------------------------------------------------------------------------------------------- the table
_NO_OPTUNA = "PB2 runs without Optuna (Ray's PBT and PB2 take no search algorithm): no study, "
_ASHA_ONLY = Rule(NO_EFFECT, "ASHA's setting; with scheduler none every trial runs in full (kept so that a "
                  "space can switch to scheduler: asha)")
_PB2_ONLY = Rule(WARN, "perturbation_interval is PB2's (scheduler: pb2); it has no effect with scheduler {}")
_POPULATION_ONLY = Rule(WARN, "pb2_time_multiplexed is PB2's (scheduler: pb2); it has no effect with "
                        "scheduler {}")

SEARCHERS: dict[str, Mode] = {}
"""The searchers, in the order their ``select`` is tried."""
SCHEDULERS: dict[str, Mode] = {}


def register(mode: Mode, *, scheduler: bool = False) -> Mode:
    """Add a row to the table (a searcher, or a scheduler with ``scheduler=True``); returns it.

    Raises:
        ValueError: the name is taken.
    """
    table = SCHEDULERS if scheduler else SEARCHERS
    if mode.name in table:
        raise ValueError(f"{'scheduler' if scheduler else 'searcher'} {mode.name!r} is already registered")
    table[mode.name] = mode
    return mode


def unregister(name: str, *, scheduler: bool = False) -> None:
    """Remove a row (for tests that register a throwaway mode)."""
    (SCHEDULERS if scheduler else SEARCHERS).pop(name)


register(Mode(
    "pb2", "population-based training: values change during training (Ray Tune's PB2, no Optuna)",
    "scheduler: pb2", takes=("points_to_evaluate",), schedulers=("pb2",),
    select=lambda spec, params: spec.scheduler == "pb2",
    rules={
        "constraints": Rule(REFUSE, _NO_OPTUNA + "so no constraints; drop --constraint or use scheduler: "
                            "asha|none"),
        "multi_objective": Rule(REFUSE, _NO_OPTUNA + "so no NSGA-II; drop --multi-objective"),
        "optuna_storage": Rule(REFUSE, _NO_OPTUNA + "so nothing to keep at --optuna-storage; drop it"),
        "startup_trials": Rule(WARN, "startup_trials has no effect with PB2: its first values are drawn at "
                               "random from the ranges, later ones by its Gaussian-process bandit"),
    },
    checks=_pb2_checks, trials="members of the population (all run at once, unless pb2_time_multiplexed)",
))
register(Mode(
    "grid", "every point of the grid once, in order (Ray's basic variant generator, no Optuna)",
    "a type: grid entry in search:", schedulers=("none", "asha"), takes=("points_to_evaluate",),
    select=lambda spec, params: is_grid(params),
    rules={
        "constraints": Rule(REFUSE, "constraints with a grid search: a grid runs its fixed points without "
                            "Optuna; judge them afterwards with analysis.rank --constraint"),
        "multi_objective": Rule(REFUSE, "--multi-objective with a grid search: a grid runs its fixed points "
                                "once each, NSGA-II has nothing to choose; rank the grid's (error, severity) "
                                "front with analysis.rank instead"),
        "optuna_storage": Rule(REFUSE, "--optuna-storage with a grid search: a grid runs without Optuna, so "
                               "there is no study to keep; drop it"),
        "startup_trials": Rule(WARN, "startup_trials has no effect in a grid search: every point runs once, "
                               "in order"),
    },
    checks=_grid_checks, trials="the grid's points (given or not: each runs once)",
))
register(Mode(
    "nsga2", "Optuna's NSGA-II on (val_top1_error, val_mistake_severity): a Pareto front",
    "--multi-objective", takes=("points_to_evaluate", "constraints", "optuna_storage", "multi_objective"),
    schedulers=("none",), select=lambda spec, params: bool(spec.multi_objective), study=True,
    scheduler_rules={"asha": "scheduler='asha' with --multi-objective: ASHA ranks trials on one number and "
                             "would stop trials on the Pareto front; use scheduler: none (the default)"},
    rules={"startup_trials": Rule(WARN, "startup_trials is TPE's; NSGA-II draws its whole first generation "
                                  "at random")},
    checks=_nsga2_checks,
))
register(Mode(
    "tpe", "Optuna's TPE, seeded and define-by-run (a trial has only its branch's parameters)",
    "the default", takes=("startup_trials", "points_to_evaluate", "constraints", "optuna_storage"),
    schedulers=("asha", "none"), select=lambda spec, params: True, study=True,
    rules={"multi_objective": Rule(REFUSE, "--multi-objective searches with NSGA-II (searcher nsga2); "
                                   "leave out searcher: tpe")},
    checks=_optuna_checks,
))
register(Mode(
    "asha", "ASHA stops weak trials at its rungs (time_attr epoch, max_t epochs)",
    "the default of TPE", takes=("grace_period", "reduction_factor"),
    rules={"perturbation_interval": _PB2_ONLY, "pb2_time_multiplexed": _POPULATION_ONLY},
    checks=_asha_checks,
), scheduler=True)
register(Mode(
    "none", "every trial runs its full length", "the default of a grid and of NSGA-II",
    rules={"grace_period": _ASHA_ONLY, "reduction_factor": _ASHA_ONLY,
           "perturbation_interval": _PB2_ONLY, "pb2_time_multiplexed": _POPULATION_ONLY},
), scheduler=True)
register(Mode(
    "pb2", "every perturbation_interval epochs the lowest quarter continues from the best quarter's "
    "checkpoints with new values (synchronous; every member runs at once, or with pb2_time_multiplexed "
    "Ray pauses members at each perturbation epoch and runs the others)", "scheduler: pb2",
    takes=("perturbation_interval", "pb2_time_multiplexed"), population=True,
    rules={key: Rule(WARN, f"{key} has no effect with PB2: it stops no trial, it compares the population "
                     "every perturbation_interval epochs") for key in ("grace_period", "reduction_factor")},
    checks=_pb2_scheduler_checks,
), scheduler=True)

SCHEDULER_HELP = "(default: asha for a TPE search, none for a grid search; pb2: population-based training)"


# ---------------------------------------------------------------------------------------------- choosing
def searcher_of(spec: Any, params: Mapping[str, Param]) -> Mode | None:
    """The searcher row of ``spec``: its ``searcher`` setting, else the first row whose ``select`` holds
    (None for an unknown ``searcher``)."""
    if spec.searcher is not None:
        return SEARCHERS.get(spec.searcher)
    return next(m for m in SEARCHERS.values() if m.select is not None and m.select(spec, params))


def scheduler_of(spec: Any, searcher: Mode) -> Mode | None:
    """The scheduler row: ``scheduler`` when given, else the searcher's default (None when unknown)."""
    return SCHEDULERS.get(spec.scheduler or searcher.schedulers[0])


def _given_rules(spec: Any, mode: Mode, settings: tuple[str, ...], kind: str) -> list[tuple[str, str]]:
    """(action, message) for each setting of ``settings`` given in ``spec`` that ``mode`` does not take."""
    out = []
    for key in settings:
        if key in mode.takes or key not in spec.given or not getattr(spec, key):
            continue
        rule = mode.rules.get(key, Rule(REFUSE, f"{key}: {kind} {mode.name} does not use it; drop it"))
        out.append((rule.action, rule.why.format(mode.name)))
    return out


def mode_problems(spec: Any, params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of ``spec``'s searcher and scheduler: unknown names, a scheduler the
    searcher does not run with, settings given that the modes do not take (:class:`Rule`), and each
    mode's own checks."""
    searcher = searcher_of(spec, params)
    if searcher is None:
        return [f"searcher={spec.searcher!r} is unknown; valid: {', '.join(SEARCHERS)}"], []
    scheduler = scheduler_of(spec, searcher)
    if scheduler is None:
        return [f"scheduler={spec.scheduler!r} is unknown; valid: {', '.join(SCHEDULERS)} "
                f"{SCHEDULER_HELP}"], []
    problems, notes = [], []
    if scheduler.name not in searcher.schedulers:
        problems.append(searcher.scheduler_rules.get(scheduler.name) or (
            f"scheduler={scheduler.name!r} with searcher {searcher.name}: it runs with "
            f"{' or '.join(searcher.schedulers)}"))
    for action, message in (_given_rules(spec, searcher, SEARCHER_SETTINGS, "searcher")
                            + _given_rules(spec, scheduler, SCHEDULER_SETTINGS + POPULATION_SETTINGS,
                                           "scheduler")):
        if action == REFUSE:
            problems.append(message)
        elif action == WARN:
            notes.append(message)
    for mode in (searcher, scheduler):
        if mode.checks is not None:
            more, more_notes = mode.checks(spec, params)
            problems += more
            notes += more_notes
    return problems, notes


def population_problems(spec: Any, members: int, capacity: int | None = None,
                        per_trial: str = "") -> list[str]:
    """Why a population of ``members`` (a scheduler with ``population``: PB2) cannot run at once: a
    ``max_concurrent`` below it (decided in the plan), or a cluster that runs ``capacity`` trials of
    ``per_trial`` (e.g. ``2 CPU, 0 GPU a trial``) at once (known once Ray runs), unless
    ``pb2_time_multiplexed``; a ``max_concurrent`` below it even then (Ray's PB2 starts every member, so
    nothing would hold them to it). [] when none."""
    limit, multiplexed = spec.max_concurrent, bool(spec.pb2_time_multiplexed)
    alike = "PB2 compares only members that run side by side, so"
    if limit is not None and limit < members and multiplexed:
        return [f"max_concurrent={limit} with pb2_time_multiplexed: true: Ray's PB2 starts all {members} "
                "members and runs as many as the cluster fits, so max_concurrent cannot hold them to "
                f"{limit}; valid: max_concurrent auto (or >= {members}), and more --cpus-per-trial / "
                "--gpus-per-trial for fewer at once"]
    if limit is not None and limit < members:
        return [f"num_samples={members} PB2 members but max_concurrent={limit}: {alike} "
                f"{_members(limit + 1, members)} would start as others end and never continue from another's "
                f"checkpoint; valid: max_concurrent >= {members} or auto, {_fewer(limit)}or max_concurrent "
                f"auto with {_MULTIPLEXED}"]
    if capacity is not None and capacity < members and not multiplexed:
        return [f"num_samples={members} PB2 members but the cluster runs {capacity} at once ({per_trial}): "
                f"{alike} {_members(capacity + 1, members)} could not run beside the others; valid: "
                f"{_fewer(capacity)}"
                f"fewer --cpus-per-trial / --gpus-per-trial, a larger cluster, or {_MULTIPLEXED}"]
    return []


def _members(first: int, last: int) -> str:
    """``members 5-8``, or ``member 3`` for one."""
    return f"member {last}" if first == last else f"members {first}-{last}"


def _fewer(slots: int) -> str:
    """Fewer members as a way on, when that still leaves a population (two or more)."""
    return f"fewer members (--num-samples {slots}), " if slots >= 2 else ""


_MULTIPLEXED = ("pb2_time_multiplexed: true (--pb2-time-multiplexed: all members start, and Ray pauses "
                "members at each perturbation epoch to run the others)")
