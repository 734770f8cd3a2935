"""The Ray and Optuna objects hiercls makes itself: a define-by-run space (a trial with ``loss:
soft-labels`` has ``beta`` and no ``alpha``: TPE models no parameter that had no effect), the Optuna
searcher (ask-and-tell in a Ray ``Searcher``), NSGA-II that pickles, PB2 that never perturbs after the
last epoch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import pickle
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator, Searcher, SearchGenerator

from hiercls.experiment.layout import TRIAL_INDEX
from hiercls.experiment.parts import GROW_PREFIX
from hiercls.experiment.study import STUDY_FILE, recover_journal
from hiercls.tune.constraints import Constraint, constraint_values, merge_bounds, write_bounds
from hiercls.tune.parameters import Param

__all__ = ["TRIAL_INDEX", "DefineByRun", "PB2UntilLastEpoch", "PicklableNSGAIISampler",
           "RelocatingSearchGenerator", "RelocatingVariantGenerator", "SearchAlgorithm", "restore_target",
           "restoring_into"]


log = logging.getLogger("hiercls.tune")


class DefineByRun:
    """Callable ``space(trial)`` for :class:`SearchAlgorithm`: suggests every active parameter, returns the
    fixed values of the drawn branches. Picklable (the searcher's state is saved with the experiment)."""

    def __init__(self, params: Mapping[str, Param]) -> None:
        self.params = dict(params)

    def __call__(self, trial: Any) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        _suggest(trial, self.params, fixed)
        # Optuna's trial number: the order of the suggestion, stable across runs (trial ids are random)
        fixed[TRIAL_INDEX] = int(trial.number)
        return fixed


def _suggest(trial: Any, params: Mapping[str, Param], fixed: dict[str, Any]) -> None:
    for name, p in params.items():
        if p.kind == "fixed":
            fixed[name] = p.value
            continue
        if p.kind == "choice":
            value = trial.suggest_categorical(name, list(p.values))
            if p.branches is not None:
                _suggest(trial, p.branches[value], fixed)
        elif p.kind == "int":
            trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            trial.suggest_float(name, p.low, p.high, log=p.kind == "loguniform")


def _is_nan(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_is_nan(v) for v in value)
    return isinstance(value, float) and math.isnan(value)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler that survives pickling: Ray pickles the search algorithm with the Tuner
    and in its searcher state, and Optuna 5's genetic-algorithm samplers hold a ``threading.Lock``
    (``_thread_lock``) that cannot be pickled; it is left out and made anew on unpickling."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class PB2UntilLastEpoch(PB2):
    """Ray Tune's PB2 on the ``epoch`` of each result that does not perturb after a trial's last epoch
    (``last_epoch``): synchronous PB2 would otherwise hand the lowest quarter a donor's finished model with
    new values that never train, and those trials would end with another trial's results."""

    def __init__(self, *, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(time_attr="epoch", **kwargs)
        self._last_epoch = int(last_epoch)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("epoch", 0) >= self._last_epoch:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class SearchAlgorithm(Searcher):
    """A Ray Tune searcher over Optuna's ask-and-tell API (public, but for ``FrozenTrial._trial_id``, which
    rebuilds the trials still running when a search resumes: :mod:`hiercls.tune.contracts`).

    * ``points_to_evaluate`` are enqueued and asked first; every epoch's objective is an intermediate value;
      each trial carries the user attributes ``ray_trial_id`` and ``trial_folder``.
    * An error or a NaN is told FAIL (kept out of TPE's and NSGA-II's models); a trial that ended before
      ``max_epochs`` without an error (ASHA stopped it) PRUNED; the others COMPLETE.
    * Constraints (:mod:`hiercls.tune.constraints`): a trial that ran in full gets ``value - bound`` per
      bounded metric with ``Trial.set_constraint`` before it is told. A bound relative to ``baseline`` waits
      for the first trial (the first point): nothing else is suggested until it ran in full; its values fix
      the bounds (``constraints.json``, the study's ``constraint_bounds``); if it fails, the search ends.
    * :meth:`restore` (a resume) reopens the study in the restored folder's journal when there is one (a
      copied experiment writes its own) and tells FAIL the trials left RUNNING by a killed driver.

    ``metric``/``mode`` are lists for a multi-objective search; ``max_epochs``: a trial's full length under
    ASHA (None: never PRUNED), ``full_epochs`` for the constraints; ``bounds``: fixed earlier (a growth's).
    """

    STATE_VERSION = 2
    # defaults for a searcher pickled by an earlier version (tuner.pkl holds the instance)
    _constraints: list[Constraint] = []  # noqa: RUF012 - never mutated
    _bounds: dict[str, float] | None = None
    _baseline_trial: str | None = None
    _baseline_failed: str | None = None
    _full_epochs: int | None = None

    def __init__(self, space: DefineByRun, metric: str | list[str], mode: str | list[str], *,
                 points_to_evaluate: Sequence[Mapping[str, Any]] | None = None, sampler: Any = None,
                 storage: Any = None, study_name: str | None = None, max_epochs: int | None = None,
                 experiment_dir: str | None = None, constraints: Sequence[Constraint] = (),
                 full_epochs: int | None = None, bounds: Mapping[str, float] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._sampler = sampler if sampler is not None else optuna.samplers.TPESampler()
        self._storage = storage
        self._study_name = study_name or "optuna"
        self._max_epochs = max_epochs
        self._experiment_dir = experiment_dir
        self._constraints = list(constraints)
        self._full_epochs = full_epochs if full_epochs is not None else max_epochs
        relative = any(c.relative for c in self._constraints)
        self._bounds: dict[str, float] | None = (
            dict(bounds) if bounds else
            None if relative or not self._constraints else merge_bounds(self._constraints, None))
        self._baseline_trial: str | None = None
        self._baseline_failed: str | None = None
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._done: set[str] = set()
        self._steps: dict[str, list[int]] = {}  # the steps reported as intermediate values
        one = isinstance(mode, str)
        directions = ["minimize" if m == "min" else "maximize" for m in ([mode] if one else mode)]
        self._study = optuna.create_study(
            storage=self._opened_storage(), sampler=self._sampler, pruner=optuna.pruners.NopPruner(),
            study_name=self._study_name, load_if_exists=True,
            **({"direction": directions[0]} if one else {"directions": directions}))
        for point in points_to_evaluate or []:
            self._study.enqueue_trial(dict(point))
        self._trials: dict[str, optuna.Trial] = {}

    @property
    def waiting_for_baseline(self) -> bool:
        """Whether trials are held back until the baseline trial has finished."""
        return bool(self._constraints) and self._bounds is None and self._baseline_failed is None

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return False  # the space, metric and mode were given when it was made

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._baseline_failed is not None:
            return Searcher.FINISHED
        if self.waiting_for_baseline and self._baseline_trial is not None:
            return None  # asked again once the baseline has finished
        new = trial_id not in self._trials
        trial = self._trials[trial_id] = self._trials.get(trial_id) or self._study.ask()
        fixed = self._space(trial)
        if self.waiting_for_baseline:
            self._baseline_trial = trial_id
        if new:
            self._numbers[trial_id] = trial.number
            trial.set_user_attr("ray_trial_id", trial_id)
            if self._experiment_dir is not None:  # relative: the experiment may be copied or moved
                part = Path(self._experiment_dir).name
                prefix = f"{part}/" if part.startswith(GROW_PREFIX) else ""
                trial.set_user_attr("trial_folder", f"{prefix}trial_{trial_id}")
        return {**trial.params, **fixed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._done or trial_id not in self._trials:
            return  # Optuna keeps no intermediate values of a multi-objective study
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """The result's objective as the intermediate value of its step (once per step, never NaN)."""
        step, value = result.get("training_iteration"), result.get(self.metric)
        steps = self._steps.setdefault(trial_id, [])
        number = isinstance(value, (int, float)) and not _is_nan(value)
        if isinstance(step, int) and number and step not in steps:
            with warnings.catch_warnings():  # a step reported before the last save: Optuna keeps the first
                warnings.filterwarnings("ignore", message=".*is already reported", category=UserWarning)
                self._trials[trial_id].report(float(value), step)
            steps.append(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id == self._baseline_trial and self.waiting_for_baseline:
            self._fix_bounds(result, error)
        if trial_id in self._done or trial_id not in self._trials:
            return
        self._done.add(trial_id)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(m) for m in metrics] if result else None
        if values is not None and not isinstance(self.metric, list) and not _is_nan(values):
            self._report(trial_id, result)  # Ray passes the result that ends a trial here only
        state = self._state(result, values, error)
        if state == TrialState.COMPLETE and self._bounds is not None and self._ran_in_full(result):
            for metric, value in (constraint_values(result, self._bounds) or {}).items():
                self._trials[trial_id].set_constraint(metric, value)
        single = not isinstance(self.metric, list)
        told = None if state != TrialState.COMPLETE else values[0] if single else values
        try:
            self._study.tell(self._trials[trial_id], told, state=state)
        except Exception as exc:  # noqa: BLE001 - Optuna's own refusals are only logged, as in Ray
            log.warning("optuna refused the %s trial %s: %s", state.name.lower(), trial_id, exc)

    def _state(self, result: Mapping[str, Any] | None, values: list[Any] | None, error: bool) -> TrialState:
        """FAIL for an error or a NaN, PRUNED for no value or an early stop (ASHA), else COMPLETE."""
        if error or (values is not None and _is_nan(values)):
            return TrialState.FAIL
        if values is None or None in values or self._stopped_early(result):
            return TrialState.PRUNED
        return TrialState.COMPLETE

    # ------------------------------------------------------------------ save and restore
    def __getstate__(self) -> dict[str, Any]:
        """Pickled (in ``tuner.pkl``) without the open study: a journal is reopened in the folder the
        experiment is restored from (:func:`restoring_into`), so a copy never writes into the original's."""
        state = dict(self.__dict__)
        if state.get("_storage") is None or isinstance(state["_storage"], JournalStorage):
            state["_storage"] = None
        state.update(_study=None, _trials={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self._storage, JournalStorage):  # pickled by an earlier version: the original's file
            self._storage = None
        target = restore_target()
        if target is not None and self._experiment_dir is not None:
            self._experiment_dir = str(target)

    def _opened_storage(self) -> Any:
        """The study's storage: the URL's database, else the journal of the experiment this searcher's part
        belongs to (in ``experiment_dir``, or its parent for a ``grow-<k>`` part)."""
        if self._storage is None and self._experiment_dir is not None:
            folder = Path(self._experiment_dir)
            root = folder.parent if folder.name.startswith(GROW_PREFIX) else folder
            self._storage = JournalStorage(JournalFileBackend(str(root / STUDY_FILE)))
        return self._storage

    def save(self, checkpoint_path: str) -> None:
        state = {"version": self.STATE_VERSION, "numbers": self._numbers, "done": sorted(self._done),
                 "steps": self._steps, "sampler": self._sampler, "bounds": self._bounds,
                 "baseline_trial": self._baseline_trial, "baseline_failed": self._baseline_failed}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Continue from the state :meth:`save` (or Ray's ``OptunaSearch``) wrote at ``checkpoint_path``; a
        torn last record of the study's journal (in ``experiment_dir``) is dropped before the study is
        opened (:func:`hiercls.experiment.study.recover_journal`).

        Raises:
            JournalError: the journal is garbled before its last line (a resume refuses it before Ray).
            StorageError: a torn journal could not be rewritten (no space, read-only).
        """
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)  # noqa: S301 - the experiment's own file, in its signed manifest
        if state.get("version") != self.STATE_VERSION:
            state = _state_of_optuna_search(state)
        self._numbers, self._done = dict(state["numbers"]), set(state["done"])
        self._steps = {k: list(v) for k, v in state["steps"].items()}
        self._sampler, self._bounds = state["sampler"], state["bounds"]
        self._baseline_trial, self._baseline_failed = state["baseline_trial"], state["baseline_failed"]
        # the journal _opened_storage reads; a torn record dropped before anything is appended after it
        recover_journal(self._experiment_dir or Path(checkpoint_path).parent)
        self._study = optuna.load_study(study_name=self._study_name, storage=self._opened_storage(),
                                        sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        continued = {n for tid, n in self._numbers.items() if tid not in self._done}
        by_number = {t.number: t for t in self._study.get_trials(deepcopy=False) if t.number in continued}
        self._trials = {tid: optuna.trial.Trial(self._study, by_number[n]._trial_id)
                        for tid, n in self._numbers.items() if n in by_number}
        for frozen in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in continued:  # started after Ray's last save: Ray will not run it again
                self._study.tell(frozen.number, state=TrialState.FAIL)
                self._study.enqueue_trial(dict(frozen.params), user_attrs={"rerun_of": frozen.number})
                log.warning("optuna trial %d was left running by a stopped driver before Ray saved it: "
                            "marked failed, and its values run again as a new trial", frozen.number)
        if self._baseline_trial is not None and self._baseline_trial not in self._numbers:
            self._baseline_trial = None  # the baseline was such a trial: its rerun is the baseline

    # ------------------------------------------------------------------ constraints
    def _ran_in_full(self, result: Mapping[str, Any] | None) -> bool:
        epoch = (result or {}).get("epoch")
        return self._full_epochs is None or (isinstance(epoch, (int, float)) and epoch >= self._full_epochs)

    def _fix_bounds(self, result: Mapping[str, Any] | None, error: bool) -> None:
        """The baseline trial ended: fix the bounds from its last result, or end the search."""
        metrics = {c.metric for c in self._constraints}
        values = {m: (result or {}).get(m) for m in metrics}
        problem = None
        if error or not result:
            problem = "it errored"
        elif not self._ran_in_full(result):
            problem = f"it stopped after epoch {result.get('epoch')}"
        elif any(not isinstance(v, (int, float)) or _is_nan(float(v)) for v in values.values()):
            problem = "its result is not finite"
        if problem is not None:
            self._baseline_failed = (f"the baseline trial {self._baseline_trial} did not finish ({problem}): "
                                     "the constraints relative to it have no bound; no further trials start")
            log.error(self._baseline_failed)
            return
        baseline = {m: float(v) for m, v in values.items()}
        self._bounds = merge_bounds(self._constraints, baseline)
        record = {"trial_id": self._baseline_trial, "values": baseline}
        self._study.set_user_attr("constraint_bounds", self._bounds)
        self._study.set_user_attr("constraint_baseline", record)
        if self._experiment_dir is not None:
            write_bounds(self._experiment_dir, self._constraints, self._bounds, record)
        log.warning("baseline trial %s finished: constraint bounds %s", self._baseline_trial,
                    ", ".join(f"{m} <= {b:.6g}" for m, b in self._bounds.items()))

    def _stopped_early(self, result: Mapping[str, Any] | None) -> bool:
        epoch = (result or {}).get("epoch")
        return (self._max_epochs is not None and not isinstance(self.metric, list)
                and isinstance(epoch, (int, float)) and epoch < self._max_epochs)


def _state_of_optuna_search(old: Mapping[str, Any]) -> dict[str, Any]:
    """The saved state of an experiment started before hiercls ran Optuna through its own searcher (Ray's
    ``OptunaSearch``, whose ``__dict__`` was pickled) in today's form."""
    return {
        "numbers": {tid: t.number for tid, t in old["_ot_trials"].items()},
        "done": set(old.get("_completed_trials", ())), "steps": {}, "sampler": old["_sampler"],
        "bounds": old.get("_bounds"), "baseline_trial": old.get("_baseline_trial"),
        "baseline_failed": old.get("_baseline_failed"),
    }


# ---------------------------------------------------------------------------------------------- relocation
_RESTORING: list[Path] = []  # the part folder Ray restores now (innermost last)


@contextlib.contextmanager
def restoring_into(folder: str | Path) -> Iterator[None]:
    """While Ray restores (and runs) the experiment part in ``folder``: new trials and the searcher's study
    live there, whatever folder the saved state names (an experiment copied or moved since)."""
    _RESTORING.append(Path(folder))
    try:
        yield
    finally:
        _RESTORING.pop()


def restore_target() -> Path | None:
    """The folder :func:`restoring_into` names now, or None."""
    return _RESTORING[-1] if _RESTORING else None


def _in_place(trial: Any) -> Any:
    """``trial`` (new, made from the saved experiment's spec) with its storage in the restored folder, as
    Ray's controller moves the trials it restores (``Trial.set_storage``): Ray's saved search generator
    keeps the experiment's spec, storage path included, from where the search started."""
    target = restore_target()
    storage = getattr(trial, "storage", None)
    if trial is None or target is None or storage is None:
        return trial
    if Path(storage.storage_fs_path) != target.parent or storage.experiment_dir_name != target.name:
        moved = copy.copy(storage)
        moved.storage_fs_path, moved.experiment_dir_name = str(target.parent), target.name
        trial.set_storage(moved)
    return trial


class RelocatingSearchGenerator(SearchGenerator):
    """Ray's generator over a :class:`~ray.tune.search.Searcher` whose new trials live where the experiment
    is restored from (:func:`restoring_into`), not where it started."""

    def next_trial(self) -> Any:
        return _in_place(super().next_trial())


class RelocatingVariantGenerator(BasicVariantGenerator):
    """Ray's variant generator (grid, PB2's population) whose new trials live where the experiment is
    restored from (:func:`restoring_into`), not where it started."""

    def next_trial(self) -> Any:
        return _in_place(super().next_trial())
