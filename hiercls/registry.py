"""Registries: the one place that knows each model, loss, schedule and optimiser by name, with the
parameters it takes.

A registry maps the names users type (``plainnet``, ``hierarchical-cross-entropy``, ``cosine``) to
factories. An entry declares its tunable parameters as :class:`Param` objects (name, type, default,
bounds with open or closed ends, unit, one-line help, the source of the default); everything else is
generated from those declarations: the training flags, the flat YAML keys of
:class:`~hiercls.config.TrainConfig` and its range checks, the search-space checks, the search summary
and the analysis columns. Adding a loss with a new parameter is one decorated class::

    @LOSSES.register("my-loss", params=(
        Param("gamma_x", "float", 1.0, "weight of the extra term", low=0.0, source="paper, sec. 3"),
    ))
    class MyLoss(HierarchyLoss):
        def __init__(self, hierarchy, *, gamma_x): ...

The factory's own arguments must be exactly the declared parameters, keyword-only and without defaults
(the declaration holds the defaults); :meth:`Registry.register` refuses anything else.

The registries are defined here, each with the module that fills it (its *provider*): a lookup
imports the provider on first use, so ``hiercls.config`` can check names and parameters without
importing torch-heavy modules, and no module imports another in a cycle. Unknown names raise with the
sorted list of valid ones.

Parameters of every run rather than of one entry (the base learning rate ``lr``) are declared the same
way, in :data:`TRAINING_PARAMS`.

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

__all__ = [
    "HIERARCHIES", "LOSSES", "MODELS", "OPTIMIZERS", "PARAM_KINDS", "PARAM_ROLES", "SCHEDULES",
    "TRAINING_PARAMS", "Entry", "Param", "Registry", "param_registries",
]

F = TypeVar("F", bound=Callable)

PARAM_KINDS = ("float", "int", "bool", "ints", "floats")
"""Parameter types: a number, an integer, a switch, or a tuple of integers / numbers (YAML list,
``60,120,160`` on the command line, or one number)."""

PARAM_ROLES = ("", "weight", "start", "rate")
"""What a parameter is for, where code acts on it (:attr:`Param.role`); empty: nothing special."""


def _bound(value: float | None, side: str) -> str:
    if value is None:
        return "-inf" if side == "low" else "inf"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Param:
    """One tunable parameter of a registry entry.

    Attributes:
        name: the flat config key and the factory's keyword (the original project's spelling).
        kind: one of :data:`PARAM_KINDS`.
        default: the value used when the key is not set (None: the factory derives it, see ``help``).
        help: one line for ``--help`` and the docs.
        low, high: bounds (None: unbounded); ``low_open``/``high_open`` exclude the bound itself. For
            ``ints``/``floats`` they bound every item.
        unit: ``epochs``, ``fraction``, ``pixels``... (empty: a plain number).
        source: where the default comes from (paper, equation, the original project).
        nullable: None is a valid value (it means "derive it", as the default does).
        term, role: for losses made of terms that start at an epoch: the term's name and ``weight`` or
            ``start`` (the search checks that ASHA's grace period outlasts every ``start`` and that
            not every term can be switched off at once). Role ``rate``: the base learning rate, which
            the LR schedule shapes (:mod:`hiercls.schedules`); a run puts a new value in effect with
            :meth:`hiercls.schedules.LRSchedule.set_base_lr`, not on the loss.
        valid: the valid values in words, where they read better than the range (``a positive
            number``): messages and ``--help`` then say ``valid: <valid>``; the bounds still decide.
        variable: the value may change from one epoch to the next during a run (a config's
            ``value_schedule``, :mod:`hiercls.value_schedule`; population-based training perturbs it): the
            entry's object then changes it in place (:meth:`hiercls.losses.HierarchyLoss.set_values`).
    """

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    unit: str = ""
    source: str = ""
    nullable: bool = False
    term: str = ""
    role: str = ""
    variable: bool = False
    valid: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"parameter {self.name!r}: kind {self.kind!r} is unknown; valid: "
                             f"{', '.join(PARAM_KINDS)}")
        if self.role not in PARAM_ROLES:
            raise ValueError(f"parameter {self.name!r}: role {self.role!r} is unknown; valid: "
                             f"{', '.join(r for r in PARAM_ROLES if r)}")
        if self.default is None and not self.nullable:
            raise ValueError(f"parameter {self.name!r}: a None default needs nullable=True")
        if self.variable and (self.kind != "float" or self.nullable):
            raise ValueError(f"parameter {self.name!r}: only a float that is never None can be variable")
        if self.default is not None:
            object.__setattr__(self, "default", self.check(self.default))

    # ---------------------------------------------------------------- text
    def range_text(self) -> str:
        """The valid range, e.g. ``[0, inf)`` or ``(0, 1]``."""
        lo = "(" if self.low_open or self.low is None else "["
        hi = ")" if self.high_open or self.high is None else "]"
        return f"{lo}{_bound(self.low, 'low')}, {_bound(self.high, 'high')}{hi}"

    def type_text(self) -> str:
        """What a value looks like: ``a number``, ``an integer``, ``true or false``, ``integers``..."""
        return {"float": "a number", "int": "an integer", "bool": "true or false",
                "ints": "integers (a list, or 60,120,160)",
                "floats": "numbers (a list, or 0.3,0.6)"}[self.kind]

    def valid_text(self) -> str:
        """Type and range in one phrase, as error messages and ``--help`` show them."""
        if self.kind == "bool":
            return "true or false"
        text = self.valid or f"{self.type_text()} in {self.range_text()}"
        return text + (" or null" if self.nullable else "")

    # ---------------------------------------------------------------- values
    def convert(self, value: Any) -> Any:
        """``value`` as this parameter's type (YAML/CLI spellings accepted), bounds not checked.

        Raises:
            ValueError: the value has the wrong type (the message names it and what is valid).
        """
        try:
            if value is None:
                if self.nullable:
                    return None
                raise ValueError(f"{self.name}=None is not allowed")
            if self.kind == "bool":
                if isinstance(value, bool):
                    return value
                raise ValueError(f"{self.name}={value!r} is not true or false")
            if self.kind in ("ints", "floats"):
                items = value
                if isinstance(value, str):
                    items = [_number_text(v.strip()) for v in value.split(",") if v.strip()]
                if not isinstance(items, (list, tuple)):
                    items = [items]
                item = "int" if self.kind == "ints" else "float"
                return tuple(_scalar(self.name, item, v, self.unit, entry=True) for v in items)
            return _scalar(self.name, self.kind, value, self.unit)
        except ValueError as err:
            raise ValueError(f"{err}; valid: {self.valid_text()}") from None

    def check(self, value: Any) -> Any:
        """``value`` converted and inside the bounds.

        Raises:
            ValueError: wrong type, not finite, or out of range (``alpha=-1 is out of range; valid range
                [0, inf)``; with ``valid`` set: ``lr=0 is out of range; valid: a positive number``).
        """
        given, value = value, self.convert(value)
        if value is None or self.kind == "bool":
            return value
        for v in value if isinstance(value, tuple) else (value,):
            if not self.inside(v):
                what = f"{self.name} entry {v!r}" if isinstance(value, tuple) else f"{self.name}={given!r}"
                valid = f"valid: {self.valid}" if self.valid else f"valid range {self.range_text()}"
                raise ValueError(f"{what} is out of range; {valid}")
        return value

    def inside(self, value: float) -> bool:
        """Whether the number ``value`` lies inside the bounds (finite)."""
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))


def _number_text(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _scalar(name: str, kind: str, value: Any, unit: str, *, entry: bool = False) -> Any:
    what = f"{name} entry {value!r}" if entry else f"{name}={value!r}"
    if kind == "int":
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ValueError(f"{what} is not a whole {'epoch' if unit == 'epochs' else 'number'}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number")
    if not math.isfinite(float(value)):
        raise ValueError(f"{what} is not finite")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Entry(Generic[F]):
    """A registered factory: its name, aliases, declared parameters and one-line summary."""

    name: str
    factory: F
    params: Mapping[str, Param]
    aliases: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """The first line of the factory's docstring."""
        return (inspect.getdoc(self.factory) or "").split("\n")[0]

    def defaults(self) -> dict[str, Any]:
        """Every declared parameter's default."""
        return {k: p.default for k, p in self.params.items()}


class Registry(Generic[F]):
    """Maps user-facing names (and aliases) to factories with declared parameters.

    Args:
        kind: what the entries are (``model``, ``loss``...), used in messages.
        provider: the module that registers the entries; imported on the first lookup.
        call_args: the factory arguments the caller passes itself (``hierarchy`` for a loss; ``epoch``,
            ``base_lr``, ``epochs`` for a schedule), excluded from the declared parameters.
        listing: the words before the valid parameter names in an "unknown parameter" message.
    """

    def __init__(
        self, kind: str, *, provider: str | None = None, call_args: Sequence[str] = (), listing: str = "valid"
    ) -> None:
        self.kind = kind
        self.listing = listing
        self.provider = provider
        self.call_args = tuple(call_args)
        self._entries: dict[str, Entry[F]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = provider is None

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.provider)

    def register(
        self, name: str, *, aliases: tuple[str, ...] = (), params: Sequence[Param] = ()
    ) -> Callable[[F], F]:
        """Decorator that registers a factory under ``name`` and ``aliases`` with ``params``.

        Raises:
            ValueError: the name or an alias is already registered; a parameter is declared twice, or
                with another kind than the same name has in another entry of this registry.
            TypeError: the factory's arguments (beyond ``call_args``) are not exactly the declared
                parameters, keyword-only and without defaults.
        """
        declared = {p.name: p for p in params}
        if len(declared) != len(params):
            raise ValueError(f"{self.kind} {name!r}: a parameter is declared twice")

        def decorator(fn: F) -> F:
            if getattr(fn, "__module__", None) == "__main__" and self.provider is not None:
                # the provider run as a script (python -m hiercls.hierarchy): this is a second copy of
                # the module; the provider imported under its own name registers the entries
                self._load()
                return fn
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            self._check_signature(name, fn, declared)
            known = self.all_params()
            for p in declared.values():
                if p.name in known and known[p.name].kind != p.kind:
                    raise ValueError(f"{self.kind} {name!r}: parameter {p.name!r} is a {p.kind} here but a "
                                     f"{known[p.name].kind} in {', '.join(self.owners(p.name))}")
            self._entries[name] = Entry(name, fn, dict(declared), tuple(aliases))
            for alias in aliases:
                self._aliases[alias] = name
            return fn

        return decorator

    def _check_signature(self, name: str, fn: Callable, declared: Mapping[str, Param]) -> None:
        target = fn.__init__ if inspect.isclass(fn) else fn
        args = [p for k, p in inspect.signature(target).parameters.items()
                if k not in ("self", *self.call_args) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        names = [p.name for p in args]
        problems = []
        if sorted(names) != sorted(declared):
            problems.append(f"takes {names} but declares {sorted(declared)}")
        problems += [f"{p.name!r} must be keyword-only" for p in args if p.kind != p.KEYWORD_ONLY]
        problems += [f"{p.name!r} has a default in the signature (the declaration holds it)"
                     for p in args if p.default is not p.empty]
        if problems:
            raise TypeError(f"{self.kind} {name!r}: " + "; ".join(problems))

    # ---------------------------------------------------------------- lookups
    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases.

        Raises:
            ValueError: for an unknown name; the message lists the valid names.
        """
        self._load()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")

    def entry(self, name: str) -> Entry[F]:
        """The entry registered as ``name`` (or an alias); ValueError for an unknown name."""
        return self._entries[self.canonical(name)]

    def get(self, name: str) -> F:
        """The factory registered as ``name`` (or an alias); ValueError for an unknown name."""
        return self.entry(name).factory

    def params(self, name: str) -> dict[str, Param]:
        """The parameters entry ``name`` declares, in declaration order."""
        return dict(self.entry(name).params)

    def entry_of(self, factory: Callable) -> Entry[F] | None:
        """The entry whose factory is ``factory`` (a registered class or function), else None."""
        self._load()
        return next((e for e in self._entries.values() if e.factory is factory), None)

    def defaults(self, name: str) -> dict[str, Any]:
        """Entry ``name``'s parameters and their defaults."""
        return self.entry(name).defaults()

    def check(self, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` for entry ``name``, converted and range-checked, with the defaults filled in.

        Raises:
            ValueError: unknown entry or parameter (each names what is valid), a wrong type or a value
                out of range.
        """
        entry = self.entry(name)
        for key in values:
            if key not in entry.params:
                listed = ", ".join(sorted(entry.params)) or "none"
                raise ValueError(
                    f"unknown parameter {key!r} for {self.kind} {entry.name!r}; {self.listing}: {listed}"
                )
        out = entry.defaults()
        out.update({k: entry.params[k].check(v) for k, v in values.items()})
        return out

    def all_params(self) -> dict[str, Param]:
        """Every parameter declared by any entry (the first declaration of each name)."""
        self._load()
        out: dict[str, Param] = {}
        for entry in self._entries.values():
            for key, p in entry.params.items():
                out.setdefault(key, p)
        return out

    def owners(self, param: str) -> list[str]:
        """The entries that declare ``param``, sorted."""
        self._load()
        return sorted(n for n, e in self._entries.items() if param in e.params)

    def unregister(self, name: str) -> None:
        """Remove entry ``name`` and its aliases (for tests that register a throwaway entry)."""
        entry = self.entry(name)
        del self._entries[entry.name]
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def names(self) -> list[str]:
        """Sorted canonical names (aliases excluded)."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)


HIERARCHIES: Registry = Registry("hierarchy", provider="hiercls.hierarchy")
"""The built-in CIFAR-100 hierarchies, ``fn() -> Hierarchy`` (a file path is the other way to name one)."""
MODELS: Registry = Registry("model", provider="hiercls.models", call_args=("num_classes",))
"""Model factories ``fn(num_classes, **params) -> nn.Module`` (:func:`hiercls.models.build_model`); a model's
declared parameters (``speednet``'s ``width``, ``depth``) are flat config keys like a loss's."""
LOSSES: Registry = Registry("loss", provider="hiercls.losses", call_args=("hierarchy", "class_embeddings"))
"""Loss classes ``cls(hierarchy, **params)``; the embedding losses also take ``class_embeddings``
(:func:`hiercls.losses.build_loss`)."""
SCHEDULES: Registry = Registry(
    "schedule", provider="hiercls.schedules", call_args=("epoch", "base_lr", "epochs"),
    listing="valid parameters",
)
"""Pure learning-rate functions ``fn(epoch, *, base_lr, epochs, **params) -> float``."""
OPTIMIZERS: Registry = Registry("optimizer", provider="hiercls.optim", call_args=("params", "config"))
"""Optimiser factories ``fn(params, config) -> torch.optim.Optimizer`` (:mod:`hiercls.optim`)."""


TRAINING_PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("lr", "float", 0.05, "base learning rate, which lr_schedule shapes step by step",
          low=0.0, low_open=True, valid="a positive number", unit="absolute: not rescaled with batch_size",
          source="linear scaling rule 0.1 x batch_size 128 / 256 (Goyal et al. 2017, arXiv:1706.02677); "
                 "the original project hard-coded 0.1",
          role="rate", variable=True),
)}
"""Parameters of every run, not of one registry entry: fixed keys of :class:`~hiercls.config.TrainConfig`
(its field takes the declared default) declared like the entries' parameters, so the training flag, the
config check and the value-schedule check come from the declaration. ``lr`` is the base learning rate
(role ``rate``): the LR schedule shapes it, and a ``value_schedule`` or PB2 may change it from one epoch
to the next (``variable``)."""


def param_registries() -> dict[str, Registry]:
    """The registries whose entries' parameters are flat config keys, by the config key naming the
    entry: ``{"architecture": MODELS, "loss": LOSSES, "lr_schedule": SCHEDULES}``."""
    return {"architecture": MODELS, "loss": LOSSES, "lr_schedule": SCHEDULES}
