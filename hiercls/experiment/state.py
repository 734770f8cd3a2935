"""Ray Tune's saved experiment state, read as plain JSON (never unpickled).

``experiment_state-<timestamp>.json`` is Ray's record of every trial, rewritten during a search and when
it ends; ``Tuner.restore`` resumes from the newest. Each ``trial_data`` entry is a pair of JSON texts: the
trial (id, status, folder, config, ...) and its run metadata (error file, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["LOST_FOLDER", "STATE_GLOB", "UNFINISHED", "lost_trial_folders", "newest_state_file",
           "read_trial_states"]

STATE_GLOB = "experiment_state-*.json"
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")  # statuses of trials a resume would continue
LOST_FOLDER = "lost"
"""Where a resume sets aside the trial folders of :func:`lost_trial_folders` (inside the experiment)."""


def newest_state_file(folder: str | Path, pattern: str = STATE_GLOB) -> Path | None:
    """The file Ray restores from: the largest name matching ``pattern`` (Ray's own rule), or None."""
    files = sorted(Path(folder).glob(pattern), key=lambda p: p.name)
    return files[-1] if files else None


def read_trial_states(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Trial id -> ``{"status", "relative_logdir", "config", "error_filename"}`` from the newest
    ``experiment_state-*.json`` in ``folder``; ``{}`` when there is none or it cannot be read.

    ``status`` is Ray's (TERMINATED, ERROR, RUNNING, PENDING, PAUSED): a trial running when the search
    was interrupted stays RUNNING here, although the in-memory results call it TERMINATED. ``config``
    is the searched config when stored as plain JSON (not cloudpickled), else ``{}``.
    """
    newest = newest_state_file(folder)
    if newest is None:
        return {}
    try:
        data = json.loads(newest.read_text(encoding="utf-8"))
        out = {}
        for item in data.get("trial_data", []):
            trial = json.loads(item[0]) if isinstance(item[0], str) else dict(item[0])
            meta = json.loads(item[1]) if len(item) > 1 and isinstance(item[1], str) else {}
            config = trial.get("config")
            out[str(trial["trial_id"])] = {
                "status": trial.get("status"),
                "relative_logdir": trial.get("relative_logdir"),
                "config": config if isinstance(config, dict) and "_type" not in config else {},
                "error_filename": (meta or {}).get("error_filename"),
            }
        return out
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


def lost_trial_folders(folder: str | Path) -> list[Path]:
    """The ``trial_*`` folders in ``folder`` (one Ray experiment) that its newest saved state does not list:
    trials a driver started after its last save and was then killed. Ray never runs them again (a resume
    runs their values as new trials), so they are no part of the search. Empty when no state can be read."""
    states = read_trial_states(folder)
    if not states:
        return []
    listed = {str(s.get("relative_logdir") or f"trial_{tid}") for tid, s in states.items()}
    return sorted(p for p in Path(folder).glob("trial_*") if p.is_dir() and p.name not in listed)
