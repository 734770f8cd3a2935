"""Run a CLI's ``main(argv)`` in the test process, as ``python -m MODULE ARGS`` would run it in a child.

Tests that check what a CLI does (its exit status, its output, the files it writes) call it through
:func:`run_main` rather than a subprocess: no interpreter start and no second ``import torch`` (a few
seconds each on 2 cores). What ``main`` changes in the process beyond its result is put back afterwards,
so the next test sees the process as before: torch's thread count (``--num_threads``), the root logger
(``logging.basicConfig(force=True)`` in ``hiercls.train``), the SIGINT/SIGTERM handlers, and the torch,
Python and NumPy random states. Python warnings do not reach the captured stderr (pytest records them);
the tests' one-line-error checks ignore warning lines anyway.

Tests that need a real process (a signal, a fresh interpreter's imports, an installed script, ``python
-m`` itself) keep their subprocess and say why beside it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import random
import signal
import subprocess
from collections.abc import Iterator, Sequence

import numpy as np
import torch


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """Put back what a CLI's ``main`` may change in the process (see the module docstring)."""
    threads = torch.get_num_threads()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    handlers_by_signal = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        for sig, handler in handlers_by_signal.items():
            signal.signal(sig, handler)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        torch.set_num_threads(threads)


def exit_code(exit_info: SystemExit) -> int:
    """The process exit status a ``SystemExit`` stands for (None: 0; a message: 1, as Python does)."""
    code = exit_info.code
    return 0 if code is None else code if isinstance(code, int) else 1


def run_main(argv: Sequence[str], module: str = "hiercls.train", capsys=None) -> subprocess.CompletedProcess:
    """``MODULE.main(argv)`` in this process, returned as ``subprocess.run(..., capture_output=True,
    text=True)`` returns ``python -m MODULE ARGV``: the exit status (``main``'s return value, or the
    code of a ``SystemExit``, e.g. argparse's 2) and what it wrote to stdout and stderr.

    Output is read through ``capsys`` when a test passes it (earlier output is dropped first), else
    (in a module-scoped fixture, where capsys is not available) through redirected ``sys.stdout`` and
    ``sys.stderr``. An exception that escapes ``main`` (a traceback in a real process) fails the test.
    """
    main = importlib.import_module(module).main
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with restored_process_state(), contextlib.ExitStack() as redirected:
        if capsys is None:
            redirected.enter_context(contextlib.redirect_stdout(out))
            redirected.enter_context(contextlib.redirect_stderr(err))
        else:
            capsys.readouterr()
        try:
            status = main(argv)
        except SystemExit as exit_info:
            status = exit_code(exit_info)
    status = 0 if status is None else status
    if capsys is not None:
        captured = capsys.readouterr()
        stdout, stderr = captured.out, captured.err
    else:
        stdout, stderr = out.getvalue(), err.getvalue()
    return subprocess.CompletedProcess(["python", "-m", module, *argv], status, stdout, stderr)


TIMING = ("epoch_seconds", "images_per_second", "compile_seconds")
"""The epoch record keys that measure time: they differ between two runs of one config."""


def without_timing(history):
    """Epoch records without their :data:`TIMING` keys (to compare two runs' histories exactly)."""
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def synthetic_cifar():
    """A tiny seeded stand-in for CIFAR-100 in memory (uint8 [200, 3, 32, 32] training images, labels 0..99
    twice; 100 test images): real training runs in seconds without the data."""
    from hiercls.data import Cifar100

    g = torch.Generator().manual_seed(0)
    return Cifar100(
        train_images=torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.arange(200) % 100,
        test_images=torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.arange(100) % 100,
    )
