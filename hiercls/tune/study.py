"""The search's Optuna study, stored where a dashboard can read it while the search runs.

A TPE or NSGA-II search keeps its Optuna study in storage instead of only in the driver's memory: by
default a journal file in the experiment folder (:data:`STUDY_FILE`, Optuna's ``JournalStorage`` with a
``JournalFileBackend``: appends under a file lock, fit for shared file systems), or a database URL given
with ``--optuna-storage`` (``sqlite:///...``; ``postgresql://...`` for clusters, accepted as Optuna's
``RDBStorage`` takes it and untested here). The study is named after the experiment. It holds every
trial's parameters, its per-epoch objective (single-objective searches), its state (COMPLETE; PRUNED when
ASHA stopped it; FAIL when it errored or went NaN) and user attributes ``ray_trial_id`` and
``trial_folder``. ``optuna-dashboard <storage>`` shows it live (README). A grid search has no study (it
does not run Optuna).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["STUDY_FILE", "load_study", "open_storage", "storage_text"]

STUDY_FILE = "optuna_study.journal"
"""The journal file of a search's Optuna study, in the experiment folder (no ``--optuna-storage``)."""


def storage_text(experiment_dir: str | Path, url: str | None) -> str:
    """What to hand ``optuna-dashboard`` or ``optuna.load_study``: the URL, else the journal file's path."""
    return url if url else str(Path(experiment_dir) / STUDY_FILE)


def open_storage(experiment_dir: str | Path, url: str | None = None) -> Any:
    """The study's storage: ``url`` as an Optuna RDB storage, else the journal file in ``experiment_dir``.

    Raises:
        ValueError: a URL Optuna's RDB storage cannot open (the message names it).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors vary by driver
            raise ValueError(f"--optuna-storage {url!r} cannot be opened: {err}") from err
    path = Path(experiment_dir) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def load_study(experiment_dir: str | Path, url: str | None = None):
    """The Optuna study of the search in ``experiment_dir``, read from its journal file or from ``url``:
    the study named after the folder, else the journal's only study (a renamed experiment folder keeps
    its study's original name).

    Raises:
        FileNotFoundError: no journal file and no ``url``.
        KeyError: the storage holds no study of that name and not exactly one study (the names listed).
    """
    import optuna

    folder = Path(experiment_dir)
    if not url and not (folder / STUDY_FILE).is_file():
        raise FileNotFoundError(f"{str(folder / STUDY_FILE)!r} does not exist (a grid search has no study)")
    storage = open_storage(folder, url)
    names = optuna.get_all_study_names(storage)
    name = folder.name if folder.name in names or len(names) != 1 else names[0]
    if name not in names:
        raise KeyError(f"no study named {name!r} in {storage_text(folder, url)!r}; studies: "
                       f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
