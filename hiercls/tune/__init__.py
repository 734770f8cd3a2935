"""Ray Tune search over :func:`hiercls.engine.fit`: the spec (``spec``, no Ray), the modes and the plan
decided before Ray starts (``modes``, ``plan``), the Ray objects (``builders``), the run (``runner``).
Entry point: ``python tune_main.py`` (``cli``).
"""

from hiercls.tune.spec import Objective, Param, SearchSpec, SpecError, parse_objective

__all__ = ["Objective", "Param", "SearchSpec", "SpecError", "parse_objective"]
