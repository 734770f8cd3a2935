"""A search grown after the fact: ``--resume --num-samples N`` with N above the search's total.

``Tuner.restore`` cannot change a finished experiment's number of trials, so a grown search is several Ray
experiments ("parts") in one experiment folder: the folder itself, then one ``grow-<k>`` folder per growth,
each continuing the search's Optuna study (TPE learns from every earlier trial; trial indices go on).
:data:`PARTS_FILE` lists them; ``search_spec.yaml`` holds the total. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hiercls.experiment.state import UNFINISHED, read_trial_states
from hiercls.storage import atomic_write_text

__all__ = ["GROW_PREFIX", "PARTS_FILE", "Part", "part_folders", "read_parts", "unfinished", "write_parts"]

PARTS_FILE = "search_parts.json"
"""``{"parts": [{"folder": "", "num_samples": 4}, {"folder": "grow-1", "num_samples": 2}]}`` in the
experiment folder; absent until the search is first grown (then one part: the folder itself)."""
GROW_PREFIX = "grow-"


@dataclasses.dataclass(frozen=True)
class Part:
    """One Ray experiment of a search: its folder and its number of trials."""

    folder: Path
    num_samples: int

    @property
    def name(self) -> str:
        return self.folder.name


def read_parts(experiment_dir: str | Path, num_samples: int) -> list[Part]:
    """The parts of the search in ``experiment_dir`` in order; without :data:`PARTS_FILE` one part, the
    folder itself, with ``num_samples`` trials.

    Raises:
        ValueError: an unreadable parts file, or one naming a folder outside the experiment (both named).
    """
    root = Path(experiment_dir)
    path = root / PARTS_FILE
    if not path.is_file():
        return [Part(root, int(num_samples))]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["parts"]
        parts = [Part(root / str(e["folder"]) if e["folder"] else root, int(e["num_samples"]))
                 for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable list of the search's parts: {err}") from err
    for part in parts[1:]:
        if part.folder.parent != root or not part.name.startswith(GROW_PREFIX):
            raise ValueError(f"{str(path)!r} names {str(part.folder)!r}, which is not a grow-<k> folder of "
                             "the experiment")
    return parts


def write_parts(experiment_dir: str | Path, parts: list[Part]) -> None:
    """:data:`PARTS_FILE`, written atomically.

    Raises:
        StorageError: it could not be written.
    """
    root = Path(experiment_dir)
    entries: list[dict[str, Any]] = [
        {"folder": "" if p.folder == root else p.name, "num_samples": p.num_samples} for p in parts
    ]
    atomic_write_text(root / PARTS_FILE, json.dumps({"parts": entries}, indent=2))


def part_folders(experiment_dir: str | Path) -> list[Path]:
    """Every Ray experiment folder of the search: the folder itself, then its ``grow-<k>`` folders in
    order of ``k`` (found on disk, for readers that must not trust :data:`PARTS_FILE` alone)."""
    root = Path(experiment_dir)
    grown = [p for p in root.glob(f"{GROW_PREFIX}*") if p.is_dir() and p.name[len(GROW_PREFIX):].isdigit()]
    return [root, *sorted(grown, key=lambda p: int(p.name[len(GROW_PREFIX):]))]


def unfinished(part: Part) -> bool:
    """Whether a resume has work in ``part``: a trial Ray saved as running, pending or paused, or fewer
    trials than the part asks for."""
    states = read_trial_states(part.folder)
    return any(s.get("status") in UNFINISHED for s in states.values()) or len(states) < part.num_samples
