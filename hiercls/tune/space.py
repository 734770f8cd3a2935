"""The search space for Optuna: a define-by-run function built from parsed :class:`Param` trees, and the
OptunaSearch variant used by the runner.

Define-by-run lets a branch's parameters exist only when its value is drawn: a trial with
``loss: soft-labels`` has ``beta`` in its config and no ``alpha`` (a static space would draw both and
have TPE model a parameter that had no effect).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search.optuna import OptunaSearch

from hiercls.tune.constraints import Constraint, constraint_values, merge_bounds
from hiercls.tune.layout import TRIAL_INDEX
from hiercls.tune.spec import Param

__all__ = ["TRIAL_INDEX", "DefineByRun", "PB2UntilLastEpoch", "PicklableNSGAIISampler", "SearchAlgorithm",
           "draw"]


log = logging.getLogger("hiercls.tune")


class DefineByRun:
    """Callable ``space(trial)`` for OptunaSearch: suggests every active parameter, returns the fixed
    values of the drawn branches. Picklable (the searcher's state is saved with the experiment)."""

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


def draw(params: Mapping[str, Param], rng: Any) -> dict[str, Any]:
    """One random configuration (``rng``: a ``random.Random``), the same shape as a trial's config."""
    out: dict[str, Any] = {}
    for name, p in params.items():
        if p.kind == "fixed":
            out[name] = p.value
        elif p.kind in ("choice", "grid"):
            value = rng.choice(list(p.values))
            out[name] = value
            if p.branches is not None:
                out.update(draw(p.branches[value], rng))
        elif p.kind == "int":
            out[name] = rng.randint(int(p.low), int(p.high))
        elif p.kind == "loguniform":
            out[name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
        else:
            out[name] = rng.uniform(p.low, p.high)
    return out


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
    """Ray Tune's PB2 that does not perturb after a trial's last epoch (``last_epoch``): synchronous PB2
    would otherwise hand the lowest quarter a donor's finished model with new values that never train,
    and those trials would end with another trial's results under their own values."""

    def __init__(self, *args: Any, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_epoch = int(last_epoch)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._last_epoch:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class SearchAlgorithm(OptunaSearch):
    """OptunaSearch that tells Optuna what happened to each trial, in a study kept in storage.

    * An errored trial is told as FAIL (Ray tells its last value as COMPLETE). A NaN result is told as
      FAIL too: Ray's OptunaSearch hands it to ``study.tell`` as a completed value,
      which Optuna refuses, and the trial would stay RUNNING in the study forever; FAIL keeps it out of
      TPE's and NSGA-II's models. NaN intermediate values are not reported either.
    * A trial that ended before ``max_epochs`` without an error (ASHA stopped it) is told as PRUNED (Ray
      tells it COMPLETE with its last, partial value); its per-epoch values stay as intermediate values.
    * Each Optuna trial carries the user attributes ``ray_trial_id`` and ``trial_folder``
      (``experiment_dir/trial_<id>``).
    * On a resume (:meth:`restore`), trials the storage still holds as RUNNING that no restored Ray trial
      continues (asked after the searcher's last save by a driver that was killed) are marked FAIL.

    * Constraints (:mod:`hiercls.tune.constraints`): a trial that ran in full is given its constraint
      values (``value - bound`` per bounded metric, at its last epoch) with ``Trial.set_constraint``
      before it is told COMPLETE, so TPE and NSGA-II model infeasible trials apart and Optuna's best
      trial is feasible. A bound relative to ``baseline`` waits for the baseline, the first trial
      suggested (the first ``points_to_evaluate`` point): no other trial is suggested until it has
      finished in full; its values then fix the bounds (written to the experiment's
      ``constraints.json`` and the study's user attribute ``constraint_bounds``). A baseline that fails,
      goes NaN or stops early ends the search (nothing to compare against).

    Args (beyond OptunaSearch's, ``storage`` and ``study_name`` among them):
        max_epochs: each trial's full length (epochs); None: never PRUNED.
        experiment_dir: the experiment folder, for ``trial_folder`` and ``constraints.json``.
        constraints: parsed constraints (``SearchSpec.parsed_constraints()``).
        full_epochs: a trial's full length (epochs), for the constraints (default ``max_epochs``).
        bounds: bounds fixed earlier (a grown search's): no baseline is waited for.
    """

    # defaults for a searcher pickled by an earlier version (Tuner.restore unpickles the instance)
    _constraints: list[Constraint] = []  # noqa: RUF012 - never mutated
    _bounds: dict[str, float] | None = None
    _baseline_trial: str | None = None
    _baseline_failed: str | None = None
    _full_epochs: int | None = None

    def __init__(self, *args: Any, max_epochs: int | None = None, experiment_dir: str | None = None,
                 constraints: Sequence[Constraint] = (), full_epochs: int | None = None,
                 bounds: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    @property
    def waiting_for_baseline(self) -> bool:
        """Whether trials are held back until the baseline trial has finished."""
        return bool(self._constraints) and self._bounds is None and self._baseline_failed is None

    def suggest(self, trial_id: str) -> dict | str | None:
        from ray.tune.search import Searcher

        if self._baseline_failed is not None:
            return Searcher.FINISHED
        if self.waiting_for_baseline and self._baseline_trial is not None:
            return None  # asked again once the baseline has finished
        config = super().suggest(trial_id)
        if config is not None and self.waiting_for_baseline:
            self._baseline_trial = trial_id
        ot_trial = self._ot_trials.get(trial_id)
        if config is not None and ot_trial is not None and "ray_trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            if self._experiment_dir is not None:
                ot_trial.set_user_attr("trial_folder", f"{self._experiment_dir}/trial_{trial_id}")
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        from optuna.trial import TrialState

        self._rebind_journal(Path(checkpoint_path).parent)
        continued = {t.number for tid, t in self._ot_trials.items() if tid not in self._completed_trials}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in continued:
                self._ot_study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
                log.warning("optuna trial %d was left running by a stopped driver: marked failed",
                            frozen.number)

    def _rebind_journal(self, folder: Path) -> None:
        """Point the study at the journal file of the experiment being restored (``folder``: the
        experiment, or a grown search's part inside it), when the saved state names another: a moved or
        copied experiment must not write its trials into the original's file. A database URL is kept."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        from hiercls.tune.parts import GROW_PREFIX
        from hiercls.tune.study import STUDY_FILE

        backend = getattr(self._storage, "_backend", None)
        if not isinstance(self._storage, JournalStorage) or not isinstance(backend, JournalFileBackend):
            return
        root = folder.parent if folder.name.startswith(GROW_PREFIX) else folder
        current = (root / STUDY_FILE).resolve()
        old = Path(getattr(backend, "_file_path", "")).resolve()
        if old == current or not current.is_file():
            return
        log.warning("the study's journal moved with the experiment: %s (saved: %s)", current, old)
        storage = JournalStorage(JournalFileBackend(str(current)))
        study = optuna.load_study(study_name=self._ot_study.study_name, storage=storage,
                                  sampler=self._ot_study.sampler, pruner=self._ot_study.pruner)
        self._storage, self._ot_study = storage, study
        self._ot_trials = {tid: optuna.trial.Trial(study, t._trial_id) for tid, t in self._ot_trials.items()}
        if self._experiment_dir is not None:  # trial_folder attributes name the folder it is in now
            self._experiment_dir = str(folder)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not isinstance(self.metric, list) and _is_nan(result.get(self.metric)):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id == self._baseline_trial and self.waiting_for_baseline:
            self._fix_bounds(result, error)
        if result and trial_id not in self._completed_trials and trial_id in self._ot_trials:
            from optuna.trial import TrialState

            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            nan = any(_is_nan(result.get(m)) for m in metrics)
            if not nan and not isinstance(self.metric, list):
                self._report_last(trial_id, result)
            state = None
            if error or nan:
                state = TrialState.FAIL  # Ray would tell an errored trial's last value as COMPLETE
            elif not error and self._stopped_early(result):
                state = TrialState.PRUNED
            if state is None and self._bounds is not None and self._ran_in_full(result):
                values = constraint_values(result, self._bounds)
                for metric, value in (values or {}).items():
                    self._ot_trials[trial_id].set_constraint(metric, value)
            if state is not None:
                try:
                    self._ot_study.tell(self._ot_trials[trial_id], state=state)
                except Exception as exc:  # noqa: BLE001 - Optuna's own refusals are only logged, as in Ray
                    log.warning("optuna refused the %s trial %s: %s", state.name.lower(), trial_id, exc)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)

    def _report_last(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """The trial's last result as an intermediate value too (Ray passes the result that ends a trial to
        ``on_trial_complete`` only), so the study holds every epoch's value."""
        step, value = result.get("training_iteration"), result.get(self.metric)
        if not isinstance(step, int) or not isinstance(value, (int, float)):
            return
        ot_trial = self._ot_trials[trial_id]
        stored = self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
        if step not in stored:
            ot_trial.report(float(value), step)

    def _ran_in_full(self, result: Mapping[str, Any] | None) -> bool:
        epoch = (result or {}).get("epoch")
        return self._full_epochs is None or (isinstance(epoch, (int, float)) and epoch >= self._full_epochs)

    def _fix_bounds(self, result: Mapping[str, Any] | None, error: bool) -> None:
        """The baseline trial ended: fix the bounds from its last result, or end the search."""
        from hiercls.tune.constraints import write_bounds

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
        self._ot_study.set_user_attr("constraint_bounds", self._bounds)
        self._ot_study.set_user_attr("constraint_baseline", record)
        if self._experiment_dir is not None:
            write_bounds(self._experiment_dir, self._constraints, self._bounds, record)
        log.warning("baseline trial %s finished: constraint bounds %s", self._baseline_trial,
                    ", ".join(f"{m} <= {b:.6g}" for m, b in self._bounds.items()))

    def _stopped_early(self, result: Mapping[str, Any]) -> bool:
        epoch = result.get("epoch")
        return (self._max_epochs is not None and not isinstance(self.metric, list)
                and isinstance(epoch, (int, float)) and epoch < self._max_epochs)
