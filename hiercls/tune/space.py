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
    """OptunaSearch that tells Optuna a NaN result as a failed trial.

    Ray's OptunaSearch hands a NaN objective to ``study.tell`` as a completed value, which Optuna
    refuses; the trial then stays RUNNING in the study forever. Here it is marked FAIL, so TPE/NSGA-II
    never model it and the search goes on. NaN intermediate values are not reported either.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not isinstance(self.metric, list) and _is_nan(result.get(self.metric)):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and trial_id not in self._completed_trials and trial_id in self._ot_trials:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if any(_is_nan(result.get(m)) for m in metrics):
                from optuna.trial import TrialState

                try:
                    self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL)
                except Exception as exc:  # noqa: BLE001 - Optuna's own refusals are only logged, as in Ray
                    log.warning("optuna refused the failed trial %s: %s", trial_id, exc)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)
