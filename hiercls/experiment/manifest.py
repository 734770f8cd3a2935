"""Only our own pickles are unpickled: a signed record of every pickle Ray reads back from an experiment.

``Tuner.restore`` unpickles Ray's saved state (``tuner.pkl``, the state files, the trials' ``*.pkl``), so a
planted pickle runs code in the driver. Whoever can copy a folder owns the copy, so no owner or permission
check can tell who wrote a pickle. Instead, every such file the search writes is recorded with its SHA-256
in :data:`MANIFEST_FILE` (one per Ray experiment folder: the experiment, each ``grow-<k>`` part), and the
record is authenticated with HMAC-SHA256 (RFC 2104) under a key private to the user
(:func:`key_path`: created once, 32 random bytes, mode 0600). Before a resume, :func:`manifest_problems`
finds any pickle not in an authentic record. A copy of one's own experiment keeps its record (same user,
same key); a folder from someone else, or from hiercls before it kept records, needs the explicit opt-in
(``--trust-experiment``), after which :func:`adopt` records its files under the user's key.

A file is recorded *before* it is renamed into place, and each name keeps its last :data:`KEEP` digests,
so whatever a killed writer left on disk is in the record. Imports only the standard library and
:mod:`hiercls.storage`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from hiercls.storage import atomic_write_text

__all__ = ["KEY_ENV", "MANIFEST_FILE", "PICKLED_STATE", "ManifestError", "adopt", "key_path",
           "manifest_problems", "pickled_files", "record", "signed_name", "user_key"]

MANIFEST_FILE = "pickle_manifest.json"
"""``{"version": 1, "files": {relative path: [sha256 hex, ...]}, "hmac": hex}`` in a Ray experiment folder."""
KEY_ENV = "HIERCLS_KEY_FILE"
"""Environment variable naming the key file instead of :func:`key_path`'s default."""
PICKLED_STATE = ("tuner.pkl", "experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                 "callback-states-*.pkl")
"""Ray's top-level state files, read back with pickle (or JSON holding cloudpickled values) on restore."""
KEEP = 3
_LOCK = threading.Lock()


class ManifestError(ValueError):
    """The user's key cannot be made or read safely (one line naming the file)."""


def key_path() -> Path:
    """The user's key: ``$HIERCLS_KEY_FILE``, else ``$XDG_CONFIG_HOME/hiercls/experiment.key`` (default
    ``~/.config``). A cluster with a shared home folder shares it between machines; copy it (it is a
    secret) to resume one's experiments on a machine that does not."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "hiercls" / "experiment.key"


def user_key(*, create: bool = True) -> bytes | None:
    """The user's 32-byte key, made with mode 0600 when missing and ``create`` (else None).

    Raises:
        ManifestError: the key file is readable or writable by others (anyone could forge records), is not
            32 bytes, or cannot be created.
    """
    path = key_path()
    try:
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, secrets.token_bytes(32))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ManifestError(f"hiercls's key {str(path)!r} cannot be used: {err.strerror or err}") from err
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ManifestError(f"hiercls's key {str(path)!r} is accessible to others (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}); make it private with chmod 600")
    if len(data) != 32:
        raise ManifestError(f"hiercls's key {str(path)!r} is not a 32-byte key ({len(data)} bytes); move it "
                            "away to have a new one made (records signed with it are then unknown)")
    return data


def signed_name(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """Where a written file is recorded: (the Ray experiment folder, its path relative to it) for Ray's
    state files (:data:`PICKLED_STATE`) and a trial folder's ``*.pkl``; None for anything else (checkpoints
    are read with ``torch.load(weights_only=True)`` or as JSON: never unpickled)."""
    file = Path(path)
    if any(fnmatch.fnmatchcase(file.name, pattern) for pattern in PICKLED_STATE):
        return file.parent, file.name
    if file.suffix == ".pkl":
        return file.parent.parent, f"{file.parent.name}/{file.name}"
    return None


def pickled_files(folder: str | os.PathLike[str]) -> list[str]:
    """The files a restore of the Ray experiment in ``folder`` may unpickle, relative to it: the state
    files, any top-level ``*.pkl`` and every trial folder's ``*.pkl`` (not a ``grow-<k>`` part's: another
    Ray experiment, with its own record)."""
    root = Path(folder)
    found = {p for pattern in (*PICKLED_STATE, "*.pkl", "*/*.pkl") for p in root.glob(pattern)}
    # a grown search's grow-<k> part is a Ray experiment of its own, with its own record
    return sorted(p.relative_to(root).as_posix() for p in found if (p.is_file() or p.is_symlink())
                  and (p.parent == root or not (p.parent / "tuner.pkl").exists()))


def _mac(key: bytes, files: dict[str, list[str]]) -> str:
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _read(folder: Path, key: bytes) -> dict[str, list[str]] | None:
    """The authentic record in ``folder`` (None: missing, unreadable, or not signed with ``key``)."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = {str(k): [str(d) for d in v] for k, v in data["files"].items()}
        mac = str(data["hmac"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return files if hmac.compare_digest(mac, _mac(key, files)) else None


def _write(folder: Path, key: bytes, files: dict[str, list[str]]) -> None:
    atomic_write_text(folder / MANIFEST_FILE,
                      json.dumps({"version": 1, "files": files, "hmac": _mac(key, files)}, indent=1))


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The record of ``folder`` locked against other threads and processes while it is rewritten."""
    with _LOCK:
        fd = os.open(folder / f".{MANIFEST_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with contextlib.suppress(ImportError, OSError):  # no locks on this file system: threads only
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _add(files: dict[str, list[str]], name: str, digest: str) -> None:
    """``digest`` as ``name``'s newest, its last :data:`KEEP` digests kept."""
    files[name] = [d for d in files.get(name, []) if d != digest][-(KEEP - 1):] + [digest]


def record(folder: str | os.PathLike[str], relative: str, digest: str) -> None:
    """Add ``digest`` (SHA-256 hex) for ``relative`` to the signed record of ``folder``, keeping that name's
    last :data:`KEEP` digests. A record that is not authentic is not extended: it starts again.

    Raises:
        ManifestError: the user's key cannot be used.
        StorageError: the record could not be written.
    """
    root = Path(folder)
    key = user_key()
    with _locked(root):
        files = _read(root, key) or {}
        _add(files, relative, digest)
        _write(root, key, files)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def manifest_problems(folder: str | os.PathLike[str]) -> list[str]:
    """Why resuming the Ray experiment in ``folder`` could unpickle something this user did not write: no
    authentic record (none, or not signed with this user's key), or a file (:func:`pickled_files`) whose
    SHA-256 it does not list. Empty when every file is recorded. Nothing is unpickled.

    Raises:
        ManifestError: the user's key cannot be used.
    """
    root = Path(folder)
    key = user_key(create=False)
    files = _read(root, key) if key is not None else None
    if files is None:
        missing_key = "" if key is not None else ", which does not exist"
        state = "is missing" if not (root / MANIFEST_FILE).exists() else (
            f"is not signed with your key ({str(key_path())!r}{missing_key})")
        return [f"its record of the pickles hiercls wrote ({MANIFEST_FILE}) {state}: it was written by "
                "someone else, on a machine with another key, or by hiercls before it kept that record"]
    out = []
    for name in pickled_files(root):
        try:
            known = _digest(root / name) in files.get(name, ())
        except OSError as err:
            out.append(f"{name!r} cannot be read ({err.strerror or err})")
            continue
        if not known:
            out.append(f"{name!r} is not one hiercls wrote (not in its signed {MANIFEST_FILE})")
    return out


def adopt(folder: str | os.PathLike[str]) -> int:
    """Record every file :func:`pickled_files` finds in ``folder`` under this user's key (after an explicit
    ``--trust-experiment``); returns how many.

    Raises:
        ManifestError: the user's key cannot be used.
        StorageError: the record could not be written.
    """
    root = Path(folder)
    key = user_key()
    names = pickled_files(root)
    with _locked(root):
        files = _read(root, key) or {}
        for name in names:
            _add(files, name, _digest(root / name))
        _write(root, key, files)
    return len(names)
