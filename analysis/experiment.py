"""Load a finished (or interrupted) search offline: the spec, and every trial's configuration and epochs.

An experiment folder (``STORAGE_PATH/NAME``, written by ``tune_main.py``) holds ``search_spec.yaml``
and one ``trial_<id>/`` folder per trial. Everything is read from plain text files; Ray's and Optuna's
pickled state (``tuner.pkl``, ``searcher-state-*.pkl``, ``params.pkl``, ``error.pkl``) is never
unpickled, and no Ray cluster is needed:

* ``search_spec.yaml``: the resolved search specification (objective, epochs, fixed keys, space);
* ``trial_<id>/config.yaml``: the full resolved training config the engine ran (when the trial got that
  far; otherwise it is rebuilt exactly as the trainable builds it: the spec's fixed keys + the trial's
  ``params.json`` + the seed derived from the search seed and the trial's index);
* ``trial_<id>/all_epoch_results.json``: the engine's per-epoch records (preferred), else Ray's
  ``result.json`` (JSON lines); records are de-duplicated by epoch, the latest record winning (a trial
  resumed from an earlier checkpoint reports some epochs again);
* ``trial_<id>/params.json``: the searched values; ``error.txt``: Ray's error log of a failed trial;
* ``experiment_state-*.json`` (the newest, as Ray picks it): read as JSON only, for each trial's final
  Ray status (``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``) and for trials that never
  got a folder.

Trial status (first match wins): ``error`` (Ray marked it ERROR; without Ray's state: an ``error.txt``
and fewer epochs than configured, or no epoch at all), ``nan`` (an epoch with status ``nan`` or a NaN
objective), ``unfinished`` (Ray's state says RUNNING/PENDING/PAUSED: an interrupted search that
``--resume`` would continue), ``stopped early`` (fewer epochs than configured: ASHA stopped it),
``complete``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.tune.state import UNFINISHED, read_trial_states

__all__ = [
    "AnalysisError",
    "Experiment",
    "Trial",
    "STATUSES",
    "FINISHED",
    "load_experiment",
    "run_cli",
    "searched_params",
    "trial_objective",
]

SPEC_FILE = "search_spec.yaml"
ENGINE_FILE = "all_epoch_results.json"
RAY_RESULT_FILE = "result.json"
STATUSES = ("complete", "stopped early", "unfinished", "nan", "error")
FINISHED = ("complete", "stopped early")
TRIAL_INDEX = "trial_index"  # hiercls.tune.space.TRIAL_INDEX, kept in params.json by the searcher


class AnalysisError(ValueError):
    """Bad input to the analysis tools; the message names the bad value and what is valid."""


@dataclasses.dataclass
class Trial:
    """One trial of a search.

    Attributes:
        trial_id: Ray's trial id (the folder is ``trial_<id>``).
        path: the trial folder (None for a trial Ray listed but never started).
        params: the searched values (``params.json`` without the searcher's ``trial_index``).
        config: the full resolved training config (dict of :class:`~hiercls.config.TrainConfig` keys), or
            None when it could be neither read nor rebuilt.
        config_source: ``config.yaml``, ``rebuilt`` (from the spec and params) or None.
        records: the per-epoch records, one per epoch (ascending), de-duplicated.
        duplicates: how many repeated epoch records were dropped.
        epochs: the configured number of epochs.
        status: one of :data:`STATUSES`.
        ray_status: Ray's final status from the experiment state, None when unknown.
        error: the last line of Ray's ``error.txt`` for an errored trial, else None.
    """

    trial_id: str
    path: Path | None
    params: dict[str, Any]
    config: dict[str, Any] | None
    config_source: str | None
    records: list[dict[str, Any]]
    duplicates: int
    epochs: int
    status: str
    ray_status: str | None = None
    error: str | None = None

    @property
    def epochs_run(self) -> int:
        """The last epoch reported (0 when none)."""
        return int(self.records[-1]["epoch"]) if self.records else 0

    @property
    def loss(self) -> str | None:
        return (self.config or {}).get("loss") or self.params.get("loss")

    @property
    def lr_schedule(self) -> str | None:
        return (self.config or {}).get("lr_schedule") or self.params.get("lr_schedule")

    @property
    def seed(self) -> int | None:
        return (self.config or {}).get("seed")

    def record(self, epoch: int) -> dict[str, Any]:
        """The record of ``epoch`` (KeyError when the trial has none)."""
        for r in self.records:
            if int(r["epoch"]) == int(epoch):
                return r
        raise KeyError(epoch)


@dataclasses.dataclass
class Experiment:
    """A loaded experiment: ``path``, ``spec`` (the saved ``search_spec.yaml`` as a dict), ``objective``
    (callable: record -> the number minimised by ``best`` scope), ``objective_text`` and ``trials``
    (sorted by trial id)."""

    path: Path
    spec: dict[str, Any]
    objective: Callable[[Mapping[str, Any]], float]
    objective_text: str
    trials: list[Trial]

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.path.name)

    def trial(self, trial_id: str) -> Trial:
        """The trial ``trial_id`` (``trial_`` prefix accepted).

        Raises:
            AnalysisError: no such trial (the message lists the trial ids).
        """
        wanted = str(trial_id).removeprefix("trial_")
        for t in self.trials:
            if t.trial_id == wanted:
                return t
        ids = ", ".join(t.trial_id for t in self.trials) or "none"
        raise AnalysisError(f"trial {trial_id!r} is not in experiment {str(self.path)!r}; trials: {ids}")

    def counts(self) -> dict[str, int]:
        """Number of trials per status (every status listed, zeros included)."""
        out = dict.fromkeys(STATUSES, 0)
        for t in self.trials:
            out[t.status] += 1
        return out

    def require_finished(self) -> None:
        """Raise :class:`AnalysisError` when no trial is ``complete`` or ``stopped early``."""
        if not any(t.status in FINISHED for t in self.trials):
            counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
            raise AnalysisError(
                f"experiment {str(self.path)!r} has no finished trial ({len(self.trials)} trial(s)"
                + (f": {counts}" if counts else "")
                + "); nothing to analyse yet"
            )


def run_cli(parser: Any, argv: Sequence[str] | None, command: Callable[[Any], int]) -> int:
    """The shared ``main`` of the analysis CLIs: parse ``argv`` with the argparse ``parser`` and return
    ``command(args)``; an :class:`AnalysisError` is printed as ``PROG: error: MESSAGE`` on stderr (no
    traceback) and gives exit status 2. Argparse's own usage errors exit 2 through argparse."""
    args = parser.parse_args(argv)
    try:
        return command(args)
    except AnalysisError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------- loading
def load_experiment(path: str | Path) -> Experiment:
    """Read the experiment at ``path`` (``STORAGE_PATH/NAME``) from its text files.

    Raises:
        AnalysisError: ``path`` is not an experiment folder (no ``search_spec.yaml``; when experiments
            sit below it they are listed), or the spec is unreadable.
    """
    folder = Path(path).expanduser()
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        reason = "does not exist" if not folder.exists() else (
            "is not a folder" if not folder.is_dir() else f"has no {SPEC_FILE}"
        )
        hint = ""
        if folder.is_dir():
            below = sorted(p.parent.name for p in folder.glob(f"*/{SPEC_FILE}"))
            if below:
                hint = f"; experiments inside it: {', '.join(below)}"
        raise AnalysisError(
            f"{str(folder)!r} is not an experiment folder: it {reason} (expected STORAGE_PATH/NAME as "
            f"written by tune_main.py, holding {SPEC_FILE} and trial_<id>/ folders){hint}"
        )
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise AnalysisError(f"{spec_path}: not valid YAML: {err}") from err
    if not isinstance(spec, dict):
        raise AnalysisError(f"{spec_path}: must hold a mapping of search settings")
    objective_text, objective = _objective(spec, spec_path)
    state = read_trial_states(folder)
    folders = {p.name: p for p in folder.iterdir() if p.is_dir() and p.name.startswith("trial_")}
    for entry in state.values():
        logdir = entry.get("relative_logdir")
        if logdir and (folder / logdir).is_dir():
            folders.setdefault(str(logdir), folder / logdir)
    trials: dict[str, Trial] = {}
    for trial_path in folders.values():
        trial = _load_trial(trial_path, spec, objective, state)
        trials[trial.trial_id] = trial
    for trial_id, entry in state.items():  # listed by Ray but never started: no folder
        if trial_id not in trials:
            params = {k: v for k, v in (entry.get("config") or {}).items() if k != TRIAL_INDEX}
            trials[trial_id] = _make_trial(trial_id, None, params, entry.get("config") or {}, [], 0, spec,
                                           objective, entry, None)
    ordered = sorted(trials.values(), key=lambda t: t.trial_id)
    return Experiment(folder, spec, objective, objective_text, ordered)


def _objective(spec: Mapping[str, Any], where: Path) -> tuple[str, Callable[[Mapping[str, Any]], float]]:
    from hiercls.tune.spec import parse_objective

    text = "val_top1_error" if spec.get("multi_objective") else str(spec.get("objective", "val_top1_error"))
    try:
        return text, parse_objective(text)
    except ValueError as err:
        raise AnalysisError(f"{where}: {err}") from err


def trial_objective(objective: Callable[[Mapping[str, Any]], float], record: Mapping[str, Any]) -> float:
    """The objective of one epoch record: NaN for a record with status other than ``ok``."""
    if str(record.get("status", "ok")) != "ok":
        return math.nan
    try:
        return float(objective(record))
    except (TypeError, ValueError):
        return math.nan


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:  # a torn last line of a killed trial
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def dedupe_records(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One record per epoch (the latest in file order wins), ascending; also the number dropped.

    The epoch is the record's ``epoch`` key (Ray's ``training_iteration`` when absent); records with
    neither are skipped.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    kept = 0
    for r in records:
        epoch = r.get("epoch", r.get("training_iteration"))
        if epoch is None:
            continue
        kept += 1
        r = dict(r)
        r["epoch"] = int(epoch)
        by_epoch[int(epoch)] = r
    return [by_epoch[e] for e in sorted(by_epoch)], kept - len(by_epoch)


def _load_trial(path: Path, spec: Mapping[str, Any], objective, state: Mapping[str, Any]) -> Trial:
    result_lines = _json_lines(path / RAY_RESULT_FILE)
    trial_id = path.name.removeprefix("trial_")
    for r in result_lines:
        if r.get("trial_id"):
            trial_id = str(r["trial_id"])
            break
    raw_params = _read_json(path / "params.json")
    if not isinstance(raw_params, dict):
        raw_params = next((r["config"] for r in result_lines if isinstance(r.get("config"), dict)), None)
    if not isinstance(raw_params, dict):
        raw_params = dict((state.get(trial_id) or {}).get("config") or {})
    params = {k: v for k, v in raw_params.items() if k != TRIAL_INDEX}
    engine = _read_json(path / ENGINE_FILE)
    source = engine if isinstance(engine, list) and engine else result_lines
    records, dropped = dedupe_records([r for r in source if isinstance(r, dict)])
    config: dict[str, Any] | None = None
    config_source = None
    try:
        loaded = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            config, config_source = loaded, "config.yaml"
    except (OSError, yaml.YAMLError):
        pass
    error = None
    error_file = path / "error.txt"
    if error_file.is_file():
        text = error_file.read_text(encoding="utf-8", errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        error = lines[-1].strip() if lines else "error.txt"
    return _make_trial(trial_id, path, params, raw_params, records, dropped, spec, objective,
                       state.get(trial_id), error, config, config_source)


def _make_trial(
    trial_id: str,
    path: Path | None,
    params: dict[str, Any],
    raw_params: Mapping[str, Any],
    records: list[dict[str, Any]],
    dropped: int,
    spec: Mapping[str, Any],
    objective,
    state: Mapping[str, Any] | None,
    error: str | None,
    config: dict[str, Any] | None = None,
    config_source: str | None = None,
) -> Trial:
    if config is None:
        config = rebuild_config(spec, raw_params, trial_id)
        config_source = "rebuilt" if config is not None else None
        if config is not None and path is not None:
            config["out_folder"] = str(path)
    epochs = int((config or {}).get("epochs") or spec.get("epochs") or 0)
    ray_status = (state or {}).get("status")
    epochs_run = int(records[-1]["epoch"]) if records else 0
    full = epochs > 0 and epochs_run >= epochs
    has_nan = any(math.isnan(trial_objective(objective, r)) for r in records)
    if ray_status == "ERROR" or (not records and ray_status == "TERMINATED") or (
        ray_status is None and ((error is not None and not full) or (not records and path is not None))
    ):
        status = "error"
    elif has_nan:
        status = "nan"
    elif ray_status in UNFINISHED and not full:
        status = "unfinished"
    elif not full:
        status = "stopped early" if records else "unfinished"
    else:
        status = "complete"
    if status == "error" and error is None:
        error = ("no epoch reported (or its result files are gone)" if not records
                 else "Ray marked the trial ERROR")
    return Trial(trial_id, path, params, config, config_source, records, dropped, epochs, status, ray_status,
                 error if status == "error" else None)


def searched_params(spec: Mapping[str, Any]) -> list[Any]:
    """The searched parameters of a saved spec (:class:`hiercls.tune.spec.Param`, branch parameters
    included, fixed values excluded), in the order the spec lists them; a name searched in several
    branches appears once per branch."""
    from hiercls.tune.spec import iter_params, parse_params

    problems: list[str] = []  # the spec was validated before the search ran
    epochs = spec.get("epochs") if isinstance(spec.get("epochs"), int) else None
    params = parse_params(spec.get("search") or {}, "search", problems, epochs=epochs)
    return [p for p, _ in iter_params(params) if p.kind != "fixed"]


def rebuild_config(
    spec: Mapping[str, Any], raw_params: Mapping[str, Any], trial_id: str
) -> dict[str, Any] | None:
    """The resolved training config a trial ran, rebuilt as :func:`hiercls.tune.trainable.train_trial`
    builds it (spec's fixed keys + searched values + derived seed); None when that fails. ``out_folder``
    is left unset (the trial's folder is not known here)."""
    from hiercls.config import ConfigError, TrainConfig
    from hiercls.tune.spec import SearchSpec, SpecError
    from hiercls.tune.trainable import trial_seed

    try:
        known = {k: v for k, v in spec.items() if k in SearchSpec.settings()}
        search_spec = SearchSpec.from_dict(known)
        values = dict(search_spec.base_config())
        index = raw_params.get(TRIAL_INDEX)
        values.update({k: v for k, v in raw_params.items() if k != TRIAL_INDEX})
        values["seed"] = trial_seed(search_spec.seed, trial_id if index is None else index)
        return TrainConfig.from_dict(values).resolved().to_dict()
    except (ConfigError, SpecError, TypeError, ValueError, KeyError):
        return None
