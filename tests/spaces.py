"""Random configurations of a parsed search space, for tests (the searchers draw their own)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hiercls.tune.parameters import Param


def draw(params: Mapping[str, Param], rng: Any) -> dict[str, Any]:
    """One random configuration (``rng``: a ``random.Random``), the same shape as a trial's config: a
    branch's keys only when its value is drawn."""
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
