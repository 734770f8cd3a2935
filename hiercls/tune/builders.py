"""One small builder per searcher and per scheduler of the capability table (:mod:`hiercls.tune.modes`),
registered under its row's name, and the ``Tuner`` of a new Ray experiment built from a
:class:`~hiercls.tune.plan.SearchPlan`. The Tuner's own ``metric`` and ``mode`` stay unset (the searcher
and the scheduler get them), so Ray's console shows no "Current best trial", which would ignore the
constraints: the best trial a user sees is hiercls's (:func:`hiercls.tune.runner.format_table`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from hiercls.experiment.layout import TRIAL_INDEX, log_key
from hiercls.experiment.parts import Part
from hiercls.experiment.study import open_storage
from hiercls.tune.objective import MULTI_METRICS
from hiercls.tune.plan import SearchPlan
from hiercls.tune.space import (
    DefineByRun,
    PB2UntilLastEpoch,
    PicklableNSGAIISampler,
    RelocatingSearchGenerator,
    RelocatingVariantGenerator,
    SearchAlgorithm,
)

__all__ = [
    "SCHEDULER_BUILDERS", "SEARCHER_BUILDERS", "Built", "grid_param_space", "new_tuner", "pb2_bounds",
    "pb2_param_space", "scheduler_builder", "searcher_builder", "trial_dirname",
]

OBJECTIVE = "objective"
"""The report key every single-objective searcher and scheduler minimises (the trainables report it)."""


class Built(NamedTuple):
    """What a searcher builder gives the Tuner: ``search_alg``, ``param_space`` (None: the searcher's own
    space) and ``num_samples`` (Tune's: a grid's one sample of its grid)."""

    search_alg: Any
    param_space: dict[str, Any] | None
    num_samples: int


SEARCHER_BUILDERS: dict[str, Callable[[SearchPlan, Part], Built]] = {}
SCHEDULER_BUILDERS: dict[str, Callable[[SearchPlan], Any]] = {}


def _registrar(table: dict[str, Callable], kind: str) -> Callable[[str], Callable]:
    def builder(name: str) -> Callable:
        def register(fn: Callable) -> Callable:
            if name in table:
                raise ValueError(f"a builder of {kind} {name!r} is already registered")
            table[name] = fn
            return fn
        return register
    return builder


searcher_builder = _registrar(SEARCHER_BUILDERS, "searcher")
"""``@searcher_builder(name)`` registers ``fn(plan, part) -> Built`` for searcher ``name``."""
scheduler_builder = _registrar(SCHEDULER_BUILDERS, "scheduler")
"""``@scheduler_builder(name)`` registers ``fn(plan) -> scheduler or None`` for scheduler ``name``."""


# ---------------------------------------------------------------------------------------------- searchers
def _optuna(plan: SearchPlan, part: Part, sampler: Any, metric: Any, mode: Any,
            max_epochs: int | None) -> Built:
    """An Optuna searcher over the search's study (the experiment's journal or ``--optuna-storage``),
    ``points_to_evaluate`` first, under the concurrency limit."""
    spec = plan.spec
    searcher = SearchAlgorithm(
        DefineByRun(plan.params), metric, mode, points_to_evaluate=plan.points(part), sampler=sampler,
        storage=open_storage(spec.experiment_dir, spec.optuna_storage), study_name=spec.name,
        experiment_dir=str(part.folder), max_epochs=max_epochs, constraints=plan.constraints,
        full_epochs=spec.epochs, bounds=plan.bounds if part is plan.grow else None,
    )
    limited = ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)
    return Built(RelocatingSearchGenerator(limited), None, part.num_samples)


@searcher_builder("tpe")
def tpe(plan: SearchPlan, part: Part) -> Built:
    """TPE (seeded, ``startup_trials`` random first) over the study; PRUNED for an ASHA stop."""
    sampler = optuna.samplers.TPESampler(seed=plan.sampler_seed(part),
                                         n_startup_trials=plan.spec.startup_trials)
    max_epochs = plan.spec.epochs if plan.scheduler.name == "asha" else None
    return _optuna(plan, part, sampler, OBJECTIVE, "min", max_epochs)


@searcher_builder("nsga2")
def nsga2(plan: SearchPlan, part: Part) -> Built:
    """NSGA-II (seeded) on (val_top1_error, val_mistake_severity) over the study."""
    sampler = PicklableNSGAIISampler(seed=plan.sampler_seed(part))
    return _optuna(plan, part, sampler, list(MULTI_METRICS), ["min", "min"], None)


def grid_param_space(plan_or_spec: Any) -> dict[str, Any]:
    """The Tuner's param space of a grid search: ``tune.grid_search`` over the list of points, each the
    whole config of one trial (its searched values and its :data:`~hiercls.experiment.layout.TRIAL_INDEX`,
    the point's position; with ``points_to_evaluate``, each configuration at every point of the grid:
    :meth:`~hiercls.tune.spec.SearchSpec.grid_points`). Ray's variant generator resolves the grid at the
    root of the config, so a trial's config is exactly its point: flat, with only its branch's keys (as a
    TPE trial's)."""
    spec = plan_or_spec.spec if isinstance(plan_or_spec, SearchPlan) else plan_or_spec
    return tune.grid_search([{**point, TRIAL_INDEX: i} for i, point in enumerate(spec.grid_points())])


@searcher_builder("grid")
def grid(plan: SearchPlan, part: Part) -> Built:
    """Each point of the grid once: one grid over the points, one sample of it."""
    generator = RelocatingVariantGenerator(max_concurrent=plan.max_concurrent or 0)
    return Built(generator, grid_param_space(plan), 1)


def pb2_param_space(plan: SearchPlan) -> dict[str, Any]:
    """The Tuner's param space of a PB2 search: each searched key drawn from its range, a ``loguniform``
    one as the uniform draw of its logarithm under :func:`~hiercls.experiment.layout.log_key` (the same draw
    as ``tune.loguniform``), fixed keys as they are."""
    bounds, space = pb2_bounds(plan), {}
    for name, p in plan.params.items():
        key = _pb2_key(name, p.kind)
        space[key] = p.value if p.kind == "fixed" else tune.uniform(*bounds[key])
    return space


def pb2_bounds(plan: SearchPlan) -> dict[str, tuple[float, float]]:
    """PB2's ``hyperparam_bounds``: ``(low, high)`` of each searched key; a ``loguniform`` key's in log10
    space (``log10(lr)``), so PB2 moves it in log space (and symmetric steps there are ratios of the
    value)."""
    out = {}
    for name, p in plan.params.items():
        if p.kind == "loguniform":
            # as tune.loguniform computes them, so the first values are its draws
            out[log_key(name)] = (float(np.log(p.low) / np.log(10)), float(np.log(p.high) / np.log(10)))
        elif p.kind == "uniform":
            out[name] = (float(p.low), float(p.high))
    return out


def _pb2_key(name: str, kind: str) -> str:
    return log_key(name) if kind == "loguniform" else name


@searcher_builder("pb2")
def pb2_population(plan: SearchPlan, part: Part) -> Built:
    """The first values from Ray's generator (PBT and PB2 take no search algorithm), points first; a
    point's loguniform value under its log key, as the param space has it. Every member is created at
    once (no generator limit): PB2 compares the trials that exist, so a limit would leave later members
    out of every comparison. The plan refused a ``max_concurrent`` and the runner a cluster that cannot run
    them all at once, unless ``pb2_time_multiplexed`` (then Ray runs as many as fit and takes turns)."""
    kinds = {name: p.kind for name, p in plan.params.items()}
    points = [{_pb2_key(k, kinds.get(k, "")): math.log10(v) if kinds.get(k) == "loguniform" else v
               for k, v in point.items()} for point in plan.points(part) or []]
    generator = RelocatingVariantGenerator(max_concurrent=0, points_to_evaluate=points or None)
    return Built(generator, pb2_param_space(plan), part.num_samples)


# ---------------------------------------------------------------------------------------------- schedulers
@scheduler_builder("asha")
def asha(plan: SearchPlan) -> Any:
    """ASHA on the ``epoch`` of each report, up to ``epochs``."""
    spec = plan.spec
    return ASHAScheduler(time_attr="epoch", metric=OBJECTIVE, mode="min", max_t=spec.epochs,
                         grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


@scheduler_builder("none")
def no_scheduler(plan: SearchPlan) -> None:
    """No scheduler: every trial runs its full length."""
    return None


@scheduler_builder("pb2")
def pb2(plan: SearchPlan) -> Any:
    """Synchronous PB2: every perturbation epoch the whole population is compared (the lowest quarter
    continues from the best quarter's checkpoints), not whichever trials happen to have reported."""
    return PB2UntilLastEpoch(
        metric=OBJECTIVE, mode="min",
        perturbation_interval=plan.spec.perturbation_interval, synch=True, last_epoch=plan.spec.epochs,
        hyperparam_bounds={k: list(v) for k, v in pb2_bounds(plan).items()},
    )


# ---------------------------------------------------------------------------------------------- the tuner
def trial_dirname(trial: Any) -> str:
    """``trial_<id>``: short folder names (Ray's default spells out every parameter)."""
    return f"trial_{trial.trial_id}"


def new_tuner(plan: SearchPlan, part: Part, runnable: Any, callbacks: Sequence[Any] = (),
              filesystem: Any = None) -> tune.Tuner:
    """The Tuner of ``part`` (the experiment itself, or a growth's ``grow-k``): the plan's searcher and
    scheduler, trial folders ``trial_<id>``, one checkpoint kept per trial (under PB2
    ``perturbation_interval + 1``: a donor saves at most one checkpoint an epoch until the next
    synchronous perturbation, which waits for its recipient, so the checkpoint it gave is still there when
    the recipient restores it; with fewer, a recipient slower to start than the donor's next epochs found
    it deleted and errored)."""
    built = SEARCHER_BUILDERS[plan.searcher.name](plan, part)
    tune_config = tune.TuneConfig(
        search_alg=built.search_alg, scheduler=SCHEDULER_BUILDERS[plan.scheduler.name](plan),
        num_samples=built.num_samples, trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=part.name, storage_path=str(part.folder.parent), storage_filesystem=filesystem,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=plan.spec.perturbation_interval + 1 if plan.scheduler.name == "pb2" else 1),
        failure_config=tune.FailureConfig(max_failures=plan.spec.max_failures),
        verbose=1, callbacks=list(callbacks) or None,
    )
    return tune.Tuner(runnable, param_space=built.param_space, tune_config=tune_config, run_config=run_config)
