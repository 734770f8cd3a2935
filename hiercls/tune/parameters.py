"""The searched parameters of a search space: the ``search:`` mapping parsed into :class:`Param` trees.

Distributions: ``uniform`` (``low``, ``high``), ``loguniform`` (``low > 0``, ``high``), ``int`` (``low``,
``high``, optional ``log``), ``choice`` (``values``: a list, or a mapping of value -> branch of parameters
that exist only when that value is chosen). ``uniform``/``int`` take ``scale: epochs``: bounds as
fractions of the run length. A plain value fixes that key inside its branch. A ``grid`` entry (``values``
as for ``choice``) is enumerated, not drawn: a space of grid entries and plain values is a grid search,
each of its :func:`grid_points` run once. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

from hiercls.config import TrainConfig

__all__ = [
    "DIST_KEYS", "DIST_TYPES", "ENTRY_TYPES", "GRID", "TRIAL_KEYS", "Param", "assignments", "grid_points",
    "grid_size", "is_grid", "is_number", "iter_params", "parse_params", "plain",
]

DIST_TYPES = ("uniform", "loguniform", "int", "choice")
"""The distributions a TPE search draws from."""
GRID = "grid"
"""The entry type of a grid search: its values are enumerated, not drawn."""
ENTRY_TYPES = (*DIST_TYPES, GRID)
DIST_KEYS = {
    "uniform": {"type", "low", "high", "scale"},
    "loguniform": {"type", "low", "high"},
    "int": {"type", "low", "high", "log", "scale"},
    "choice": {"type", "values"},
    GRID: {"type", "values"},
}
# keys a trial sets itself: searching or fixing them in the space makes no sense
TRIAL_KEYS = ("epochs", "seed", "split_seed", "out_folder", "evaluate_test", "device", "num_threads",
              "download")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched (or, inside a branch, fixed) key: ``kind`` is one of :data:`ENTRY_TYPES` or ``fixed``;
    a choice (or grid) with ``branches`` (value -> parameters active only under it) is conditional."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    scale: str | None = None
    values: tuple[Any, ...] = ()
    branches: dict[Any, dict[str, Param]] | None = None
    value: Any = None

    def to_yaml_value(self) -> Any:
        """The plain YAML form (after resolution: no ``scale``)."""
        if self.kind == "fixed":
            return plain(self.value)
        if self.kind in ("choice", GRID):
            if self.branches is not None:
                values = {v: {k: p.to_yaml_value() for k, p in self.branches[v].items()} for v in self.values}
            else:
                values = [plain(v) for v in self.values]
            return {"type": self.kind, "values": values}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.kind == "int" and self.log:
            out["log"] = True
        if self.scale:
            out["scale"] = self.scale
        return out

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be drawn from this parameter."""
        if self.kind == "fixed":
            return plain(value) == plain(self.value)
        if self.kind in ("choice", GRID):
            return any(plain(value) == plain(v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and float(value) != int(value):
            return False
        return self.low <= value <= self.high

    def can_be_zero(self) -> bool:
        """Whether exactly 0 is a possible draw (a continuous range touching 0 does not count)."""
        if self.kind == "fixed":
            return self.value == 0
        if self.kind in ("choice", GRID):
            return any(v == 0 and not isinstance(v, bool) for v in self.values)
        if self.kind == "int":
            return self.low <= 0 <= self.high
        return False

    def can_be_positive(self) -> bool:
        if self.kind == "fixed":
            return is_number(self.value) and self.value > 0
        if self.kind in ("choice", GRID):
            return any(is_number(v) and v > 0 for v in self.values)
        return self.high is not None and self.high > 0

    def largest(self) -> float | None:
        if self.kind == "fixed":
            return float(self.value) if is_number(self.value) else None
        if self.kind in ("choice", GRID):
            nums = [float(v) for v in self.values if is_number(v)]
            return max(nums) if nums else None
        return self.high


def is_number(v: Any) -> bool:
    """Whether ``v`` is a number (a bool is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numeric(v: Any) -> Any:
    """``v``, or the float a text such as ``"1e-2"`` spells (YAML 1.1 reads it as text)."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    return v


def plain(value: Any) -> Any:
    """``value`` with tuples as lists (how YAML and JSON give them back), for comparisons."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def parse_params(raw: Any, where: str, problems: list[str], *, epochs: int | None) -> dict[str, Param]:
    """The ``search:`` mapping (or one branch of it) as parameters; problems are appended, not raised.
    ``epochs`` resolves ``scale: epochs`` bounds (None leaves them as written)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be a mapping of config keys to distributions, got {raw!r}")
        return {}
    out: dict[str, Param] = {}
    valid = set(TrainConfig.valid_keys())
    for name, body in raw.items():
        path = f"{where}.{name}"
        if name not in valid:
            problems.append(f"{path}: unknown config key {name!r}")
            continue
        seed_grid = name == "seed" and isinstance(body, Mapping) and body.get("type") == GRID
        if name in TRIAL_KEYS and not seed_grid:  # a grid over seed repeats configurations (hiercls-confirm)
            problems.append(f"{path}: {name!r} is set by the search itself and cannot be searched"
                            + (" (a type: grid entry may list seeds)" if name == "seed" else ""))
            continue
        param = _parse_param(name, body, path, problems, epochs=epochs)
        if param is not None:
            out[name] = param
    return out


def _parse_param(name: str, body: Any, path: str, problems: list[str], *, epochs: int | None) -> Param | None:
    if not (isinstance(body, Mapping) and "type" in body):
        if isinstance(body, Mapping):
            problems.append(f"{path}: a distribution needs 'type' (one of {', '.join(ENTRY_TYPES)})")
            return None
        return Param(name, "fixed", value=body)
    kind = body["type"]
    if kind not in ENTRY_TYPES:
        problems.append(f"{path}: unknown distribution type {kind!r}; valid: {', '.join(ENTRY_TYPES)}")
        return None
    unknown = sorted(set(body) - DIST_KEYS[kind])
    if unknown:
        problems.append(f"{path}: unknown key(s) {', '.join(unknown)} for type {kind}; valid: "
                        + ", ".join(sorted(DIST_KEYS[kind])))
    if kind in ("choice", GRID):
        return _parse_choice(name, body.get("values"), path, problems, epochs=epochs, kind=kind)
    return _parse_range(name, kind, body, path, problems, epochs=epochs)


def _parse_range(name: str, kind: str, body: Mapping[str, Any], path: str, problems: list[str], *,
                 epochs: int | None) -> Param | None:
    """A ``uniform``, ``loguniform`` or ``int`` entry (``scale: epochs`` resolved with ``epochs``)."""
    # YAML 1.1 (PyYAML) reads 1e-2 (no dot) as text: a bound written as a number is taken as one
    low, high = _numeric(body.get("low")), _numeric(body.get("high"))
    bad = [f"{path}: {key} must be a finite number, got {v!r}" for key, v in (("low", low), ("high", high))
           if not is_number(v) or not math.isfinite(v)]
    if bad:
        problems += bad
        return None
    scale = body.get("scale")
    if scale is not None and scale != "epochs":
        problems.append(f"{path}: scale {scale!r} is unknown; valid: epochs (bounds as fractions of the run)")
        scale = None
    if scale == "epochs" and epochs is not None:
        low, high = low * epochs, high * epochs
        scale = None
    if kind == "int":
        if scale is None and (float(low) != int(low) or float(high) != int(high)):
            if "scale" not in body:
                problems.append(f"{path}: int bounds must be whole numbers, got [{low}, {high}]")
                return None
            low, high = math.ceil(low), math.floor(high)  # rounded fractions of the run
        low, high = int(low), int(high)
    log = bool(body.get("log", False)) or kind == "loguniform"
    if high < low or (high == low and kind != "int"):
        problems.append(f"{path}: {'empty' if high == low else 'inverted'} range [{low}, {high}]")
        return None
    if log and low <= 0:
        problems.append(f"{path}: a log-scale range needs low > 0, got [{low}, {high}]")
        return None
    if kind != "int":
        low, high = float(low), float(high)
    return Param(name, kind, low=low, high=high, log=log and kind == "int", scale=scale)


def _parse_choice(name: str, values: Any, path: str, problems: list[str], *, epochs: int | None,
                  kind: str = "choice") -> Param | None:
    """A ``choice`` or ``grid`` entry: a list of values, or a mapping of value -> branch. A grid's values
    may also be lists (a point for an ``ints``/``floats`` key); Optuna's choices may not."""
    if isinstance(values, Mapping):
        if not values:
            problems.append(f"{path}: {kind} has no values")
            return None
        branches = {value: parse_params(branch or {}, f"{path}[{value}]", problems, epochs=epochs)
                    for value, branch in values.items()}
        return Param(name, kind, values=tuple(values), branches=branches)
    if not isinstance(values, (list, tuple)) or not values:
        problems.append(f"{path}: {kind} needs a non-empty list (or mapping of branches) under 'values'")
        return None
    for v in values:
        if kind == GRID and isinstance(v, (list, tuple)) and all(_is_scalar(x) for x in v):
            continue
        if not _is_scalar(v):
            problems.append(f"{path}: {kind} values must be numbers, strings, booleans or null, got {v!r}")
            return None
    if len({repr(plain(v)) for v in values}) != len(values):
        problems.append(f"{path}: {kind} values repeat: {list(values)!r}")
    return Param(name, kind, values=tuple(tuple(v) if isinstance(v, list) else v for v in values))


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def iter_params(params: Mapping[str, Param], context: tuple = ()) -> Iterator[tuple[Param, tuple]]:
    """Every parameter with the branch choices above it, ``((name, value), ...)``."""
    for p in params.values():
        yield p, context
        if p.branches is not None:
            for value, branch in p.branches.items():
                yield from iter_params(branch, (*context, (p.name, value)))


def assignments(params: Mapping[str, Param]) -> Iterator[dict[str, Param]]:
    """Every combination of branch choices, as the flat map of the parameters active in it."""
    flat = {n: p for n, p in params.items() if p.branches is None}
    options = [[{p.name: Param(p.name, "fixed", value=value), **sub}
                for value in p.values for sub in assignments(p.branches[value])]
               for p in params.values() if p.branches is not None]
    for combo in itertools.product(*options):
        yield {**flat, **_merged(combo)}


def _merged(parts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return {k: v for part in parts for k, v in part.items()}


# ---------------------------------------------------------------------------------------------- grids
def is_grid(params: Mapping[str, Param]) -> bool:
    """Whether the space has a ``grid`` entry anywhere (then it is a grid search)."""
    return any(p.kind == GRID for p, _ in iter_params(params))


def _options(p: Param) -> list[Any] | None:
    """The values a point may give ``p`` (None: a distribution, which no grid enumerates)."""
    if p.kind == "fixed":
        return [p.value]
    if p.kind == GRID:
        return list(p.values)
    return None


def grid_size(params: Mapping[str, Param]) -> int:
    """The number of points :func:`grid_points` yields, without listing them (a distribution counts one)."""
    total = 1
    for p in params.values():
        if p.branches is not None and p.kind == GRID:
            total *= sum(grid_size(p.branches[v]) for v in p.values)
        else:
            total *= len(_options(p) or [None])
    return total


def grid_points(params: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every point of a grid search (the searched keys each trial's config holds, plain values included):
    every combination of the entries' values, the first entry varying slowest, values in the order
    written; a branched grid gives, for each value in order, that value with each point of its branch.
    Values are the YAML's (lists for ``ints``/``floats`` keys); distributions are left out."""
    parts: list[list[dict[str, Any]]] = []
    for name, p in params.items():
        if p.branches is not None and p.kind == GRID:
            parts.append([{name: value, **sub} for value in p.values
                          for sub in grid_points(p.branches[value])])
            continue
        options = _options(p)
        if options is not None:
            parts.append([{name: plain(v)} for v in options])
    return [_merged(combo) for combo in itertools.product(*parts)]
