"""The checks of a search space that need more than one parameter at a time, each returning its problems.

:meth:`hiercls.tune.spec.SearchSpec.problems` calls them on the parsed space (:mod:`hiercls.tune.parameters`)
and the fixed ``train:`` keys. Imports no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hiercls.config import ConfigError, TrainConfig, param_keys
from hiercls.registry import LOSSES, param_registries
from hiercls.tune.parameters import (
    GRID,
    TRIAL_KEYS,
    Param,
    assignments,
    grid_points,
    grid_size,
    is_grid,
    is_number,
    iter_params,
    plain,
)

__all__ = ["GRID_CHECK_LIMIT", "all_off_problems", "branch_problems", "config_problems", "grace_problems",
           "grid_config_problems", "grid_problems", "nothing_searched_problems", "point_problems"]

GRID_CHECK_LIMIT = 1000
"""A grid search of up to this many points has every point checked (:func:`config_problems`); a larger
one, both ends of every branch combination, as a TPE search."""


def _choices_of(params: Mapping[str, Param], train: Mapping[str, Any], key: str) -> list[Any]:
    """The values ``key`` (loss or lr_schedule) can take at the top of the space."""
    if key in params:
        return list(params[key].values) if params[key].kind in ("choice", GRID) else [params[key].value]
    return [train.get(key, getattr(TrainConfig(), key))]


def branch_problems(params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
    """Model (loss, schedule) parameters where a model (loss, schedule) that does not take them can be
    selected; unknown architectures, losses and schedules."""
    problems = []
    for key, registry in param_registries().items():
        choices = _choices_of(params, train, key)
        problems += [f"{key} {value!r} is unknown; valid: {', '.join(registry.names())}"
                     for value in choices if value not in registry]
        problems += [f"search: {key} cannot be chosen inside a branch ({_where(context)})"
                     for p, context in iter_params(params) if p.name == key and context]
        problems += _misplaced(key, registry, params, train, [v for v in choices if v in registry])
    return problems


def _misplaced(key: str, registry: Any, params: Mapping[str, Param], train: Mapping[str, Any],
               top: list[Any]) -> list[str]:
    """Parameters of ``key``'s entries (searched, or fixed under ``train``) where an entry that does not
    take them is selected (``top``: the entries selectable at the top of the space)."""
    owned, problems = param_keys(key), []
    for p, context in iter_params(params):
        selected = [v for v in ([v for k, v in context if k == key] or top) if v in registry]
        refuse = [v for v in selected if p.name in owned and p.name not in registry.params(v)]
        if refuse:
            owners = [n for n in registry.names() if p.name in registry.params(n)]
            only = "" if len(refuse) < len(selected) else " only"
            problems.append(f"search{_where(context, prefix=True)}.{p.name}: a parameter of {key} "
                            f"{' / '.join(owners)}, but this branch selects {key} "
                            f"{', '.join(map(repr, refuse))}{only}; move it under the {key} branch that "
                            "uses it")
    for name in (n for n in train if n in owned):
        refuse = [v for v in top if name not in registry.params(v)]
        if refuse:
            problems.append(f"train.{name}: a parameter the selected {key} {', '.join(map(repr, refuse))} "
                            "does not take; move it under the branch that uses it, or unset it "
                            f"('{name}: null' under train:, also when a recipe named by train.config "
                            "sets it)")
    return problems


def grace_problems(grace_period: int, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
    """ASHA's grace period (epochs) must outlast every loss term's start epoch that can be drawn (the loss
    parameters declared with ``role="start"``)."""
    largest, which = None, None
    start_keys = [k for k, p in param_keys("loss").items() if p.role == "start"]
    for key in start_keys:
        candidates = [p.largest() for p, _ in iter_params(params) if p.name == key]
        if key in train and is_number(train[key]):
            candidates.append(float(train[key]))
        for c in candidates:
            if c is not None and (largest is None or c > largest):
                largest, which = c, key
    if largest is not None and largest > 0 and grace_period <= largest:
        return [
            f"grace_period={grace_period} is not above the largest start epoch searched "
            f"({which} up to {largest:g}): ASHA would stop trials before that loss term has started; "
            f"raise grace_period above {largest:g} or narrow the range"
        ]
    return []


def all_off_problems(params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
    """A loss made of terms (parameters declared with ``term`` and ``role``): every term can be
    switched off at once (its ``weight`` exactly 0, or its ``start`` after epoch 0)."""
    problems = []
    for combo in assignments(params):
        loss = combo["loss"].value if "loss" in combo else train.get("loss", TrainConfig.loss)
        if loss not in LOSSES:
            continue
        declared = LOSSES.params(loss)
        terms: dict[str, dict[str, str]] = {}
        for key, p in declared.items():
            if p.term and p.role:
                terms.setdefault(p.term, {})[p.role] = key
        if not terms:
            continue

        def param(key: str, combo=combo, declared=declared) -> Param:
            if key in combo:
                return combo[key]
            return Param(key, "fixed", value=train.get(key, declared[key].default))

        off = {}
        for term, roles in terms.items():
            reasons = []
            if "weight" in roles and param(roles["weight"]).can_be_zero():
                reasons.append(f"{roles['weight']} can be 0")
            if "start" in roles and param(roles["start"]).can_be_positive():
                reasons.append(f"{roles['start']} can be after epoch 0")
            off[term] = reasons
        if all(off.values()):
            first = next(iter(terms))
            weight = terms[first].get("weight", "its weight")
            problems.append(
                f"search: every loss term of {LOSSES.canonical(loss)} can be switched off at once ("
                + "; ".join(r for reasons in off.values() for r in reasons)
                + f"): keep the {first} term from epoch 0 with a {weight} range that excludes 0"
                + (", as in the original project" if LOSSES.canonical(loss) == "simple-hierarchy" else "")
            )
    return problems


def nothing_searched_problems(params: Mapping[str, Param], where: str | None) -> list[str]:
    """A space file (``where``) that searches nothing (no distribution, choice or grid entry anywhere in
    ``search:``): every trial would train the same config, only its seed differing. A spec built in
    Python (``where`` None) is not judged: it may repeat one config over seeds on purpose."""
    if where is None or any(p.kind != "fixed" for p, _ in iter_params(params)):
        return []
    return [f"{where}: search: has no searched parameter (every value is fixed), so every "
            "trial would train the same config; a space needs at least one distribution, choice or grid "
            "entry under search:, e.g. lr: {type: loguniform, low: 0.01, high: 0.2} (see "
            "search_spaces/default.yaml); to repeat one config over seeds, train it with python -m "
            "hiercls.train --seed N"]


def point_problems(points_to_evaluate: Any, params: Mapping[str, Param]) -> list[str]:
    """``points_to_evaluate`` that is not a list, and points that are not mappings or that name keys,
    values or branches outside the space."""
    problems = []
    if not isinstance(points_to_evaluate, list):
        return [f"points_to_evaluate must be a list of mappings, got {points_to_evaluate!r}"]
    for i, point in enumerate(points_to_evaluate):
        where = f"points_to_evaluate[{i}]"
        if not isinstance(point, Mapping):
            problems.append(f"{where} must be a mapping of searched keys to values")
            continue
        problems += _check_point(point, params, where)
    return problems


def grid_config_problems(configs: Any, params: Mapping[str, Param], train: Mapping[str, Any],
                         epochs: int) -> list[str]:
    """A grid search's ``points_to_evaluate``: configurations (mappings of config keys), each run at every
    point of the grid (e.g. a grid over ``seed``). A key the grid also sets, a key the search sets itself,
    and configs the checks of :func:`config_problems` refuse are problems."""
    if not isinstance(configs, list) or not all(isinstance(c, Mapping) for c in configs):
        return [f"points_to_evaluate must be a list of mappings of config keys, got {configs!r}"]
    valid, problems = set(TrainConfig.valid_keys()), []
    for i, config in enumerate(configs):
        where = f"points_to_evaluate[{i}]"
        problems += [f"{where}: {k!r} is not a config key" for k in config if k not in valid]
        problems += [f"{where}: {k!r} is also a grid entry (set it in one place)"
                     for k in config if k in params]
        problems += [f"{where}: {k!r} is set by the search itself" for k in config if k in TRIAL_KEYS]
    if problems:
        return problems
    return [p for config in configs for p in config_problems(epochs, params, {**train, **config})]


def grid_problems(params: Mapping[str, Param]) -> list[str]:
    """A grid search runs fixed points only: every distribution in a space with a ``grid`` entry is
    refused, one line naming its key (and the branch it sits in)."""
    if not is_grid(params):
        return []
    return [
        f"search{_where(context, prefix=True)}.{p.name}: a {p.kind} distribution in a grid search; a "
        "grid runs fixed points only: list the values to run ({type: grid, values: [...]}) or a plain "
        "value, or leave out every grid entry for a TPE search"
        for p, context in iter_params(params) if p.kind not in ("fixed", GRID)
    ]


def config_problems(epochs: Any, params: Mapping[str, Param], train: Mapping[str, Any]) -> list[str]:
    """:func:`~hiercls.build.check_config` on both ends of every branch combination (every point of a grid
    search of up to :data:`GRID_CHECK_LIMIT` points): names, declared ranges, and what the loss and
    schedule check on the hierarchy. A problem several of these configs share (a missing word-vectors
    file fails them all) is one line."""
    from hiercls.build import check_config  # imports torch: only when a space is checked

    if not isinstance(epochs, int) or epochs < 1:
        return []
    base = {**train, "epochs": epochs, "evaluate_test": False, "download": False}
    checked = _checked_configs(params, base)
    found: dict[str, list[str]] = {}
    for where, values in checked:
        try:
            check_config(TrainConfig.from_dict(values))
        except ConfigError as err:
            for problem in err.problems:
                found.setdefault(problem, []).append(where)
    return [f"{_places(where, len(checked))}: {problem}" for problem, where in found.items()]


def _places(where: list[str], checked: int) -> str:
    """Where a problem of :func:`config_problems` was found: its one config, or how many of them."""
    if len(where) == 1:
        return where[0]
    if len(where) == checked:
        return f"search, all {checked} configs checked"
    return f"{where[0]} and {len(where) - 1} more of the {checked} configs checked"


def _checked_configs(params: Mapping[str, Param], base: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """``(where, config values)`` of each config :func:`config_problems` checks, each once."""
    if is_grid(params) and grid_size(params) <= GRID_CHECK_LIMIT:
        return [(f"search, grid point {i} ({', '.join(f'{k}={v}' for k, v in point.items())})",
                 {**base, **point}) for i, point in enumerate(grid_points(params))]
    out: dict[str, tuple[str, dict]] = {}
    for combo in assignments(params):
        label = ", ".join(f"{n}={combo[n].value}" for n in ("loss", "lr_schedule") if n in combo
                          and combo[n].kind == "fixed")
        for end in ("low", "high"):
            values = {**base, **{name: _end_value(p, end) for name, p in combo.items()}}
            where = f"search{f' ({label})' if label else ''}, {end} end of the ranges"
            out.setdefault(repr(sorted(values.items(), key=lambda kv: kv[0])), (where, values))
    return list(out.values())


def _end_value(p: Param, end: str) -> Any:
    if p.kind == "fixed":
        return p.value
    if p.kind in ("choice", GRID):
        return p.values[0] if end == "low" else p.values[-1]
    return p.low if end == "low" else p.high


def _check_point(point: Mapping[str, Any], params: Mapping[str, Param], where: str) -> list[str]:
    """A point must name searched keys only, with values in range, and branch keys under their branch."""
    problems = []
    active: dict[str, Param] = {}

    def walk(ps: Mapping[str, Param]) -> None:
        for name, p in ps.items():
            active[name] = p
            if p.branches is not None and name in point:
                for value in p.values:
                    if plain(point[name]) == plain(value):
                        walk(p.branches[value])

    walk(params)
    every = {p.name for p, _ in iter_params(params)}
    for key, value in point.items():
        if key not in every:
            problems.append(f"{where}: {key!r} is not a searched key")
        elif key not in active:
            problems.append(f"{where}: {key!r} belongs to a branch this point does not select")
        elif not active[key].contains(value):
            dist = active[key].to_yaml_value()
            problems.append(f"{where}: {key}={value!r} is outside its distribution {dist}")
    return problems


def _where(context: tuple, *, prefix: bool = False) -> str:
    return "".join(f"[{k}={v}]" for k, v in context) if prefix else ", ".join(f"{k}={v}" for k, v in context)
