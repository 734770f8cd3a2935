"""The search's Optuna study, stored where a dashboard can read it while the search runs.

A TPE or NSGA-II search keeps its study (named after the experiment) in a journal file in the experiment
folder (:data:`STUDY_FILE`: Optuna's ``JournalFileBackend``, appends under a file lock) or at a database
URL given with ``--optuna-storage`` (``RDBStorage``). It holds every trial's parameters, per-epoch
objective, state (COMPLETE; PRUNED when ASHA stopped it; FAIL on an error or NaN) and user attributes
``ray_trial_id`` and ``trial_folder``. A grid search has no study. Optuna is imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["STUDY_FILE", "load_study", "open_storage", "storage_text", "study_names"]

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
    import optuna  # Optuna only when a study is opened
    from optuna.storages.journal import JournalFileBackend

    if url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors vary by driver
            raise ValueError(f"--optuna-storage {url!r} cannot be opened: {err}") from err
    path = Path(experiment_dir) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def study_names(storage: Any) -> list[str]:
    """The names of the studies in ``storage`` (:func:`open_storage`)."""
    import optuna  # see open_storage

    return optuna.get_all_study_names(storage)


def load_study(experiment_dir: str | Path, url: str | None = None):
    """The Optuna study of the search in ``experiment_dir`` (its journal file, or ``url``): the study named
    after the folder, else the storage's only study (a renamed experiment folder keeps its study's name).

    Raises:
        FileNotFoundError: no journal file and no ``url``.
        KeyError: the storage holds no study of that name and not exactly one study (the names listed).
    """
    import optuna  # see open_storage

    folder = Path(experiment_dir)
    if not url and not (folder / STUDY_FILE).is_file():
        raise FileNotFoundError(f"{str(folder / STUDY_FILE)!r} does not exist (a grid search has no study)")
    storage = open_storage(folder, url)
    names = study_names(storage)
    name = folder.name if folder.name in names or len(names) != 1 else names[0]
    if name not in names:
        raise KeyError(f"no study named {name!r} in {storage_text(folder, url)!r}; studies: "
                       f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
