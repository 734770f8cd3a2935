"""The shipped search spaces (YAML), installed as the package data ``hiercls.search_spaces``."""
