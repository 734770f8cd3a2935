"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from hiercls.config import ConfigError

__all__ = ["parse_overrides"]


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (from ``--set``) to a dict; values are parsed as YAML (``0.1``,
    ``true``, ``[60, 120]``, ``null``).

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip().replace("-", "_")] = yaml.safe_load(text) if text.strip() else None
    return out
