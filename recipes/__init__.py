"""The shipped training recipes (YAML), installed as the package data ``hiercls.recipes``: ``python -m
hiercls.train --config NAME``."""
