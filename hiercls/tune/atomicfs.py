"""Every file Ray Tune writes to the experiment folder written atomically (never a torn file).

Ray's ``pyarrow.fs.copy_files`` truncates and then writes, so a full disk or a kill would leave a torn
``experiment_state-*.json`` (``Tuner.restore`` then starts a *new* search), ``error.pkl`` or
``params.json``. :func:`atomic_local_filesystem` (Ray's ``storage_filesystem``) writes each file to
``.NAME.XXXXXXXX.hiercls-tmp`` beside it and renames it over ``NAME`` only once written and closed without
an error (state files fsynced first); an ``error.pkl`` torn anyway (written before) reads as missing. A file
Ray unpickles on restore is recorded in the experiment's signed record first
(:mod:`hiercls.experiment.manifest`).

Old checkpoints are deleted late: Ray deletes a trial's older checkpoint as soon as a newer one is
registered, while the saved state may still name it. The deletion waits until two uploads of
``experiment_state-*.json`` begun after the request have completed; :func:`flush_deferred_deletions`
deletes the rest once a search ends with its state saved.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs as pafs

from hiercls.experiment.manifest import record, signed_name
from hiercls.tune.guard import pickle_problem

__all__ = ["TEMP_SUFFIX", "AtomicLocalHandler", "atomic_local_filesystem", "flush_deferred_deletions",
           "pending_deletions", "remove_stale_temporaries"]

TEMP_SUFFIX = ".hiercls-tmp"
ERROR_PICKLE = "error.pkl"  # a trial's error as Ray pickled it
STATE_PATTERNS = ("tuner.pkl", "experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                  "callback-states-*.pkl")


_CHECKPOINT_DIR = re.compile(r"checkpoint_\d+")
_LOCK = threading.Lock()
# checkpoint folders whose deletion waits: path -> completed experiment-state uploads begun after the request
_DEFERRED: dict[str, int] = {}
_UPLOADS_NEEDED = 2


def _delete_now(path: str) -> None:
    with contextlib.suppress(OSError):
        pafs.LocalFileSystem().delete_dir(path)


def _state_upload_done(waiting: list[str]) -> None:
    """An ``experiment_state-*.json`` upload that began while ``waiting`` were deferred has completed."""
    ready = []
    with _LOCK:
        for path in waiting:
            if path in _DEFERRED:
                _DEFERRED[path] += 1
                if _DEFERRED[path] >= _UPLOADS_NEEDED:
                    ready.append(path)
                    del _DEFERRED[path]
    for path in ready:
        _delete_now(path)


def pending_deletions() -> list[str]:
    """The checkpoint folders this process has been asked to delete and has not deleted yet."""
    with _LOCK:
        return sorted(_DEFERRED)


def flush_deferred_deletions(folder: str | os.PathLike[str], *, delete: bool = True) -> int:
    """Delete the deferred checkpoint folders under ``folder`` (an experiment) now; call it only once its
    final state is saved. ``delete=False`` forgets and keeps them (before a resume in the same process:
    the restored state may name them). Returns how many there were."""
    root = os.path.join(os.path.abspath(folder), "")
    with _LOCK:
        paths = [p for p in _DEFERRED if os.path.abspath(p).startswith(root)]
        for path in paths:
            del _DEFERRED[path]
    if delete:
        for path in paths:
            _delete_now(path)
    return len(paths)


class _AtomicWriter:
    """A binary file object for ``pyarrow.PythonFile``: writes go to a temporary file, ``close`` renames
    it over the target; a failed write or close removes the temporary file and leaves the target as it was.
    Writes are unbuffered (``os.write``) so that a full disk fails ``write`` itself: ``copy_files`` ignores
    errors raised by ``close`` (pyarrow 26), and a lost upload error would let Ray delete the previous
    checkpoint for one never written (a file system reporting errors only on close still loses them)."""

    def __init__(self, path: str) -> None:
        self.path = path
        folder, name = os.path.split(path)
        self._fsync = any(fnmatch.fnmatchcase(name, pattern) for pattern in STATE_PATTERNS)
        if folder:
            os.makedirs(folder, exist_ok=True)  # as pyarrow's LocalFileSystem does for an output stream
        for _ in range(100):
            candidate = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
            try:
                # 0o666 through the umask: the same permissions a plain open() gives the final file
                self._fd: int | None = os.open(
                    candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
                )
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 100 random collisions
            raise FileExistsError(errno.EEXIST, "no free temporary name", path)
        self._tmp: str | None = candidate
        self._size = 0
        # a file Ray unpickles on restore: its SHA-256 goes into the signed record before it is in place
        self._signed = signed_name(path)
        self._sha = hashlib.sha256() if self._signed else None
        self.closed = False
        self._waiting: list[str] | None = None
        if fnmatch.fnmatchcase(name, "experiment_state-*.json"):
            with _LOCK:
                self._waiting = list(_DEFERRED)

    def _discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
        self.closed = True

    def write(self, data: Any) -> int:
        if self._fd is None:
            raise ValueError(f"write to a closed file: {self.path}")
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.write(self._fd, view)
                if self._sha is not None:
                    self._sha.update(view[:written])
                view = view[written:]
                self._size += written
        except BaseException:
            self._discard()
            raise
        return len(memoryview(data).cast("B"))

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if self._signed is not None:
                record(*self._signed, self._sha.hexdigest())
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self._discard()
            raise
        self.closed = True
        if self._waiting:
            _state_upload_done(self._waiting)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """The local file system with atomic file writes (see the module docstring); every other operation
    is pyarrow's ``LocalFileSystem``'s."""

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()

    def __reduce__(self):
        return (AtomicLocalHandler, ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __hash__(self) -> int:
        return hash(AtomicLocalHandler)

    def get_type_name(self) -> str:
        return "hiercls-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self._fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [_hide_torn_error(info) for info in self._fs.get_file_info(paths)]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        if _CHECKPOINT_DIR.fullmatch(os.path.basename(path.rstrip("/"))):
            with _LOCK:  # a trial's old checkpoint: deleted once the saved state no longer names it
                _DEFERRED.setdefault(path, 0)
            return
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError(errno.EPERM, "refusing to delete the contents of the root folder")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 24):
                target.write(chunk)

    def open_input_stream(self, path: str) -> Any:
        return self._fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return pyarrow.PythonFile(_AtomicWriter(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self._fs.open_append_stream(path)


def _hide_torn_error(info: pafs.FileInfo) -> pafs.FileInfo:
    """An ``error.pkl`` that is not one complete pickle reads as missing: Ray then takes the trial's error
    from ``error.txt`` instead of failing to build the results with ``EOFError``."""
    if info.base_name != ERROR_PICKLE or info.type != pafs.FileType.File:
        return info
    try:
        torn = pickle_problem(Path(info.path).read_bytes()) is not None
    except OSError:
        torn = True
    return pafs.FileInfo(info.path, pafs.FileType.NotFound) if torn else info


def atomic_local_filesystem() -> pafs.PyFileSystem:
    """A pyarrow filesystem for ``RunConfig(storage_filesystem=...)``: local paths, atomic writes."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete the ``*.hiercls-tmp`` files a killed process left in an experiment folder (top level, trial
    folders, their checkpoints); returns how many were removed."""
    removed = 0
    for pattern in (f".*{TEMP_SUFFIX}", f"*/.*{TEMP_SUFFIX}", f"*/*/.*{TEMP_SUFFIX}"):
        for path in Path(folder).glob(pattern):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed += 1
    return removed
