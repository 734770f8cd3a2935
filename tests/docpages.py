"""``docs/generate.py`` (the generator of the docs' reference pages), importable by the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    """The module ``docs/generate.py``."""
    spec = importlib.util.spec_from_file_location("hiercls_docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
