"""The search space for Optuna: a define-by-run function built from parsed :class:`Param` trees, and the
OptunaSearch variant used by the runner.

Define-by-run lets a branch's parameters exist only when its value is drawn: a trial with
``loss: soft-labels`` has ``beta`` in its config and no ``alpha`` (a static space would draw both and
have TPE model a parameter that had no effect).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from hiercls.tune.layout import TRIAL_INDEX
from hiercls.tune.spec import Param

__all__ = ["TRIAL_INDEX", "DefineByRun", "SearchAlgorithm", "draw"]


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

    Args (beyond OptunaSearch's, ``storage`` and ``study_name`` among them):
        max_epochs: each trial's full length (epochs); None: never PRUNED.
        experiment_dir: the experiment folder, for ``trial_folder``.
    """

    def __init__(self, *args: Any, max_epochs: int | None = None, experiment_dir: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._experiment_dir = experiment_dir

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if config is not None and ot_trial is not None and "ray_trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            if self._experiment_dir is not None:
                ot_trial.set_user_attr("trial_folder", f"{self._experiment_dir}/trial_{trial_id}")
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        from optuna.trial import TrialState

        continued = {t.number for tid, t in self._ot_trials.items() if tid not in self._completed_trials}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in continued:
                self._ot_study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
                log.warning("optuna trial %d was left running by a stopped driver: marked failed",
                            frozen.number)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not isinstance(self.metric, list) and _is_nan(result.get(self.metric)):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
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

    def _stopped_early(self, result: Mapping[str, Any]) -> bool:
        epoch = result.get("epoch")
        return (self._max_epochs is not None and not isinstance(self.metric, list)
                and isinstance(epoch, (int, float)) and epoch < self._max_epochs)
