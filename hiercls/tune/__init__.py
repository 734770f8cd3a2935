"""Ray Tune search over :func:`hiercls.engine.fit`: search specs, the trainable, the runner.

``hiercls.tune.spec`` parses and validates search-space YAML files without importing Ray; the other
modules import Ray when used. Entry point: ``python tune_main.py``.
"""

from hiercls.tune.spec import Objective, Param, SearchSpec, SpecError, parse_objective

__all__ = ["Objective", "Param", "SearchSpec", "SpecError", "parse_objective"]
