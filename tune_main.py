"""``python tune_main.py``: the hyperparameter search's command line, kept where the original project's
users expect it. The code is :mod:`hiercls.tune.cli` (also the ``hiercls-tune`` console script), whose
documentation follows.
"""

import sys

from hiercls.tune import cli as _cli
from hiercls.tune.cli import build_parser, cli, main, spec_from_args  # noqa: F401

__doc__ += "\n" + (_cli.__doc__ or "")

if __name__ == "__main__":
    sys.exit(cli())
