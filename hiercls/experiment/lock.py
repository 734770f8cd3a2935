"""One writer per experiment: an exclusive lock held for a search driver's life.

:func:`experiment_lock` takes an OS file lock (``fcntl.flock``) on :data:`LOCK_FILE` in the experiment
folder before anything is written, and records its holder (host, PID, start time, command) in it. A second
search or ``--resume`` of the same experiment is refused in one line naming the holder
(:class:`ExperimentInUseError`). The kernel releases the lock when its process ends, however it ends; the
record is cleared on a normal exit. A record left behind is judged by its holder:

* a dead process on this host (a killed driver): the lock is taken over;
* a process on another host: refused with the way to clear it (the file system may lock per host only, as
  NFS mounted with ``local_lock`` does, so another host's driver may still be running);
* on a file system without locks (``flock`` fails with ENOLCK or EOPNOTSUPP) the record alone decides.

Imports only the standard library and :mod:`hiercls.storage`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hiercls.storage import StorageError, describe_os_error

__all__ = ["LOCK_FILE", "ExperimentInUseError", "Holder", "check_not_in_use", "experiment_lock",
           "lock_holder"]

LOCK_FILE = ".hiercls.lock"
"""The lock file in an experiment folder: JSON ``{"host", "pid", "started", "command"}`` of the driver
holding it, empty when free. Not part of the experiment's results: a copy may leave it out."""

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class ExperimentInUseError(ValueError):
    """Another driver holds the experiment's lock (exit status 2: wait, or clear a stale lock)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) an experiment's lock."""

    host: str
    pid: int
    started: float
    command: str

    def alive(self) -> bool:
        """Whether the holder is a running process. Only answerable on its own host: True elsewhere."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True

    def describe(self) -> str:
        """``process PID on host HOST (since YYYY-mm-dd HH:MM:SS: COMMAND)``, local time."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"process {self.pid} on host {self.host} (since {when}: {self.command})"


def _parse(text: str) -> Holder | None:
    try:
        data = json.loads(text)
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]),
                      str(data.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None  # empty (free) or torn: no holder recorded


def lock_holder(folder: str | os.PathLike[str]) -> Holder | None:
    """The holder recorded in ``folder``'s lock file (None: none, or the file is missing or unreadable).
    The record says who took the lock last; whether it is still held is :func:`experiment_lock`'s test."""
    try:
        return _parse((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def check_not_in_use(folder: str | os.PathLike[str]) -> None:
    """Refuse, without taking the lock, an experiment whose lock record names a driver still running that
    holds the lock (another host's record counts as running; on this host a record whose kernel lock no
    one holds does not: a copy, or a PID used again). Used by read-only checks (``--check``, the plan).

    Raises:
        ExperimentInUseError: naming the holder.
    """
    holder = lock_holder(folder)
    if _stale(holder):
        return
    held = _held(Path(folder))
    if held is False and holder.host == socket.gethostname():
        return  # a record no one holds: a copy made while its driver ran, or a PID used again since
    raise _refusal(Path(folder), holder)


def _held(folder: Path) -> bool | None:
    """Whether some process holds the kernel lock on ``folder``'s lock file (probed with a shared lock that
    is let go at once); None where the file system has no locks."""
    try:
        import fcntl

        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


def _refusal(folder: Path, holder: Holder | None) -> ExperimentInUseError:
    path = folder / LOCK_FILE
    if holder is None:
        return ExperimentInUseError(f"experiment {str(folder)!r} is in use by another driver (lock "
                                    f"{str(path)!r}); wait for it to end")
    here = holder.host == socket.gethostname()
    clear = ("" if here else f"; if no search runs there any more (the host was lost or its driver was "
             f"killed), delete {str(path)!r} and run the command again")
    return ExperimentInUseError(f"experiment {str(folder)!r} is in use by {holder.describe()}: one driver "
                                f"at a time; wait for it to end{clear}")


def _stale(holder: Holder | None) -> bool:
    """A record whose holder cannot be running: none, or a dead process on this host (or this process)."""
    return holder is None or holder.pid == os.getpid() and holder.host == socket.gethostname() \
        or not holder.alive()


def _try_lock(folder: Path) -> int | None:
    """One attempt: the open, locked lock file's descriptor, or None when it was replaced meanwhile (a stale
    lock cleared by another driver: try again).

    Raises:
        ExperimentInUseError: another driver holds it.
    """
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = True
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(folder)
            if holder is not None and holder.host == socket.gethostname() and not holder.alive():
                # held by a process that inherited it from a dead driver: a new lock file takes over
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        os.unlink(path)
                os.close(fd)
                return None
            raise _refusal(folder, holder) from None
        except (ImportError, OSError) as err:
            if isinstance(err, OSError) and err.errno not in _NO_LOCKS:
                raise
            locked = False  # a file system without locks: the record alone decides
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                return None
        except FileNotFoundError:
            os.close(fd)
            return None
        holder = lock_holder(folder)
        # locked: another host's live record still counts (its lock may be invisible here)
        if not _stale(holder) and (not locked or holder.host != socket.gethostname()):
            raise _refusal(folder, holder)
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _write_record(fd: int) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


def _acquire(root: Path) -> int:
    for _ in range(5):
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # the folder removed by a driver that just ended
            fd = _try_lock(root)
            if fd is not None:
                return fd
    raise _refusal(root, lock_holder(root))


@contextlib.contextmanager
def experiment_lock(folder: str | os.PathLike[str]) -> Iterator[Holder]:
    """Hold ``folder``'s lock (creating the folder) while the block runs; yields this driver's record.

    The folder and the lock file are removed afterwards when the folder held nothing else (a search refused
    before it wrote anything leaves no trace).

    Raises:
        ExperimentInUseError: another driver holds it (one line naming its host, PID, start and command,
            and for another host how to clear a stale lock).
        StorageError: the folder or the lock file cannot be created or written (exit status 3).
    """
    root = Path(folder)
    fd = -1
    try:
        fd = _acquire(root)
        _write_record(fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise StorageError(describe_os_error(err, root / LOCK_FILE), err.errno) from err
    try:
        yield lock_holder(root) or Holder(socket.gethostname(), os.getpid(), time.time(), "")
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            os.close(fd)  # releases the flock
        with contextlib.suppress(OSError):
            if [p.name for p in root.iterdir()] == [LOCK_FILE]:
                (root / LOCK_FILE).unlink()
                root.rmdir()
