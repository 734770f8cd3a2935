"""The search's Optuna study, stored where a dashboard can read it while the search runs.

A TPE or NSGA-II search keeps its study (named after the experiment) in a journal file in the experiment
folder (:data:`STUDY_FILE`: Optuna's ``JournalFileBackend``, appends under a file lock) or at a database
URL given with ``--optuna-storage`` (``RDBStorage``). It holds every trial's parameters, per-epoch
objective, state (COMPLETE; PRUNED when ASHA stopped it; FAIL on an error or NaN) and user attributes
``ray_trial_id`` and ``trial_folder`` (relative to the experiment folder: ``trial_<id>``, or
``grow-<k>/trial_<id>``, so a copied or moved experiment stays whole). A grid search has no study.
Optuna is imported only when used.

The journal is one JSON record per line. A driver killed (or a disk filled) while it appended leaves a
torn last record: Optuna skips it on reading but appends the next record after it, which garbles the
journal for good. So a resume checks the journal first (:func:`check_study`, before Ray starts: a journal
garbled in the middle, empty, or one Optuna cannot replay is refused with :class:`JournalError`) and
drops a torn last record before the study is opened for writing (:func:`recover_journal`, keeping the
original beside it as ``optuna_study.journal.torn-<time>``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hiercls.experiment.parts import GROW_PREFIX, part_folders
from hiercls.storage import StorageError, atomic_write_bytes, check_writable

__all__ = ["STUDY_FILE", "JournalError", "JournalState", "StudyStorageError", "check_journal", "check_study",
           "load_study", "open_storage", "recover_journal", "storage_text", "study_names"]

STUDY_FILE = "optuna_study.journal"
"""The journal file of a search's Optuna study, in the experiment folder (no ``--optuna-storage``)."""
TORN_SUFFIX = ".torn-"
"""A torn journal's original is kept as ``optuna_study.journal.torn-<YYYYmmdd-HHMMSS>`` beside it."""
_WAY_ON = "restore it from a backup (nothing was changed), or start the search again under a new --name"

log = logging.getLogger("hiercls.experiment")


class JournalError(StorageError):
    """The study's journal is damaged beyond a torn last record: garbled in the middle, empty, holding no
    study, or not replayable by Optuna. One line naming the file and the way on; ``tune_main.py`` exits
    with status 3, as for a torn Ray state."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class StudyStorageError(ValueError):
    """An ``--optuna-storage`` URL that cannot be used: not a database URL, a database driver that is not
    installed, an SQLite file in a missing or unwritable folder. One line naming the URL and what would be
    valid; ``tune_main.py`` exits with status 2."""


@dataclasses.dataclass(frozen=True)
class JournalState:
    """What :func:`check_journal` found: the journal ``path``, its complete ``records`` (a count), the
    bytes they take (``kept``) and those of a torn last record (``torn``; 0 when there is none)."""

    path: Path
    records: int
    kept: int
    torn: int


def storage_text(experiment_dir: str | Path, url: str | None) -> str:
    """What to hand ``optuna-dashboard`` or ``optuna.load_study``: the URL, else the journal file's path."""
    return url if url else str(Path(experiment_dir) / STUDY_FILE)


def open_storage(experiment_dir: str | Path, url: str | None = None) -> Any:
    """The study's storage: ``url`` as an Optuna RDB storage, else the journal file in ``experiment_dir``
    (a torn last record dropped first: :func:`recover_journal`).

    Raises:
        StudyStorageError: a URL that cannot be opened, or an SQLite file whose folder is missing or not
            writable (the message names it and what would be valid); nothing is created then.
        JournalError: the journal is garbled in the middle (:func:`check_journal`).
        StorageError: a torn journal could not be rewritten (no space, read-only).
    """
    if url:
        return _rdb_storage(url)
    recover_journal(experiment_dir)
    path = Path(experiment_dir) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return _journal_storage(path)


def _journal_storage(path: Path) -> Any:
    import optuna  # Optuna only when a study is opened
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


_VALID_URL = ("valid: a database URL such as sqlite:///study.db (in an existing, writable folder) or "
              "postgresql://USER@HOST/DB (its driver installed), or no --optuna-storage (the study is then "
              "kept in the experiment's journal file)")


def _rdb_storage(url: str, way: str = _VALID_URL) -> Any:
    """``url`` opened as Optuna's RDB storage; an SQLite file's folder is checked first, so a failure
    creates nothing. ``way`` ends a refusal: what would be valid.

    Raises:
        StudyStorageError: see :func:`open_storage`.
    """
    import optuna  # see _journal_storage

    database = _sqlite_file(url)
    if database is not None:
        _check_sqlite(url, database, way)
    elif _in_memory(url):
        raise StudyStorageError(f"--optuna-storage {url!r} is an in-memory database: the study would end "
                                "with the driver, so a resume or a growth would start a new one (its trial "
                                f"indices, and so seeds, again from 0); {way}")
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as err:  # the dialect's driver (psycopg, MySQLdb, ...)
        missing = getattr(err.__cause__, "name", None) or "its database driver"
        raise StudyStorageError(f"--optuna-storage {url!r} cannot be opened: the Python module {missing!r} "
                                f"it needs is not installed (install that database driver); {way}"
                                ) from err
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors vary by driver
        reason = str(err).split("\n")[0] or type(err).__name__
        raise StudyStorageError(f"--optuna-storage {url!r} cannot be opened ({reason}); {way}") from err


def _sqlite_database(url: str) -> str | None:
    """The database of an ``sqlite://`` URL (``""`` for none: in memory); None for another or an
    unparsable URL."""
    try:
        from sqlalchemy.engine import make_url  # installed with Optuna

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - reported by RDBStorage itself
        return None
    return parsed.database or "" if parsed.get_backend_name() == "sqlite" else None


def _sqlite_file(url: str) -> Path | None:
    """The database file of an ``sqlite:///PATH`` URL (relative to the working folder, as SQLite opens
    it); None for another or an unparsable URL, or an in-memory database."""
    name = _sqlite_database(url)
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def _in_memory(url: str) -> bool:
    """Whether ``url`` is an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``)."""
    name = _sqlite_database(url)
    return name is not None and (name in ("", ":memory:") or "mode=memory" in url)


def _check_sqlite(url: str, database: Path, way: str) -> None:
    """An SQLite database needs an existing, writable folder (and file, when it exists).

    Raises:
        StudyStorageError: naming the URL, the folder and the OS error.
    """
    folder = database.absolute().parent
    if not folder.is_dir():
        raise StudyStorageError(f"--optuna-storage {url!r} cannot be opened: its folder {str(folder)!r} does "
                                f"not exist (SQLite does not create folders); {way}")
    try:
        check_writable(folder, "SQLite writes beside the database")  # a probe file, removed (finds a
        # read-only mount as root too)
        if database.exists() and not os.access(database, os.R_OK | os.W_OK):
            raise StorageError(f"{str(database)!r} is not readable and writable")
    except StorageError as err:
        raise StudyStorageError(f"--optuna-storage {url!r} cannot be written: {err}; {way}") from err


def study_names(storage: Any) -> list[str]:
    """The names of the studies in ``storage`` (:func:`open_storage`)."""
    import optuna  # see open_storage

    return optuna.get_all_study_names(storage)


# ---------------------------------------------------------------------------------------------- the journal
def _journal_of(folder: str | Path) -> Path:
    """The journal of the search ``folder`` belongs to: a grown part (``grow-<k>``) writes its trials into
    the experiment's own journal, in the folder above it."""
    folder = Path(folder)
    return (folder.parent if folder.name.startswith(GROW_PREFIX) else folder) / STUDY_FILE


def _record(line: bytes) -> dict[str, Any] | None:
    """The journal record on ``line`` (what Optuna's reader accepts), or None."""
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return None
    return record if isinstance(record, dict) and "op_code" in record else None


def _scan(path: Path) -> tuple[bytes, list[dict[str, Any]], int]:
    """The journal's bytes, its complete records and the bytes they take (a torn last line excluded).

    Raises:
        JournalError: it cannot be read, or a line other than the last is not a complete record.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise JournalError(f"the Optuna journal {str(path)!r} cannot be read ({err}); {_WAY_ON}") from err
    lines = io.BytesIO(data).readlines()  # split at b"\n" only, as Optuna's reader does
    records: list[dict[str, Any]] = []
    kept = 0
    for number, line in enumerate(lines, start=1):
        record = _record(line)
        if record is None and number < len(lines):
            raise JournalError(f"the Optuna journal {str(path)!r} is garbled: line {number} of {len(lines)} "
                               f"(bytes {kept}-{kept + len(line)}) is not a complete JSON record, and it is "
                               f"not the last line (a torn last record would be recovered); {_WAY_ON}")
        if record is not None:
            records.append(record)
            kept += len(line)
    return data, records, kept


def _replay(path: Path, records: list[dict[str, Any]]) -> None:
    """Replay ``records`` with Optuna's own journal storage, in memory (nothing is written).

    Raises:
        JournalError: Optuna cannot replay them, or they hold no study.
    """
    import optuna  # see open_storage
    from optuna.storages.journal import BaseJournalBackend

    class Records(BaseJournalBackend):
        def read_logs(self, log_number_from: int) -> Any:
            yield from records[log_number_from:]

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            raise RuntimeError("a journal being checked is read only")

    try:
        storage = optuna.storages.JournalStorage(Records())
        studies = storage.get_all_studies()
        for study in studies:
            storage.get_all_trials(study._study_id, deepcopy=False)
    except Exception as err:  # noqa: BLE001 - Optuna's replay raises KeyError, AssertionError, ... as it finds
        raise JournalError(f"the Optuna journal {str(path)!r} cannot be replayed by Optuna "
                           f"({type(err).__name__}: {err}); {_WAY_ON}") from err
    if not studies:
        raise JournalError(f"the Optuna journal {str(path)!r} holds no study; {_WAY_ON}")


def check_journal(path: str | Path) -> JournalState:
    """Check the journal file at ``path`` without changing it: every line but the last must be a complete
    JSON record, there must be at least one, and Optuna must replay them (a study in it). A torn last
    record (cut short, no newline, or not JSON) is allowed: it is reported in ``torn``, and
    :func:`recover_journal` drops it.

    Raises:
        JournalError: it cannot be read, it is garbled before its last line, it holds no complete record
            (empty; the message says how many trial folders the experiment has), or Optuna cannot replay
            it. The message is one line, naming the file and the way on.
    """
    path = Path(path)
    data, records, kept = _scan(path)
    if not records:
        folder = path.parent
        trials = sum(1 for part in part_folders(folder) for _ in part.glob("trial_*"))
        what = "is empty" if not data.strip() else f"holds no complete record ({len(data)} bytes)"
        raise JournalError(f"the Optuna journal {str(path)!r} {what} while the experiment has {trials} trial "
                           f"folder(s): the search's study is lost; {_WAY_ON}")
    _replay(path, records)
    return JournalState(path, len(records), kept, len(data) - kept)


def recover_journal(folder: str | Path) -> JournalState | None:
    """Drop a torn last record from the journal of the search in ``folder`` (the experiment, or a grown
    part of it): the complete records are rewritten atomically, the original is kept beside it as
    ``optuna_study.journal.torn-<time>`` (a hard link, else a copy), and one warning line names both and
    the bytes dropped. The trial whose record was lost is then handled by the resume as any trial a killed
    driver left behind. Returns what was found (None: no journal). Does not replay the journal: a resume
    checks it before Ray starts (:func:`check_study`).

    Raises:
        JournalError: it cannot be read, or it is garbled before its last line.
        StorageError: the file could not be rewritten (no space, read-only); it is left as it was.
    """
    path = _journal_of(folder)
    if not path.is_file():
        return None
    data, records, kept = _scan(path)
    state = JournalState(path, len(records), kept, len(data) - kept)
    if not state.torn:
        return state
    original = path.with_name(f"{path.name}{TORN_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}")
    while original.exists():
        original = original.with_name(original.name + "-1")
    try:
        os.link(path, original)  # the torn bytes stay under the new name (no copy on a full disk)
    except OSError:
        atomic_write_bytes(original, data)
    atomic_write_bytes(path, data[:kept])
    log.warning("warning: the Optuna journal %r ended in a torn record (%d bytes, bytes %d-%d, not a "
                "complete JSON line): dropped it and kept the %d complete records; the original is kept "
                "as %r",
                str(path), state.torn, kept, len(data), state.records, str(original))
    return state


def check_study(experiment_dir: str | Path, url: str | None = None) -> JournalState | None:
    """Before a resume (``--resume``, also with ``--check``), leaving nothing behind (an SQLite folder's
    write probe is removed): with ``url``, the database must open and be writable (an SQLite file must
    still exist); else the experiment's journal, when there is one, must be whole but for a torn last
    record (:func:`check_journal`). Grown parts (``grow-<k>``) write into the experiment's journal, so one
    check covers them. Returns the journal's state (None: a URL, or no journal: a grid or PB2 search).

    Raises:
        StudyStorageError: the URL cannot be opened or written, or its SQLite file is gone.
        JournalError: the journal is damaged (:func:`check_journal`).
    """
    if url:
        database = _sqlite_file(url)
        if database is not None and not database.is_file():
            raise StudyStorageError(f"--optuna-storage {url!r} cannot be resumed from: {str(database)!r}, "
                                    "which held the search's study, does not exist; restore the file from a "
                                    "backup, or start the search again under a new --name")
        _rdb_storage(url, "fix that and resume again: the search's study is kept there (a resume cannot "
                          "change --optuna-storage)")
        return None
    path = Path(experiment_dir) / STUDY_FILE
    return check_journal(path) if path.is_file() else None


def load_study(experiment_dir: str | Path, url: str | None = None):
    """The Optuna study of the search in ``experiment_dir`` (its journal file, or ``url``): the study named
    after the folder, else the storage's only study (a renamed experiment folder keeps its study's name).
    Nothing is written: a torn last record of the journal is skipped (one warning line says so; a resume
    drops it for good).

    Raises:
        FileNotFoundError: no journal file and no ``url``.
        JournalError: the journal is damaged (:func:`check_journal`; one line).
        StudyStorageError: ``url`` cannot be opened.
        KeyError: the storage holds no study of that name and not exactly one study (the names listed).
    """
    import optuna  # see open_storage

    folder = Path(experiment_dir)
    path = folder / STUDY_FILE
    if not url and not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist (a grid search has no study)")
    if not url and (state := check_journal(path)).torn:
        log.warning("warning: the Optuna journal %r ends in a torn record (%d bytes), skipped; resuming the "
                    "search drops it for good", str(path), state.torn)
    storage = _rdb_storage(url) if url else _journal_storage(path)
    names = study_names(storage)
    name = folder.name if folder.name in names or len(names) != 1 else names[0]
    if name not in names:
        raise KeyError(f"no study named {name!r} in {storage_text(folder, url)!r}; studies: "
                       f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
