"""Checks that make ``--resume`` safe, and a guard over Ray Tune's log during a search.

``Tuner.restore`` *unpickles* Ray's saved state: code stored there runs in the driver. Before Ray starts,
:func:`check_trusted` refuses an experiment folder someone else could have written, or holding a pickle
not in its signed record (:mod:`hiercls.experiment.manifest`), unless ``--trust-experiment``; and
:func:`check_state_intact` a torn state (Ray would silently start a *new* search). During the search
:func:`ray_log_guard` turns a storage write failure into one recorded error and a Ctrl-C-like stop, and a
failed restore into an exception. Nothing here unpickles: pickles are only
walked opcode by opcode (:mod:`pickletools`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickletools
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from hiercls.experiment.manifest import ManifestError, manifest_problems
from hiercls.experiment.state import STATE_GLOB, newest_state_file
from hiercls.storage import StorageError

__all__ = ["RestoreFailedError", "TornStateError", "UntrustedExperimentError", "check_state_intact",
           "check_trusted", "newest_state_file", "pickle_problem", "ray_log_guard", "storage_os_error",
           "untrusted_paths"]

# top-level files Ray reads back on restore with pickle (or JSON holding cloudpickled values); Ray takes
# the newest of each pattern (largest name)
PICKLED_STATE = ("search_gen_state-*.json", "searcher-state-*.pkl", "callback-states-*.pkl")
TUNER_FILE = "tuner.pkl"


class UntrustedExperimentError(ValueError):
    """An experiment folder (or a state file in it) that someone else could have written: resuming it
    would run code from it. Exit status 2; ``--trust-experiment`` overrides."""


class TornStateError(StorageError):
    """Ray's saved experiment state is incomplete (a full disk or a kill while it was written), or Ray
    could not restore it. Exit status 3."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class RestoreFailedError(RuntimeError):
    """Raised from Ray's log record "Failed to restore the run state" (instead of Ray starting a new
    search over the experiment); ``__cause__`` is Ray's exception."""


# ---------------------------------------------------------------------------------------------- trust
def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except (ImportError, KeyError):
        return f"uid {uid}"


def untrusted_paths(folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """The paths in an experiment folder that make resuming it unsafe, each with the reason.

    Checked (``os.stat``, following links): the folder; every top-level ``*.pkl`` and ``*.json`` (Ray
    stages and unpickles them, or their cloudpickled values, on restore); every folder directly inside
    (where a file could be planted) and its ``*.pkl`` (``params.pkl``, ``error.pkl``). Unsafe: owned by
    another user than ``os.getuid()``, or world-writable. Checkpoints are not checked: hiercls reads them
    as JSON (toy) or with ``torch.load(weights_only=True)``, which never runs code.
    """
    root = Path(folder)
    me = os.getuid()
    candidates: list[Path] = [root]
    try:
        entries = sorted(root.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        if entry.suffix in (".pkl", ".json") and entry.is_file():
            candidates.append(entry)
        elif entry.is_dir():
            candidates.append(entry)
            with contextlib.suppress(OSError):
                candidates.extend(sorted(p for p in entry.glob("*.pkl") if p.is_file()))
    out: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            info = path.stat()
        except OSError as err:
            out.append((path, f"cannot be checked ({err.strerror or err})"))
            continue
        if info.st_uid != me:
            out.append((path, f"is owned by {_owner_name(info.st_uid)}, not by you ({_owner_name(me)})"))
        elif info.st_mode & stat.S_IWOTH:
            out.append((path, f"is world-writable (mode {stat.S_IMODE(info.st_mode):04o})"))
    return out


def check_trusted(folder: str | os.PathLike[str]) -> None:
    """Refuse to resume an experiment folder another user could have written (:func:`untrusted_paths`),
    or one holding a pickle that is not in its record signed with this user's key
    (:func:`hiercls.experiment.manifest.manifest_problems`: a copy's owner is whoever copied it).

    Raises:
        UntrustedExperimentError: one line naming the first unsafe path, its reason and how many more
            there are, and ``--trust-experiment``; or the user's key cannot be used.
    """
    bad = untrusted_paths(folder)
    if not bad:
        _check_pickles(folder)
        return
    path, reason = bad[0]
    more = f" (and {len(bad) - 1} more path(s))" if len(bad) > 1 else ""
    raise UntrustedExperimentError(
        f"refusing to resume {str(folder)!r}: {str(path)!r} {reason}{more}. Resuming unpickles Ray's saved "
        "state (tuner.pkl, experiment_state-*.json, searcher-state-*.pkl, the trials' *.pkl), which runs "
        "any code planted in those files; fix the owner or permissions (e.g. chmod -R o-w), or pass "
        "--trust-experiment if you trust everyone who can write there"
    )


def _check_pickles(folder: str | os.PathLike[str]) -> None:
    try:
        problems = manifest_problems(folder)
    except ManifestError as err:
        raise UntrustedExperimentError(str(err)) from err
    if problems:
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise UntrustedExperimentError(
            f"refusing to resume {str(folder)!r}: {problems[0]}{more}. Resuming unpickles Ray's saved "
            "state, which runs any code planted in it; pass --trust-experiment if you trust whoever wrote "
            "every file there (its pickles are then recorded as yours)"
        )


# ---------------------------------------------------------------------------------------------- torn state
def _state_json_problem(data: bytes) -> str | None:
    if not data:
        return "it is empty"
    try:
        state = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        return f"it is not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return f"it is not complete JSON: {err.msg} (byte {err.pos} of {len(data)})"
    if not (isinstance(state, dict) and isinstance(state.get("trial_data"), list) and "runner_data" in state):
        return "it lacks Ray's trial_data/runner_data"
    return None


def pickle_problem(data: bytes) -> str | None:
    """Whether ``data`` is one complete pickle, found by walking its opcodes (nothing is executed)."""
    if not data:
        return "it is empty"
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name == "STOP":
                return None
    except (ValueError, EOFError, IndexError, KeyError) as err:  # truncated or garbage opcodes
        return f"it is not a complete pickle ({err})"
    return "it is not a complete pickle (no STOP opcode)"


def _problem(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if path.name.startswith("experiment_state-"):
        return _state_json_problem(data)
    return pickle_problem(data)


def check_state_intact(folder: str | os.PathLike[str]) -> None:
    """Refuse to resume from a torn Ray state (Ray would start a new search): the newest
    ``experiment_state-*.json`` must be complete JSON with Ray's keys, ``tuner.pkl`` and the newest of
    each :data:`PICKLED_STATE` complete pickles (checked without unpickling).

    Raises:
        TornStateError: naming the file and what is wrong, with the way out when an older complete
            ``experiment_state-*.json`` exists.
    """
    root = Path(folder)
    newest = [newest_state_file(root, pattern) for pattern in (STATE_GLOB, *PICKLED_STATE)]
    for path in [root / TUNER_FILE, *newest]:
        problem = _problem(path) if path is not None and path.exists() else None
        if problem is None:
            continue
        hint = ""
        if path.name.startswith("experiment_state-"):
            states = sorted(root.glob(STATE_GLOB), key=lambda p: p.name)[:-1]
            older = [p for p in states if _problem(p) is None]
            if older:
                hint = (f"; an older complete state exists ({older[-1].name}): move {path.name!r} out of the "
                        "folder to resume from it (trials since then run again)")
        raise TornStateError(
            f"cannot resume {str(root)!r}: Ray's saved state {str(path)!r} is torn ({problem}; a full disk "
            "or a killed process while it was written); refusing to resume, since Ray would start a new "
            f"search over the experiment{hint}"
        )


# ---------------------------------------------------------------------------------------------- Ray's log
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]|No space left on device|Disk quota exceeded|Read-only file system")
_TEXT_ERRNO = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
               "Read-only file system": errno.EROFS}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = getattr(exc, "cause", None)  # RayTaskError keeps the trial's exception here
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)


def storage_os_error(exc: BaseException | None = None, text: str = "") -> OSError | None:
    """The storage write failure (no space, quota, read-only file system) in ``exc`` (or its causes, or
    a trial's error from Ray) or in ``text``, as an ``OSError`` with its errno; else None."""
    texts = [text]
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in STORAGE_ERRNOS:
            return OSError(item.errno, os.strerror(item.errno))
        texts.append(str(item))
    for match in _ERRNO_TEXT.finditer("\n".join(texts)):
        number = int(match.group(1)) if match.group(1) else _TEXT_ERRNO[match.group(0)]
        if number in STORAGE_ERRNOS:
            return OSError(number, os.strerror(number))
    return None


# the loggers whose records carry trial failures, failed state uploads and the failed restore
GUARDED_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state",
                   "ray.train._internal.syncer", "ray.tune.tune", "ray._private.worker")
RESTORE_FAILED = "Failed to restore the run state"
RAY_RESUME_HINT = "Experiment has been interrupted, but the most recent state was saved."
"""Ray's own hint after an interrupt (``ray.tune.tune``), "Resume experiment with: Tuner.restore(...)":
dropped, since hiercls prints its own resume command (``python tune_main.py ... --resume``)."""


class _Guard(logging.Filter):
    def __init__(self, on_storage_error: Callable[[OSError], None]) -> None:
        super().__init__()
        self.on_storage_error = on_storage_error

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: judge its template
            message = str(record.msg)
        if message.startswith(RESTORE_FAILED):
            raise RestoreFailedError(
                f"Ray could not restore the experiment: {type(exc).__name__}: {exc}"
            ) from exc
        if message.startswith(RAY_RESUME_HINT):
            return False  # hiercls prints its own resume command
        if record.levelno < logging.WARNING:
            return True
        failure = storage_os_error(exc, message)
        if failure is None:
            return True
        self.on_storage_error(failure)
        return False  # reported once by hiercls, without Ray's traceback


@contextlib.contextmanager
def ray_log_guard(on_storage_error: Callable[[OSError], None]) -> Iterator[None]:
    """While active, Ray's warnings and errors caused by a storage write failure (ENOSPC, EDQUOT, EROFS)
    go to ``on_storage_error(OSError)`` instead of the terminal, Ray's "Failed to restore the run
    state" raises :class:`RestoreFailedError` (Ray would otherwise start a new search), and Ray's resume
    hint (:data:`RAY_RESUME_HINT`) is dropped."""
    guard = _Guard(on_storage_error)
    loggers = [logging.getLogger(name) for name in GUARDED_LOGGERS]
    for logger in loggers:
        logger.addFilter(guard)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(guard)
