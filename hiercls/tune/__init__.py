"""Ray Tune search over :func:`hiercls.engine.fit`: search specs, the trainable, the runner.

``hiercls.tune.spec`` parses and validates search-space YAML files without importing Ray (with
``objective``, ``parameters`` and ``checks``); ``runner`` runs a search (with ``cluster`` and
``summary``), and the modules that need Ray import it when used. Entry point: ``python tune_main.py``.
"""

from hiercls.tune.spec import Objective, Param, SearchSpec, SpecError, parse_objective

__all__ = ["Objective", "Param", "SearchSpec", "SpecError", "parse_objective"]
