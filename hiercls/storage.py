"""Writing results safely: exit statuses, writability checks, atomic writes, one-line OS errors.

Every command-line entry point of hiercls (``python -m hiercls.train``, ``python -m hiercls.evaluate``,
``python tune_main.py``) ends with one of these exit statuses:

====  ===========================================================================================
0     done
1     a run whose loss went NaN (the training CLI only; ``tune_main.py`` never exits 1)
2     something fixable in the arguments or input files: a bad flag or spec, a data folder that is not
      CIFAR-100, a corrupt or foreign checkpoint, an unreachable or non-Ray address, a resource request
      no node fits
3     an OS error while writing (no space left, read-only file system, permission denied, a path
      component that is a regular file) or a torn Ray experiment state
130   interrupted (Ctrl-C or SIGTERM); rerun the same command with ``--resume``
====  ===========================================================================================

This module imports only the standard library, so every layer may use it.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_NAN",
    "EXIT_OK",
    "EXIT_WRITE",
    "StorageError",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_text",
    "check_writable",
    "describe_os_error",
    "serialize",
]

EXIT_OK = 0
EXIT_NAN = 1
EXIT_INPUT = 2
EXIT_WRITE = 3
EXIT_INTERRUPTED = 130

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a regular file, not a folder",
    errno.EEXIST: "a part of the path exists and is not a folder",
    errno.EISDIR: "is a folder",
    errno.EIO: "input/output error",
}


class StorageError(OSError):
    """Results could not be written: one line naming the path and the OS error (exit status 3).

    ``errno`` is the underlying error number (e.g. ``errno.ENOSPC``); ``str(err)`` is the user's line.
    """

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = error_number

    def __str__(self) -> str:
        return self.message


def describe_os_error(err: BaseException, path: str | os.PathLike[str], action: str = "write") -> str:
    """One line for an OS error while writing ``path``: ``cannot write 'PATH': no space left on the device
    (ENOSPC)``. Unknown errors keep the OS's own text."""
    number = getattr(err, "errno", None)
    reason = _REASONS.get(number) if number is not None else None
    if reason is None:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    code = errno.errorcode.get(number, "") if number is not None else ""
    return f"cannot {action} {str(path)!r}: {reason}" + (f" ({code})" if code else "")


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path("/")


def check_writable(folder: str | os.PathLike[str], what: str = "folder", *, probe: bool = True) -> Path:
    """Make sure results can be written in ``folder`` before any work starts; returns it as a Path.

    Creates ``folder`` (and its parents) when missing, then creates and removes a small probe file in it,
    so a read-only mount, a missing permission, a full disk or a path under a regular file is found now,
    not after hours of training. ``probe=False`` writes nothing: the folder, or the nearest existing folder
    above it, must be a folder the process may write in (a full disk is not found that way).

    Raises:
        StorageError: naming ``what`` (e.g. ``--out_folder``), the folder and the OS error.
    """
    path = Path(folder).expanduser()
    existing = _first_existing(path)
    if existing.exists() and not existing.is_dir():
        raise StorageError(
            f"{what} {str(path)!r} cannot be used: {str(existing)!r} is a regular file, not a folder",
            errno.ENOTDIR,
        )
    if not probe:
        if not os.access(existing, os.W_OK | os.X_OK):
            err = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            raise StorageError(f"{what}: {describe_os_error(err, existing)}", errno.EACCES)
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".hiercls-write-probe-")
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise StorageError(f"{what}: {describe_os_error(err, path)}", err.errno) from err
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Callable[[Any], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file object) to ``path`` atomically:
    a temporary file in the same folder, fsync, then rename. On any failure the temporary file is removed
    and an existing ``path`` is left as it was (never a torn file).

    Raises:
        StorageError: an OS error (no space, read-only, permission, ...), naming ``path``.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are for colleagues too
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise StorageError(describe_os_error(err, path), err.errno) from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_files(items: list[tuple[str | os.PathLike[str], bytes]]) -> None:
    """Write several files so that either all of them are replaced or none is: every temporary file is
    written and fsynced first, then they are renamed in order. On a failure while writing (e.g. a full
    disk) no file changes and the temporaries are removed.

    Raises:
        StorageError: an OS error, naming the file it happened on.
    """
    temps: list[tuple[Path, str]] = []
    current = Path(items[0][0]) if items else Path(".")
    try:
        for path, data in items:
            current = Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=current.parent, prefix=f".{current.name}.", suffix=".tmp")
            temps.append((current, tmp))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        for path, tmp in temps:
            current = path
            os.replace(tmp, path)
        temps = []
    except OSError as err:
        raise StorageError(describe_os_error(err, current), err.errno) from err
    finally:
        for _, tmp in temps:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def serialize(save: Callable[[Any], None]) -> bytes:
    """Run ``save(file)`` into memory and return the bytes (e.g. ``lambda f: torch.save(obj, f)``):
    serialising first and writing the bytes with plain ``write`` calls turns a full disk into an
    ``OSError`` with its errno, instead of torch's opaque ``unexpected pos`` RuntimeError."""
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()
