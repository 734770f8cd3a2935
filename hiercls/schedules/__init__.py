"""Learning-rate schedules, stepped once per optimiser iteration.

Every schedule is a *pure* function of its configuration and the fractional epoch ``e`` (a float,
``e = completed optimiser steps / steps per epoch``, starting at 0). The functions live in the
:data:`SCHEDULES` registry under the names of the original project's ``--lr_schedule`` option
(``cosine``, ``cyclic``, ``cutout``) plus ``constant`` and ``onecycle`` for short search trials:

========== ================================================================ ===============================
name       formula (``b`` = base_lr, ``e`` = fractional epoch)              parameters (defaults)
========== ================================================================ ===============================
cosine     SGDR warm restarts (Loshchilov & Hutter, ICLR 2017, eq. 5):      ``t0=12``, ``t_mult=2``,
           ``eta_min + (b - eta_min) * (1 + cos(pi * t_cur / T_i)) / 2``    ``eta_min=1e-6``
cyclic     triangular2 cyclical LR (Smith, WACV 2017 / arXiv 2015):         ``min_lr=1e-6``,
           starts at ``min_lr``, first peak ``b`` at ``e = step_size``,     ``step_size=10``
           the amplitude above ``min_lr`` halves every cycle
cutout     multi-step decay: ``b * gamma ** #{milestones m <= floor(e)}``   ``milestone_fractions=(0.3,
                                                                            0.6, 0.8)`` or ``milestones``,
                                                                            ``gamma=0.2``
constant   ``b``                                                            none
onecycle   linear warm-up 0 -> ``b`` over ``warmup_fraction * epochs``,     ``warmup_fraction=0.2``
           then half-cosine down to 0 at ``e = epochs``
========== ================================================================ ===============================

The defaults of ``cosine``, ``cyclic`` and ``cutout`` are the original project's hard-coded ones
(``CosineAnnealingWarmRestarts(T_0=12, T_mult=2, eta_min=1e-6)``, ``CyclicLR(base_lr=1e-6,
step_size_up=10 epochs, mode="triangular2")``, ``MultiStepLR([60, 120, 160], gamma=0.2)`` over 200
epochs, which ``milestone_fractions`` scales to any run length).

Two entry points:

* :func:`learning_rate` evaluates a schedule at one fractional epoch (pure, no state).
* :func:`build_schedule` wraps it around an optimiser as a :class:`StepSchedule`, stepped once per
  iteration, checkpointable through ``state_dict``/``load_state_dict``.

Command line: ``python -m hiercls.schedules plot --schedule cosine --epochs 200 --base-lr 0.1
--out lr.png [--set t0=12 ...]`` draws a schedule (the original project's learning-rate figure); see
:mod:`hiercls.schedules.plot`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hiercls.registry import SCHEDULES, Param

__all__ = [
    "LR_SCALE_KEY",
    "SCHEDULES",
    "StepSchedule",
    "build_schedule",
    "learning_rate",
    "schedule_params",
    "validate_params",
]

LRFunction = Callable[..., float]


# Key written into every optimiser param group: the schedule's integer step count. It travels with
# ``optimizer.state_dict()``, so a schedule built *after* the optimiser state was restored sees that the
# optimiser is mid-run and leaves its learning rate alone (see StepSchedule).
STEP_KEY = "hiercls_schedule_step"
# Optional key of a param group: the factor on the schedule's rate for that group (the head's group when
# ``lr_fc`` is set: lr_fc / lr); absent means 1.
LR_SCALE_KEY = "hiercls_lr_scale"


# --------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the given bounds, else ValueError naming it and the range."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    valid = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is not a number; valid range {valid}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        raise ValueError(f"{name}={value!r} is out of range; valid range {valid}")
    return v


def _check_epoch(epoch: Any) -> float:
    return _number("epoch", epoch, low=0.0)


def schedule_params(name: str) -> dict[str, Any]:
    """The tunable parameters of schedule ``name`` and their defaults (its registry declaration).

    Raises:
        ValueError: for an unknown schedule name (the message lists the valid ones).
    """
    return SCHEDULES.defaults(name)


_ORIGINAL = "the original project's hard-coded value"


# --------------------------------------------------------------------------------------------------------
# the pure schedules
# --------------------------------------------------------------------------------------------------------


@SCHEDULES.register("constant")
def constant(epoch: float, *, base_lr: float, epochs: float) -> float:
    """``base_lr`` at every epoch."""
    return float(base_lr)


@SCHEDULES.register("cosine", params=(
    Param("t0", "float", 12.0, "SGDR: length of the first cycle", low=0.0, low_open=True, unit="epochs",
          source=_ORIGINAL + " (T_0=12)"),
    Param("t_mult", "float", 2.0, "SGDR: growth factor of the cycle length", low=1.0,
          source=_ORIGINAL + " (T_mult=2)"),
    Param("eta_min", "float", 1e-6, "SGDR: the learning-rate floor", low=0.0, source=_ORIGINAL),
))
def cosine(
    epoch: float,
    *,
    base_lr: float,
    epochs: float,
    t0: float,
    t_mult: float,
    eta_min: float,
) -> float:
    """SGDR: cosine annealing with warm restarts (Loshchilov & Hutter, ICLR 2017, eq. 5).

    Cycle ``i`` (from 0) lasts ``T_i = t0 * t_mult**i`` epochs and starts at
    ``S_i = t0 * (t_mult**i - 1) / (t_mult - 1)`` (``i * t0`` when ``t_mult == 1``); inside it,
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * (e - S_i) / T_i)) / 2``. The learning rate is
    ``base_lr`` at every restart. ``epochs`` is unused (the restarts continue past the run's end).

    Args:
        epoch: fractional epoch ``e >= 0``.
        t0: length of the first cycle in epochs, ``> 0`` (original project: 12).
        t_mult: growth factor of the cycle length, ``>= 1`` (original: 2).
        eta_min: the floor, ``>= 0`` (original: 1e-6).
    """
    if t_mult == 1.0:
        i = math.floor(epoch / t0)
        start, length = i * t0, t0
    else:

        def start_of(k: int) -> float:
            return t0 * (t_mult**k - 1.0) / (t_mult - 1.0)

        i = max(0, math.floor(math.log(epoch * (t_mult - 1.0) / t0 + 1.0, t_mult)))
        # the log can land one cycle off at a boundary through rounding; settle it exactly
        while start_of(i + 1) <= epoch:
            i += 1
        while i > 0 and start_of(i) > epoch:
            i -= 1
        start, length = start_of(i), t0 * t_mult**i
    t_cur = epoch - start
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * t_cur / length)) / 2.0


@SCHEDULES.register("cyclic", params=(
    Param("min_lr", "float", 1e-6, "cyclic: the lower bound (at most lr)", low=0.0,
          source=_ORIGINAL + " (CyclicLR base_lr=1e-6)"),
    Param("step_size", "float", 10.0, "cyclic: epochs from the bound to the peak", low=0.0, low_open=True,
          unit="epochs", source=_ORIGINAL),
))
def cyclic(epoch: float, *, base_lr: float, epochs: float, min_lr: float, step_size: float) -> float:
    """Triangular2 cyclical learning rate (Smith, "Cyclical Learning Rates for Training Neural Networks").

    A cycle lasts ``2 * step_size`` epochs: the rate rises linearly from ``min_lr`` to the cycle's peak
    in ``step_size`` epochs and falls back in another ``step_size``. The first peak (at
    ``e = step_size``) is ``base_lr``; the amplitude above ``min_lr`` halves every cycle:
    ``lr = min_lr + (base_lr - min_lr) * (1 - |2x - 1|) / 2**c`` with ``c = floor(e / (2 step_size))``
    and ``x = e / (2 step_size) - c``. Equals ``torch.optim.lr_scheduler.CyclicLR(base_lr=min_lr,
    max_lr=base_lr, step_size_up=step_size * steps_per_epoch, mode="triangular2")`` stepped per
    iteration (PyTorch calls the lower bound ``base_lr``). ``epochs`` is unused.

    Args:
        epoch: fractional epoch ``e >= 0``.
        min_lr: the lower bound, ``0 <= min_lr <= base_lr`` (original project: 1e-6).
        step_size: half a cycle in epochs, ``> 0`` (original: 10).
    """
    t = epoch / (2.0 * step_size)
    c = math.floor(t)
    x = t - c
    return min_lr + (base_lr - min_lr) * (1.0 - abs(2.0 * x - 1.0)) / 2.0**c


def _cutout_milestones(
    epochs: float, milestones: Sequence[int] | None, milestone_fractions: Sequence[float] | None
) -> list[int]:
    if milestones is not None:
        return [int(m) for m in milestones]
    fractions = (0.3, 0.6, 0.8) if milestone_fractions is None else milestone_fractions
    return [math.floor(f * epochs + 0.5) for f in fractions]


@SCHEDULES.register("cutout", params=(
    Param("milestones", "ints", None, "cutout: epochs where the rate drops (default: milestone_fractions)",
          low=0, low_open=True, unit="epochs", nullable=True, source=_ORIGINAL + " ([60, 120, 160] of 200)"),
    Param("milestone_fractions", "floats", None,
          "cutout: drops as fractions of the run (default 0.3,0.6,0.8)",
          low=0.0, low_open=True, high=1.0, unit="fraction", nullable=True,
          source=_ORIGINAL + " scaled to any run length"),
    Param("gamma", "float", 0.2, "cutout: decay factor per milestone", low=0.0, low_open=True,
          source=_ORIGINAL),
))
def cutout(
    epoch: float,
    *,
    base_lr: float,
    epochs: float,
    milestones: Sequence[int] | None,
    milestone_fractions: Sequence[float] | None,
    gamma: float,
) -> float:
    """Multi-step decay, the original project's ``cutout`` schedule (``MultiStepLR``).

    ``lr = base_lr * gamma ** n`` where ``n`` counts the milestones ``m <= floor(e)`` (so the drop
    happens when epoch ``m`` begins, as with ``MultiStepLR`` stepped per epoch). The milestones are
    either ``milestones`` (whole epochs; ``[60, 120, 160]`` with 200 epochs reproduces the original
    exactly) or ``milestone_fractions`` of the run, ``milestone = floor(f * epochs + 0.5)`` (rounded
    half up); the default fractions ``(0.3, 0.6, 0.8)`` give 60/120/160 of 200. Give at most one.

    Args:
        epoch: fractional epoch ``e >= 0``.
        epochs: run length in epochs (used only by ``milestone_fractions``).
        milestones: positive whole epochs.
        milestone_fractions: fractions in ``(0, 1]``.
        gamma: decay factor per milestone, ``> 0`` (original: 0.2).
    """
    marks = _cutout_milestones(epochs, milestones, milestone_fractions)
    whole = math.floor(epoch)
    n = sum(1 for m in marks if m <= whole)
    return base_lr * gamma**n


@SCHEDULES.register("onecycle", params=(
    Param("warmup_fraction", "float", 0.2, "onecycle: share of the run spent warming up", low=0.0, high=1.0,
          high_open=True, unit="fraction", source="a common one-cycle choice for short search trials"),
))
def onecycle(epoch: float, *, base_lr: float, epochs: float, warmup_fraction: float) -> float:
    """Linear warm-up then cosine decay to zero (a one-cycle policy for short search trials).

    With ``w = warmup_fraction * epochs``: ``lr = base_lr * e / w`` for ``e < w`` (0 at ``e = 0``), then
    ``lr = base_lr * (1 + cos(pi * min(1, (e - w) / (epochs - w)))) / 2``, which is ``base_lr`` at
    ``e = w`` and 0 from ``e = epochs`` on.

    Args:
        epoch: fractional epoch ``e >= 0``.
        epochs: run length in epochs, ``> 0``.
        warmup_fraction: share of the run spent warming up, ``0 <= f < 1`` (0: no warm-up).
    """
    warm = warmup_fraction * epochs
    if epoch < warm:
        return base_lr * epoch / warm
    progress = min(1.0, (epoch - warm) / (epochs - warm))
    return base_lr * (1.0 + math.cos(math.pi * progress)) / 2.0


def _plain(value: Any) -> Any:
    """Tuples become lists (so a state survives a JSON round trip and compares equal)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def validate_params(name: str, base_lr: Any, epochs: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Checks and normalises a schedule configuration; returns the params with defaults filled in.

    Each parameter is checked against its declaration; what involves two values is checked here.
    """
    canonical = SCHEDULES.canonical(name)
    out = SCHEDULES.check(canonical, params)
    base = _number("base_lr", base_lr, low=0.0)
    _number("epochs", epochs, low=0.0, low_open=True)
    if canonical == "cyclic" and out["min_lr"] > base:
        raise ValueError(f"min_lr={params.get('min_lr', out['min_lr'])!r} is out of range; valid range "
                         f"[0.0, {base}] (at most base_lr)")
    if canonical == "cutout" and out["milestones"] is not None and out["milestone_fractions"] is not None:
        raise ValueError("give either milestones or milestone_fractions for schedule 'cutout', not both")
    return out


def learning_rate(name: str, epoch: float, *, base_lr: float, epochs: float, **params: Any) -> float:
    """The learning rate of schedule ``name`` at fractional epoch ``epoch`` (pure: no state).

    Args:
        name: a registered schedule (``constant``, ``cosine``, ``cutout``, ``cyclic``, ``onecycle``).
        epoch: fractional epoch ``>= 0`` (completed optimiser steps / steps per epoch), in epochs.
        base_lr: the schedule's peak / starting learning rate, ``>= 0``.
        epochs: the run length in epochs, ``> 0`` (used by ``cutout`` fractions and ``onecycle``).
        **params: the schedule's own parameters (see the module table); omitted ones take defaults.

    Returns:
        The learning rate as a Python float.

    Raises:
        ValueError: unknown schedule name, unknown parameter (the message lists the valid ones), or a
            value out of range (the message names the value and the valid range).
    """
    full = validate_params(name, base_lr, epochs, params)
    e = _check_epoch(epoch)
    return float(SCHEDULES.get(name)(e, base_lr=float(base_lr), epochs=float(epochs), **full))


# --------------------------------------------------------------------------------------------------------
# optimiser-facing wrapper
# --------------------------------------------------------------------------------------------------------


class StepSchedule:
    """Drives an optimiser's learning rate from a pure schedule, one ``step()`` per iteration.

    The position is an integer step count ``k``; the schedule stands at epoch ``k / steps_per_epoch``
    and its learning rate is ``learning_rate(name, k / steps_per_epoch, ...)``, recomputed from ``k``
    every time (never accumulated), so a resumed run reproduces the uninterrupted sequence exactly.
    Every param group of the optimiser gets the same learning rate.

    Usage, per iteration: ``optimizer.step(); schedule.step()``.

    Resuming, in this order: build the optimiser, build the schedule, then ``optimizer.load_state_dict``
    and ``schedule.load_state_dict`` (either order between those two). ``load_state_dict`` alone sets the
    optimiser's learning rate for the restored position.

    Construction never resets a resumed optimiser: the step count is also written into each param group
    (key ``"hiercls_schedule_step"``, saved with ``optimizer.state_dict()``). When the schedule is built
    on an optimiser that already carries that key (its state was restored first), it adopts that step
    and leaves the learning rate as restored. On a fresh optimiser it sets the learning rate for epoch 0.

    Args:
        name: a registered schedule name.
        optimizer: any ``torch.optim.Optimizer``.
        base_lr: see :func:`learning_rate`.
        epochs: run length in epochs.
        steps_per_epoch: optimiser steps (iterations) per epoch, a positive int.
        **params: the schedule's parameters.

    Raises:
        ValueError: as :func:`learning_rate`, or ``steps_per_epoch`` not a positive integer.
    """

    def __init__(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        epochs: float,
        steps_per_epoch: int,
        **params: Any,
    ) -> None:
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} is invalid; valid: a positive integer")
        self.name = SCHEDULES.canonical(name)
        self._fn = SCHEDULES.get(self.name)
        self._params = validate_params(self.name, base_lr, epochs, params)
        self._user_params = {k: _plain(v) for k, v in params.items()}
        self.base_lr = float(base_lr)
        self.epochs = float(epochs)
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = optimizer
        restored = [g[STEP_KEY] for g in optimizer.param_groups if STEP_KEY in g]
        if restored:
            self._step = int(restored[0])  # resumed optimiser: keep its learning rate untouched
        else:
            self._step = 0
            self._apply()

    # -- position ------------------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Completed optimiser steps (iterations) so far."""
        return self._step

    @property
    def epoch(self) -> float:
        """Current fractional epoch, ``step_count / steps_per_epoch``."""
        return self._step / self.steps_per_epoch

    @property
    def lr(self) -> float:
        """Learning rate at the current position (what the next ``optimizer.step()`` uses)."""
        return float(self._fn(self.epoch, base_lr=self.base_lr, epochs=self.epochs, **self._params))

    def set_base_lr(self, base_lr: float) -> None:
        """Replace the base learning rate from the current position on (a run's ``value_schedule``, at the
        start of an epoch) and set the optimiser's rate for it: the schedule's shape applies on top, so
        the rate is ``learning_rate(name, epoch, base_lr=base_lr, ...)`` (exactly ``base_lr`` for
        ``constant``), and a group with a scale (the head's ``lr_fc / lr``) keeps it. ``state_dict`` then
        holds the new base.

        Raises:
            ValueError: as :func:`learning_rate` (e.g. below ``cyclic``'s ``min_lr``); nothing changes.
        """
        validate_params(self.name, base_lr, self.epochs, self._user_params)
        self.base_lr = float(base_lr)
        self._apply()

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            # a group may scale the schedule's rate (the head's lr_fc / lr, hiercls.optim)
            group["lr"] = lr * group.get(LR_SCALE_KEY, 1.0)
            group[STEP_KEY] = self._step

    def step(self) -> float:
        """Advance one iteration and set the optimiser's learning rate for the new position; returns it."""
        self._step += 1
        self._apply()
        return self.optimizer.param_groups[0]["lr"]

    # -- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position plus configuration (plain Python values, ``torch.save``/JSON friendly)."""
        return {
            "step": self._step,
            "steps_per_epoch": self.steps_per_epoch,
            "name": self.name,
            "base_lr": self.base_lr,
            "epochs": self.epochs,
            "params": {k: _plain(v) for k, v in self._user_params.items()},
        }

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Restore the position and set the optimiser's learning rate for it.

        Args:
            state: from :meth:`state_dict`.
            strict: if True, the saved configuration (name, base_lr, epochs, params, steps_per_epoch)
                must equal this schedule's; if False only ``steps_per_epoch`` must match and the position
                is adopted under the configuration given at construction.

        Raises:
            ValueError: on a configuration mismatch (names the differing fields), or a malformed step.
        """
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state step={step!r} is invalid; valid: a non-negative integer")
        mine = self.state_dict()
        fields = (
            ("steps_per_epoch", "name", "base_lr", "epochs", "params") if strict else ("steps_per_epoch",)
        )
        diff = [f for f in fields if f in state and _plain(state[f]) != mine[f]]
        if diff:
            detail = ", ".join(f"{f}: saved {state[f]!r} vs built {mine[f]!r}" for f in diff)
            raise ValueError(f"schedule state does not match this schedule ({detail})")
        self._step = step
        self._apply()


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    base_lr: float,
    epochs: float,
    steps_per_epoch: int,
    **params: Any,
) -> StepSchedule:
    """A :class:`StepSchedule` for ``optimizer``, stepped once per iteration (see its docstring for resuming).

    Args:
        name: a registered schedule (``constant``, ``cosine``, ``cutout``, ``cyclic``, ``onecycle``).
        optimizer: the optimiser whose param groups' ``lr`` the schedule sets.
        base_lr: peak / starting learning rate.
        epochs: run length in epochs.
        steps_per_epoch: iterations per epoch (positive int); after ``k`` steps the schedule is at epoch
            ``k / steps_per_epoch``.
        **params: the schedule's parameters.

    Raises:
        ValueError: unknown name or parameter, or an out-of-range value (see :func:`learning_rate`).
    """
    return StepSchedule(
        name, optimizer, base_lr=base_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, **params
    )


# --------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------
