"""Value schedules: the learning rate and loss parameters that change from one epoch to the next.

A config's ``value_schedule`` maps a 1-based epoch number (epoch 1 is the first) to values among ``lr``
(the base learning rate) and the chosen loss's *variable* parameters (declared ``variable`` in the loss
registry: ``lambda_fine`` and ``lambda_coarse`` of ``simple-hierarchy``, ``alpha`` of
``hierarchical-cross-entropy`` and ``yolo-v2``, ``beta`` of ``soft-labels``)::

    value_schedule: {1: {lambda_coarse: 0.0}, 3: {lambda_coarse: 1.0, lr: 0.05}}

In epoch ``e`` each key takes the value of the entry with the largest epoch ``<= e`` that sets it; before
any entry sets it, the config's own value. Values take effect at the start of the epoch. ``lr`` replaces
the base learning rate from that epoch on; the LR schedule's shape still applies on top of it (with
``lr_schedule: constant`` the rate is exactly the value; with ``lr_fc`` set the head's rate keeps the
config's ratio ``lr_fc / lr``). Which keys may change is declared: the run-level parameters of
:data:`hiercls.registry.TRAINING_PARAMS` declared ``variable`` (``lr``), then the loss's
(:func:`variable_keys`); each value is checked by its declaration.

Population-based training (PB2) perturbs these values; a run's per-epoch records hold the values in
effect under the names a config and a value schedule give them (``lr``, ``lambda_fine``, ...), plus
``scheduled_lr``, the rate of the epoch's first step (the LR schedule's shape applied to ``lr``), and
:func:`value_schedule_from_history` turns them back into the schedule that replays them. Records written
before ``lr`` had this one spelling hold ``base_lr`` (the value) and ``lr`` (the scheduled rate);
:func:`upgrade_record` reads them in today's spelling, and every reader of records uses it.

This module imports only the standard library, ``yaml`` and :mod:`hiercls.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from hiercls.registry import LOSSES, TRAINING_PARAMS, Param

__all__ = [
    "EXAMPLE", "all_variable_keys", "parse_value_schedule", "upgrade_record", "value_schedule_from_history",
    "value_schedule_problems", "values_in_effect", "variable_keys", "variable_params",
]

ValueSchedule = dict
"""``{epoch: {key: value}}``: epochs are ints from 1 (1-based), ascending; values are floats."""

EXAMPLE = "{1: {lambda_coarse: 0.0}, 3: {lambda_coarse: 1.0, lr: 0.05}}"
"""A value schedule as the command line takes it (``--value_schedule`` parses its text as YAML)."""

def _run_level() -> dict[str, Param]:
    """The run-level parameters (:data:`~hiercls.registry.TRAINING_PARAMS`) declared variable."""
    return {k: p for k, p in TRAINING_PARAMS.items() if p.variable}


def variable_params(loss: str) -> dict[str, Param]:
    """The declarations of the keys a value schedule may set for loss ``loss``: the variable run-level
    parameters (``lr``), then the loss's variable parameters in declaration order.

    Raises:
        ValueError: unknown loss (the message lists the valid ones).
    """
    return {**_run_level(), **{k: p for k, p in LOSSES.params(loss).items() if p.variable}}


def variable_keys(loss: str) -> list[str]:
    """The keys a value schedule may set for loss ``loss`` (:func:`variable_params`):
    ``["lr", "lambda_fine", "lambda_coarse"]`` for ``simple-hierarchy``.

    Raises:
        ValueError: unknown loss (the message lists the valid ones).
    """
    return list(variable_params(loss))


def all_variable_keys() -> list[str]:
    """The variable run-level parameters and every parameter any registered loss declares variable: the
    keys population-based training may change (``lr``, ``alpha``, ``beta``, ``lambda_fine``,
    ``lambda_coarse``)."""
    return [*_run_level(), *(k for k, p in LOSSES.all_params().items() if p.variable)]


def _epoch_number(key: Any) -> int | None:
    """``key`` as an epoch number (an int, an integral float, or digits as text: a JSON round trip turns
    int keys into text), else None. Not range-checked."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, float) and key.is_integer():
        return int(key)
    if isinstance(key, str) and key.strip().lstrip("+-").isdigit():
        return int(key.strip())
    return None


def _number(value: Any) -> float | None:
    """``value`` as a float (a number, or a number as text: YAML reads ``1e-3`` as text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_value_schedule(value: Any) -> tuple[ValueSchedule | None, list[str]]:
    """A ``value_schedule`` as given (a mapping, YAML text, null) in its typed form, and the problems of
    its shape (one line each). Ranges, epochs and keys are checked by :func:`value_schedule_problems`.

    The typed form maps int epochs, ascending, to ``{key: float}``; an empty schedule (and entries that
    set nothing) is None. Epoch keys may be ints or digits as text (what a JSON round trip makes of them).

    Returns:
        ``(schedule, problems)``; the schedule holds the entries that could be read.
    """
    if value is None:
        return None, []
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            return None, [f"value_schedule is not valid YAML ({reason}); valid: a mapping of epochs to "
                          f"values, e.g. {EXAMPLE}"]
        if value is None:
            return None, []
    if not isinstance(value, Mapping):
        return None, [f"value_schedule={value!r} is not a mapping of epochs to values; valid: e.g. {EXAMPLE}"]
    problems: list[str] = []
    out: dict[int, dict[str, float]] = {}
    given: dict[int, Any] = {}
    for key, entry in value.items():
        epoch = _epoch_number(key)
        if epoch is None:
            problems.append(f"value_schedule key {key!r} is not an epoch; valid: whole epochs from 1 "
                            "(1-based: 1 is the first epoch)")
            continue
        if epoch in given:
            problems.append(f"value_schedule sets epoch {epoch} twice (keys {given[epoch]!r} and {key!r})")
            continue
        given[epoch] = key
        if not isinstance(entry, Mapping):
            problems.append(f"value_schedule epoch {epoch}: {entry!r} is not a mapping of keys to values; "
                            "valid: e.g. {lr: 0.05}")
            continue
        values: dict[str, float] = {}
        for name, raw in entry.items():
            number = _number(raw)
            if not isinstance(name, str):
                problems.append(f"value_schedule epoch {epoch}: key {name!r} is not a parameter name")
            elif number is None:
                problems.append(f"value_schedule epoch {epoch}: {name}={raw!r} is not a number")
            else:
                values[name] = number
        if values:
            out[epoch] = values
    return ({e: out[e] for e in sorted(out)} or None), problems


def value_schedule_problems(schedule: Mapping[int, Mapping[str, float]] | None, loss: str,
                            epochs: int) -> list[str]:
    """The problems of a typed schedule (:func:`parse_value_schedule`) for a run of loss ``loss`` over
    ``epochs`` epochs, one line each: epochs outside ``1..epochs``, keys the loss cannot change (with the
    valid ones), values out of their declared range (:func:`variable_params`). An unknown loss is
    reported elsewhere: only the run-level keys (``lr``) are checked then."""
    problems: list[str] = []
    if not schedule:
        return problems
    declared = variable_params(loss) if loss in LOSSES else None
    for epoch, entry in schedule.items():
        if not 1 <= epoch <= epochs:
            problems.append(f"value_schedule epoch {epoch} is out of range; valid: whole epochs 1..{epochs} "
                            "(1-based: 1 is the first epoch)")
        for key, value in entry.items():
            param = (declared if declared is not None else _run_level()).get(key)
            if param is None and declared is None:
                continue
            if param is None:
                problems.append(f"value_schedule epoch {epoch}: {key!r} is not a value loss {loss!r} can "
                                f"change during training; valid: {', '.join(declared)}")
                continue
            try:
                param.check(value)
            except ValueError as err:
                problems.append(f"value_schedule epoch {epoch}: {err}")
    return problems


def values_in_effect(initial: Mapping[str, float], schedule: Mapping[int, Mapping[str, float]] | None,
                     epoch: int) -> dict[str, float]:
    """The values in effect in ``epoch`` (1-based): ``initial`` (the config's own values) updated by every
    schedule entry of an epoch ``<= epoch``, in ascending order.

    Raises:
        ValueError: ``epoch`` not a whole number >= 1.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch={epoch!r} is out of range; valid: whole epochs from 1 (1-based)")
    out = dict(initial)
    for start in sorted(schedule or {}):
        if start > epoch:
            break
        out.update(schedule[start])
    return out


def upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A per-epoch record (engine, reporter, ``all_epoch_results.json``, Ray's ``result.json``) in today's
    spelling: ``lr`` the value of ``lr`` in effect that epoch, ``scheduled_lr`` the rate of its first step.

    Older records, renamed in place (an upgraded record has its keys in the order of a new one):

    * with ``base_lr`` (written before ``lr`` had one spelling): ``base_lr`` was the value and ``lr`` the
      scheduled rate: ``lr`` -> ``scheduled_lr``, ``base_lr`` -> ``lr``;
    * an engine record (it has ``train_loss``) with neither ``base_lr`` nor ``scheduled_lr`` (written
      before the values in effect were recorded): its ``lr`` was the scheduled rate: ``lr`` ->
      ``scheduled_lr``, and the record has no value of ``lr``
      (:func:`hiercls.engine.fit` ``continue_from`` and a resume fill the values in from the config).

    Any other record is returned as it is (a copy): today's, and the report of a trainable without a
    scheduled rate (the search's toy trainable, whose ``lr`` is the value).
    """
    if "base_lr" in record:
        renamed = {"lr": "scheduled_lr", "base_lr": "lr"} if "lr" in record else {"base_lr": "lr"}
    elif "scheduled_lr" not in record and "lr" in record and "train_loss" in record:
        renamed = {"lr": "scheduled_lr"}
    else:
        return dict(record)
    return {renamed.get(k, k): v for k, v in record.items()}


def value_schedule_from_history(
    history: Sequence[Mapping[str, Any]], loss: str
) -> dict[int, dict[str, float]]:
    """The minimal ``value_schedule`` that replays the values of a run's per-epoch records.

    ``history`` is a run's records in order (``fit(...)["history"]``, ``all_epoch_results.json``; epochs
    1, 2, ... as 1-based numbers), in today's spelling or an older one (:func:`upgrade_record`). The
    result has an entry at epoch 1 with every value (``lr`` and the loss's variable parameters,
    :func:`variable_keys`) and later entries only for the values that change, at the epoch they change.
    ``lr`` is the records' ``lr``, the base learning rate, not the rate the LR schedule shaped from it
    (their ``scheduled_lr``). A fit of the run's config with this ``value_schedule`` (whatever its own
    ``lr`` and loss values) has records with the same values and ``scheduled_lr``, float for float. An
    empty history gives ``{}``.

    Raises:
        ValueError: unknown loss; records not numbered 1, 2, ...; a record without one of the values
            (written by a hiercls that did not record them).
    """
    keys = variable_keys(loss)
    schedule: dict[int, dict[str, float]] = {}
    previous: dict[str, float] | None = None
    for position, record in enumerate(history, start=1):
        record = upgrade_record(record)
        epoch = record.get("epoch")
        if epoch != position:
            raise ValueError(f"history record {position} is epoch {epoch!r}; expected the records of epochs "
                             "1, 2, ... in order")
        missing = [k for k in keys if k not in record]
        if missing:
            raise ValueError(f"the record of epoch {epoch} has no {', '.join(missing)} (for loss {loss!r}; "
                             "written by a hiercls that did not record the values in effect)")
        current = {k: float(record[k]) for k in keys}
        changed = current if previous is None else {k: v for k, v in current.items() if v != previous[k]}
        if changed:
            schedule[position] = changed
        previous = current
    return schedule
