"""SIGTERM from a batch system: most (SLURM at a time limit, ``scancel``, Kubernetes) signal the driver's
whole process group or job, Ray's local head processes (``gcs_server``, ``raylet``) included. They then
shut down, and Ray can neither save its state nor stop the trials: its driver would wait 60 s for the GCS
and exit 1. :class:`SigtermStop` handles SIGTERM as Ctrl-C (Tune saves its state and stops) and, should the
search not have ended :data:`STOP_GRACE_S` seconds later, finishes from what is on disk (Ray saved its
state at the last epoch, each running trial its checkpoint) through ``finish``, ends the processes this
driver started (Ray's agents ignore SIGTERM) and exits 130 at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiercls.storage import EXIT_INTERRUPTED

__all__ = ["STOP_GRACE_S", "SigtermStop", "children"]

STOP_GRACE_S = 15.0
"""Seconds a search has to stop after SIGTERM (Tune's own stop takes a few) before it finishes from disk."""
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state letter, parent pid) of a process from ``/proc/PID/stat``; None when it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, fields[0], int(fields[1])


def children(pid: int, *, recursive: bool = False) -> list[int]:
    """The live processes whose parent is ``pid`` (with ``recursive``, their descendants too); empty
    without ``/proc``."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in _PROC.iterdir():
            if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None and info[1] != "Z":
                parents.setdefault(info[2], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        found = parents.get(todo.pop(), [])
        out += found
        todo += found if recursive else []
    return out


class SigtermStop:
    """The SIGTERM handler of a search (``signal.signal(signal.SIGTERM, stop)``): Ctrl-C (SIGINT, which Tune
    turns into "save and stop"), and a watchdog that, unless :meth:`disarm` is called within ``grace``
    seconds, calls ``finish()`` (the table and ``summary.csv`` from disk), SIGKILLs every process this driver
    had started when the signal came, and exits with status 130 without Ray's shutdown (which would wait for
    a lost GCS)."""

    def __init__(self, finish: Callable[[], None], grace: float = STOP_GRACE_S) -> None:
        self.finish, self.grace = finish, grace
        self._lock = threading.Lock()
        self._disarmed = False

    def __call__(self, number: int, frame: Any) -> None:
        started = children(os.getpid(), recursive=True)  # before they are re-parented as they end
        threading.Thread(target=self._watch, args=(started,), daemon=True, name="hiercls-sigterm").start()
        signal.raise_signal(signal.SIGINT)

    def disarm(self) -> None:
        """The search ended (or Ray shut down) in time: the watchdog does nothing."""
        with self._lock:
            self._disarmed = True

    def _watch(self, started: list[int]) -> None:
        time.sleep(self.grace)
        with self._lock:
            if self._disarmed:
                return
            try:
                self.finish()
            except Exception as err:  # noqa: BLE001 - the exit below must happen; say what went wrong
                print(f"the search's table could not be made from disk: {type(err).__name__}: {err}",
                      file=sys.stderr)
            finally:
                for pid in started:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(EXIT_INTERRUPTED)
