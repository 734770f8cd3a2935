"""A tiny name -> factory registry shared by models, losses, schedules and optimisers.

A registry is a dict plus a decorator keyed by the name users type on the command line
(``plainnet``, ``hierarchical-cross-entropy``, ``cosine``). Unknown or duplicate names raise
with the sorted list of valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps user-facing names (and optional aliases) to factories.

    Args:
        kind: what the entries are ("model", "loss", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
        """Decorator that registers a factory under ``name`` and ``aliases``.

        Raises:
            ValueError: if the name or an alias is already registered.
        """

        def decorator(fn: F) -> F:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[name] = fn
            for alias in aliases:
                self._aliases[alias] = name
            return fn

        return decorator

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases.

        Raises:
            ValueError: for an unknown name; the message lists the valid names.
        """
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")

    def get(self, name: str) -> F:
        """The factory registered as ``name`` (or an alias); ValueError for an unknown name."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Sorted canonical names (aliases excluded)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
