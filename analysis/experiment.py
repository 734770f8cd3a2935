"""Load a finished (or interrupted) search offline: the spec, and every trial's configuration and epochs.

An experiment folder (``STORAGE_PATH/NAME``, written by ``tune_main.py``) holds ``search_spec.yaml``
and one ``trial_<id>/`` folder per trial. Everything is read from plain text files; Ray's and Optuna's
pickled state (``tuner.pkl``, ``searcher-state-*.pkl``, ``params.pkl``, ``error.pkl``) is never
unpickled, and no Ray cluster is needed:

* ``search_spec.yaml``: the resolved search specification (objective, epochs, fixed keys, space);
* ``trial_<id>/config.yaml``: the full resolved training config the engine ran (when the trial got that
  far; otherwise it is rebuilt exactly as the trainable builds it: the spec's fixed keys + the trial's
  searched values + the seed derived from the search seed and the trial's index);
* ``trial_<id>/all_epoch_results.json``: the engine's per-epoch records (preferred), else Ray's
  ``result.json`` (JSON lines); records are de-duplicated by epoch, the latest record winning (a trial
  resumed from an earlier checkpoint reports some epochs again), and read in today's spelling (``lr`` the
  value in effect, ``scheduled_lr`` the rate of the epoch's first step; records of an earlier hiercls,
  with ``base_lr``, are upgraded by :func:`hiercls.value_schedule.upgrade_record`);
* ``trial_<id>/params.json``: the searched values; ``error.txt``: Ray's error log of a failed trial;
* ``experiment_state-*.json`` (the newest, as Ray picks it): read as JSON only, for each trial's final
  Ray status (``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``) and for trials that never
  got a folder.

Trial status (first match wins): ``error`` (Ray marked it ERROR; without Ray's state: an ``error.txt``
and fewer epochs than configured, or no epoch at all), ``nan`` (an epoch with status ``nan`` or a NaN
objective), ``unfinished`` (Ray's state says RUNNING/PENDING/PAUSED: an interrupted search that
``--resume`` would continue), ``stopped early`` (fewer epochs than configured: ASHA stopped it),
``complete``.

Damaged files (a full disk, a killed process) are never skipped silently and never filled with
defaults; each one becomes a line of the trial's :attr:`Trial.problems` (``FILE: WHAT; CONSEQUENCE``),
which ``analysis.rank`` prints as a warning and writes to the ``problems`` column of ``trials.csv``.
WHAT is ``empty``, ``blank`` (only whitespace or NUL bytes), ``torn: invalid JSON at line N column C``
(the text ends mid-value: the write was cut), ``corrupt: invalid JSON at line N column C`` (bad text
before the end), ``torn: no newline at the end`` / ``torn: ends after key K`` (a YAML file cut short),
``unreadable: ...``, or a wrong structure. The rules:

* searched values: ``params.json``; when it is missing or damaged, the searched keys of the spec (the
  branch keys of the chosen branch only) are taken from the trial's valid ``config.yaml``, else from
  Ray's copies (the ``config`` of a readable ``result.json`` line, then Ray's experiment state). When
  no source has them, they stay unknown (:attr:`Trial.unknown_params`; empty cells in the table), the
  config is not rebuilt (``config`` None: no defaults stand in for them) and ``analysis.export``
  refuses the trial;
* config: a ``config.yaml`` that is empty, torn, incomplete (it lacks keys the engine writes) or
  invalid is not used; the config is rebuilt from the spec and the searched values when they are known;
* epoch records: a complete, non-empty ``all_epoch_results.json`` wins (a damaged ``result.json`` is
  then only reported); otherwise an undamaged ``result.json``; otherwise the damaged file whose readable
  records reach the later epoch (the lines that parse of ``result.json``; the records of
  ``all_epoch_results.json`` before the tear). The status is computed from the readable records, so a
  trial whose last record was torn may show ``stopped early`` although it ran longer (Ray's
  ``TERMINATED`` cannot tell this from an ASHA stop): its problem line then says that the status is
  uncertain and, when the torn text shows it, which epoch the lost record was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.config import ConfigError, TrainConfig, fill_added_keys, upgrade_saved_values
from hiercls.experiment.layout import SPEC_FILE, TRIAL_INDEX, searched_values, trial_config
from hiercls.experiment.parts import part_folders
from hiercls.experiment.state import UNFINISHED, newest_state_file, read_trial_states
from hiercls.storage import EXIT_WRITE, describe_os_error
from hiercls.tune.spec import SearchSpec, SpecError, iter_params, parse_objective, parse_params
from hiercls.value_schedule import upgrade_record

__all__ = [
    "AnalysisError",
    "Experiment",
    "Trial",
    "STATUSES",
    "FINISHED",
    "load_experiment",
    "run_cli",
    "searched_params",
    "split_problem",
    "trial_objective",
]

ENGINE_FILE = "all_epoch_results.json"
RAY_RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
CONFIG_FILE = "config.yaml"
STATUSES = ("complete", "stopped early", "unfinished", "nan", "error")
FINISHED = ("complete", "stopped early")


class AnalysisError(ValueError):
    """Bad input to the analysis tools; the message names the bad value and what is valid."""


@dataclasses.dataclass
class Trial:
    """One trial of a search.

    Attributes:
        trial_id: Ray's trial id (the folder is ``trial_<id>``).
        path: the trial folder (None for a trial Ray listed but never started).
        params: the searched values (``params.json`` without the searcher's ``trial_index``; when that
            file is missing or damaged, the searched keys recovered from ``config.yaml`` or Ray's copies;
            see the module docstring). Keys whose values are unknown are absent.
        config: the full resolved training config (dict of :class:`~hiercls.config.TrainConfig` keys), or
            None when it could be neither read nor rebuilt (never rebuilt from defaults standing in for
            unknown searched values).
        config_source: ``config.yaml``, ``rebuilt`` (from the spec and params) or None.
        records: the per-epoch records, one per epoch (ascending), de-duplicated, in today's spelling
            (:func:`~hiercls.value_schedule.upgrade_record`).
        duplicates: how many repeated epoch records were dropped.
        epochs: the configured number of epochs.
        status: one of :data:`STATUSES`.
        ray_status: Ray's final status from the experiment state, None when unknown.
        error: the last line of Ray's ``error.txt`` for an errored trial, else None.
        problems: one line per damaged file or missing value, ``FILE: WHAT; CONSEQUENCE`` (e.g.
            ``params.json: empty; searched values taken from config.yaml``); empty when all is well.
        unknown_params: the searched keys whose values no file could give (shown empty; not exportable).
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
    problems: list[str] = dataclasses.field(default_factory=list)
    unknown_params: list[str] = dataclasses.field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        """The last epoch reported (0 when none)."""
        return int(self.records[-1]["epoch"]) if self.records else 0

    @property
    def loss(self) -> str | None:
        return (self.config or {}).get("loss") or self.params.get("loss")

    @property
    def family(self) -> str | None:
        """The method the trial belongs to, for tables and plots (:func:`loss_family`)."""
        return loss_family(self.loss, {**self.params, **(self.config or {})})

    @property
    def lr_schedule(self) -> str | None:
        return (self.config or {}).get("lr_schedule") or self.params.get("lr_schedule")

    @property
    def seed(self) -> int | None:
        return (self.config or {}).get("seed")

    @property
    def val_split_sha256(self) -> str | None:
        """The identity of the images the trial was validated on (hex SHA-256 of their sorted positions in
        the official training set, :func:`hiercls.evidence.split_sha256`): its ``config.yaml``'s value,
        else its last epoch record's, else None (a trial of a hiercls before validation splits were
        recorded, or one that never reported)."""
        recorded = (self.config or {}).get("val_split_sha256")
        if not recorded and self.records:
            recorded = self.records[-1].get("val_split_sha256")
        return str(recorded) if recorded else None

    def record(self, epoch: int) -> dict[str, Any]:
        """The record of ``epoch`` (KeyError when the trial has none)."""
        for r in self.records:
            if int(r["epoch"]) == int(epoch):
                return r
        raise KeyError(epoch)


@dataclasses.dataclass
class Experiment:
    """A loaded experiment: ``path``, ``spec`` (the saved ``search_spec.yaml`` as a dict), ``objective``
    (callable: record -> the number minimised by ``best`` scope), ``objective_text``, ``trials``
    (sorted by trial id) and ``problems`` (damaged experiment-level files, e.g. a torn
    ``experiment_state-*.json``; the trials' own problems are on each :class:`Trial`)."""

    path: Path
    spec: dict[str, Any]
    objective: Callable[[Mapping[str, Any]], float]
    objective_text: str
    trials: list[Trial]
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.path.name)

    @property
    def objective_source(self) -> str:
        """Where :attr:`objective_text` (what ``analysis.rank`` ranks by) comes from, for headers: the
        search's objective in ``search_spec.yaml``, else top-1 error (a multi-objective search, or a spec
        that records no objective)."""
        if self.spec.get("multi_objective"):
            return "the fallback: a multi-objective search has no single objective"
        if self.spec.get("objective") is None:
            return f"the fallback: {SPEC_FILE} records no objective"
        return f"the search's objective, from {SPEC_FILE}"

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

    def warnings(self) -> list[str]:
        """One line per problem, for the user: the experiment's own (``FILE: WHAT; ...``), then each
        trial's in trial order (``trial ID: FILE: WHAT; CONSEQUENCE``). Empty when nothing is damaged."""
        return [*self.problems, *(f"trial {t.trial_id}: {p}" for t in self.trials for p in t.problems)]

    def require_finished(self) -> None:
        """Raise :class:`AnalysisError` when no trial is ``complete`` or ``stopped early``."""
        if not any(t.status in FINISHED for t in self.trials):
            counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
            raise AnalysisError(
                f"experiment {str(self.path)!r} has no finished trial ({len(self.trials)} trial(s)"
                + (f": {counts}" if counts else "")
                + "); nothing to analyse yet"
            )


SHORT_SPLIT = 12
"""Hex characters of ``val_split_sha256`` shown (the ``val_split`` column, messages, ``--split``)."""


def split_problem(trials: Sequence[Trial], advice: bool = True) -> str | None:
    """One line when ``trials`` (the trials a ranking compares) were not all validated on the same images,
    else None (also for fewer than two trials).

    Two cases, by :attr:`Trial.val_split_sha256`: several hashes (``trials were validated on N different
    validation splits (HASH12: n trials, ...): ranks between them mix real differences with which images
    each trial drew``), or some trials without one (``... made before hiercls recorded validation splits (no
    val_split_sha256): each trial was validated on its own images ...``). With ``advice`` the line ends with
    what to do (``--split HASH_PREFIX``, ``--allow-mixed-splits``), as the ranking tools refuse such trials.
    """
    if len(trials) < 2:
        return None
    counts: dict[str | None, int] = {}
    for t in trials:
        counts[t.val_split_sha256] = counts.get(t.val_split_sha256, 0) + 1
    unknown = counts.pop(None, 0)
    if unknown:
        known = (f"; the {len(trials) - unknown} with one can be ranked alone with --split HASH_PREFIX"
                 if counts else "")
        return (f"{unknown} of {len(trials)} compared trials were made before hiercls recorded validation "
                "splits (no val_split_sha256): each trial was validated on its own images (drawn from its "
                "own seed), so ranks between them mix real differences with which images each trial drew"
                + (f"; pass --allow-mixed-splits to rank them anyway{known}" if advice else ""))
    if len(counts) < 2:
        return None
    listed = ", ".join(f"{h[:SHORT_SPLIT]}: {n} trial{'s' if n > 1 else ''}"
                       for h, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    return (f"trials were validated on {len(counts)} different validation splits ({listed}): ranks between "
            "them mix real differences with which images each trial drew"
            + ("; rank one split with --split HASH_PREFIX, or pass --allow-mixed-splits" if advice else ""))


def loss_family(loss: str | None, config: Mapping[str, Any]) -> str | None:
    """The method a trial with ``loss`` and ``config`` belongs to, as the seed's comparison names them: the
    embedding losses as ``B&D <loss>`` (Barz & Denzler's class embeddings) or ``DeViSE <loss>`` (word
    vectors, ``devise`` set), ``yolo-v2`` as ``YOLO-v2``, every other loss by its name; None when unknown."""
    if loss is None:
        return None
    from hiercls.losses import LOSSES, is_embedding_loss  # torch stays out of the analysis until needed

    if loss in LOSSES and is_embedding_loss(loss):
        return f"{'DeViSE' if config.get('devise') else 'B&D'} {LOSSES.canonical(loss)}"
    return "YOLO-v2" if loss == "yolo-v2" else str(loss)


def run_cli(parser: Any, argv: Sequence[str] | None, command: Callable[[Any], int]) -> int:
    """The shared ``main`` of the analysis CLIs: parse ``argv`` with the argparse ``parser`` and return
    ``command(args)``; an :class:`AnalysisError` is printed as ``PROG: error: MESSAGE`` on stderr (no
    traceback) and gives exit status 2, an OS error while writing (a read-only experiment, a full disk) one
    line and exit status 3. Argparse's own usage errors exit 2 through argparse."""
    args = parser.parse_args(argv)
    try:
        return command(args)
    except OSError as err:  # a read-only experiment, a full disk: one line, the write-error status
        where = err.filename or "the output folder"
        print(f"{parser.prog}: error: {describe_os_error(err, where, 'write')}", file=sys.stderr)
        return EXIT_WRITE
    except AnalysisError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------- loading
def load_experiment(path: str | Path) -> Experiment:
    """Read the experiment at ``path`` (``STORAGE_PATH/NAME``) from its text files.

    Damaged trial files do not raise: they become the trial's :attr:`Trial.problems` (see the module
    docstring), and a torn experiment state becomes :attr:`Experiment.problems`.

    Raises:
        AnalysisError: ``path`` is not an experiment folder (no ``search_spec.yaml``; when experiments
            sit below it they are listed), or the spec is empty, torn or unreadable (one line).
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
    spec, problem = _read_yaml(spec_path)
    if problem is None and not isinstance(spec, dict):
        problem = "not a mapping of search settings"
    if problem is not None:
        raise AnalysisError(f"{spec_path}: {problem}; the experiment cannot be analysed without its spec")
    objective_text, objective = _objective(spec, spec_path)
    tree = _search_tree(spec)
    # a grown search (hiercls.experiment.parts) is several Ray experiments: the folder and its grow-<k> ones
    state: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    folders: dict[str, Path] = {}
    for part in part_folders(folder):
        part_state = read_trial_states(part)
        problems += [] if part_state else _state_problems(part)
        state.update(part_state)
        folders.update({str(p): p for p in part.iterdir() if p.is_dir() and p.name.startswith("trial_")})
        for entry in part_state.values():
            logdir = entry.get("relative_logdir")
            if logdir and (part / logdir).is_dir():
                folders.setdefault(str(part / logdir), part / logdir)
    trials: dict[str, Trial] = {}
    for trial_path in folders.values():
        trial = _load_trial(trial_path, spec, tree, objective, state)
        trials[trial.trial_id] = trial
    for trial_id, entry in state.items():  # listed by Ray but never started: no folder
        if trial_id not in trials:
            raw = dict(entry.get("config") or {})
            trial_problems: list[str] = []
            params, unknown = _searched_values(tree, raw)
            if unknown:
                trial_problems.append(
                    f"searched values unknown ({', '.join(unknown)}): the trial never got a folder and "
                    "Ray's saved state holds no plain-JSON config; shown empty, not exportable"
                )
            params = {k: v for k, v in raw.items() if k != TRIAL_INDEX}
            trials[trial_id] = _make_trial(trial_id, None, params, raw, [], 0, spec, objective, entry, None,
                                           problems=trial_problems, unknown=unknown)
    ordered = sorted(trials.values(), key=lambda t: t.trial_id)
    return Experiment(folder, spec, objective, objective_text, ordered, problems)


def _objective(spec: Mapping[str, Any], where: Path) -> tuple[str, Callable[[Mapping[str, Any]], float]]:
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


# ---------------------------------------------------------------------------------------------- files
@dataclasses.dataclass
class _Read:
    """What one file gave: ``value`` (None when nothing usable), ``problem`` (None: absent or fine),
    ``torn_end`` (the damage is at the end: records after it may be lost) and ``lost_epoch`` (the epoch
    a torn last record names, when its text shows it)."""

    value: Any = None
    problem: str | None = None
    torn_end: bool = False
    lost_epoch: int | None = None


_CUT_TAIL = re.compile(r"[-+.\w]{0,12}")
_EPOCH_IN_TEXT = re.compile(r'"(?:epoch|training_iteration)":\s*(\d+)')


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """(text, None); (None, None) for a missing file; (None, problem) for an empty, blank or unreadable
    one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"unreadable: {err.strerror or err}"
    if not data:
        return None, "empty"
    if not data.strip(b" \t\r\n\x00"):
        return None, f"blank: {len(data)} bytes of whitespace or NUL bytes, no data"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"corrupt: not UTF-8 text at byte {err.start}"


def _json_error(err: json.JSONDecodeError, text: str) -> tuple[str, bool]:
    """The problem text of a JSON parse error and whether the text was cut (the error is in the last,
    unfinished token: the write was cut short) rather than bad before its end."""
    where = f"invalid JSON at line {err.lineno} column {err.colno}"
    cut = err.msg.startswith("Unterminated string") or bool(_CUT_TAIL.fullmatch(text[err.pos:].rstrip()))
    return (f"torn: {where}" if cut else f"corrupt: {where} ({err.msg})"), cut


def _read_json(path: Path, kind: type, what: str) -> _Read:
    """A JSON document that must be a ``kind`` (``dict`` or ``list``, described by ``what``). A torn list
    keeps the complete elements before the tear (``value``), with the problem set."""
    text, problem = _read_text(path)
    if text is None:
        return _Read(problem=problem)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        problem, cut = _json_error(err, text)
        value, end = _scan_list(text) if kind is list else (None, 0)
        found = _EPOCH_IN_TEXT.search(text[end:]) if value is not None and cut else None
        return _Read(value, problem, torn_end=True, lost_epoch=int(found.group(1)) if found else None)
    if not isinstance(value, kind):
        return _Read(problem=f"not {what}")
    return _Read(value)


def _scan_list(text: str) -> tuple[list[Any] | None, int]:
    """The complete elements of a JSON list whose text is cut or corrupt after them, and where the
    first bad element starts (None when the text does not start a list)."""
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        return None, start
    decoder, out, i = json.JSONDecoder(), [], start + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            return out, i
        out.append(value)
        i = end


def _read_json_lines(path: Path) -> _Read:
    """Ray's ``result.json``: one JSON object per line. ``value`` is the objects that parse; a line that
    does not parse is never skipped silently: it sets ``problem`` (``torn`` for an unfinished last
    line, ``corrupt`` otherwise)."""
    text, problem = _read_text(path)
    if text is None and problem is not None and problem.startswith("corrupt: not UTF-8"):
        text = path.read_bytes().decode("utf-8", errors="replace")  # bad bytes spoil their lines only
    if text is None:
        return _Read(problem=problem)
    lines = text.splitlines()
    numbered = [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip(" \t\r\x00")]
    out: list[dict[str, Any]] = []
    bad: list[int] = []
    for n, line in numbered:
        try:
            value = json.loads(line) if "\ufffd" not in line else None
        except ValueError:
            value = None
        if isinstance(value, dict):
            out.append(value)
        else:
            bad.append(n)
    if not bad:
        return _Read(out)
    last = numbered[-1][0]
    torn_end = bad[-1] == last
    cut = torn_end and not text.endswith("\n")
    where = f"line{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} of {last}"
    label = "torn" if cut and len(bad) == 1 else "corrupt"
    problem = f"{label}: invalid JSON at {where}"
    lost = None
    if torn_end:
        found = _EPOCH_IN_TEXT.search(lines[last - 1])
        lost = int(found.group(1)) if found else None
    return _Read(out, problem, torn_end=torn_end, lost_epoch=lost)


def _read_yaml(path: Path) -> tuple[Any, str | None]:
    """(value, None), (None, None) for a missing file, or (None, problem) for an empty, blank, torn or
    invalid one; a file written by ``yaml.safe_dump`` ends with a newline, so one without is torn."""
    text, problem = _read_text(path)
    if text is None:
        return None, problem
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        cut = "torn" if not text.endswith("\n") else "corrupt"
        return None, f"{cut}: invalid YAML{line}"
    if not text.endswith("\n"):
        return None, "torn: no newline at the end (cut mid-line)"
    return value, None


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A trial's ``config.yaml``: (config, None), (None, None) when missing, or (None, problem) when it is
    empty, torn, incomplete (the engine writes every :class:`~hiercls.config.TrainConfig` key) or
    invalid."""
    value, problem = _read_yaml(path)
    if problem is not None or value is None:
        return None, problem
    if not isinstance(value, dict):
        return None, "not a mapping of config keys"
    if list(value)[-1:] == ["amp"]:  # complete for the hiercls that wrote it (before the accelerated path)
        value = upgrade_saved_values(value)
    value = fill_added_keys(value)  # complete for a hiercls before the embedding losses
    fields = TrainConfig.field_names()  # the fixed keys: every config.yaml has them
    order = TrainConfig.valid_keys()  # how the engine writes them, with the registered parameters
    missing = [k for k in fields if k not in value]
    if missing:
        present = [k for k in value if k in order]
        in_order = present == [k for k in order if k in present]
        if present and in_order and order.index(missing[0]) > order.index(present[-1]):
            return None, f"torn: ends after key {present[-1]!r} ({len(present)} of {len(order)} keys)"
        return None, f"incomplete: {len(missing)} key(s) missing ({', '.join(missing[:5])}" + (
            ", ...)" if len(missing) > 5 else ")")
    try:
        TrainConfig.from_dict(value)
    except ConfigError as err:
        lines = [problem for problem in err.problems if not problem.startswith("valid keys")]
        return None, "invalid: " + "; ".join(lines or [str(err)])
    return value, None


def _state_problems(folder: Path) -> list[str]:
    """The problem of the newest ``experiment_state-*.json`` when :func:`read_trial_states` could not read
    it (none when there is no such file)."""
    newest = newest_state_file(folder)
    if newest is None:
        return []
    read = _read_json(newest, dict, "a JSON object")
    what = read.problem or "not in Ray's format (no readable trial_data)"
    if read.problem is None and not (read.value or {}).get("trial_data"):
        return []  # a state that lists no trial: nothing lost
    return [f"{newest.name}: {what}; Ray's trial statuses are unknown: statuses come from the trial "
            "folders alone (a trial still running when the search stopped may show as stopped early)"]


def dedupe_records(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One record per epoch (the latest in file order wins), ascending, in today's spelling
    (:func:`~hiercls.value_schedule.upgrade_record`); also the number dropped.

    The epoch is the record's ``epoch`` key (Ray's ``training_iteration`` when absent); records with
    neither (or an epoch that is not a whole number) are skipped.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    kept = 0
    for r in records:
        try:
            epoch = int(r.get("epoch", r.get("training_iteration")))
        except (TypeError, ValueError):
            continue
        kept += 1
        r = upgrade_record(r)
        r["epoch"] = epoch
        by_epoch[epoch] = r
    return [by_epoch[e] for e in sorted(by_epoch)], kept - len(by_epoch)


def _last_epoch(records: Sequence[Mapping[str, Any]]) -> int:
    deduped, _ = dedupe_records(records)
    return deduped[-1]["epoch"] if deduped else 0


# ---------------------------------------------------------------------------------------------- searched
def _search_tree(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's ``search:`` mapping parsed into :class:`hiercls.tune.spec.Param` trees (empty when it
    cannot be parsed)."""
    problems: list[str] = []  # the spec was validated before the search ran
    epochs = spec.get("epochs") if isinstance(spec.get("epochs"), int) else None
    try:
        return parse_params(spec.get("search") or {}, "search", problems, epochs=epochs)
    except (TypeError, ValueError, AttributeError):
        return {}


def _same(a: Any, b: Any) -> bool:
    """Equal values, a list equal to the tuple with the same items."""
    return (tuple(a) if isinstance(a, list) else a) == (tuple(b) if isinstance(b, list) else b)


def _searched_values(tree: Mapping[str, Any], source: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values in ``source`` of the keys the spec searches (a choice's branch keys only under the
    branch ``source`` selects; a value fixed inside a branch from the spec when ``source`` lacks it),
    and the searched keys ``source`` has no value for, in the spec's order."""
    found: dict[str, Any] = {}
    missing: list[str] = []

    def walk(params: Mapping[str, Any]) -> None:
        for name, p in params.items():
            if name in source:
                found[name] = source[name]
            elif p.kind == "fixed":
                found[name] = p.value
            else:
                missing.append(name)
                continue
            if p.branches is not None:
                for value, branch in p.branches.items():
                    if _same(value, found[name]):
                        walk(branch)

    walk(tree)
    return found, missing


# ---------------------------------------------------------------------------------------------- one trial
def _load_trial(path: Path, spec: Mapping[str, Any], tree: Mapping[str, Any], objective,
                state: Mapping[str, Any]) -> Trial:
    result = _read_json_lines(path / RAY_RESULT_FILE)
    result_lines: list[dict[str, Any]] = result.value or []
    trial_id = path.name.removeprefix("trial_")
    for r in result_lines:
        if r.get("trial_id"):
            trial_id = str(r["trial_id"])
            break
    config, config_problem = _read_config(path / CONFIG_FILE)
    config_source = CONFIG_FILE if config is not None else None

    # searched values: params.json, else config.yaml, else Ray's copies; never defaults
    params_read = _read_json(path / PARAMS_FILE, dict, "a JSON object of searched values")
    if params_read.value is not None:  # a PB2 trial's config holds a loguniform value as log10(key)
        params_read = dataclasses.replace(params_read, value=searched_values(params_read.value))
    ray_config = next((r["config"] for r in result_lines if isinstance(r.get("config"), dict)), None)
    state_config = (state.get(trial_id) or {}).get("config") or None
    sources = [(PARAMS_FILE, params_read.value), (CONFIG_FILE, config),
               (f"{RAY_RESULT_FILE} (Ray's copy)", ray_config and searched_values(ray_config)),
               ("Ray's experiment state", state_config and searched_values(state_config))]
    raw_params: dict[str, Any] | None = None
    recovered_from = None
    for name, candidate in sources:
        if isinstance(candidate, dict) and not _searched_values(tree, candidate)[1]:
            raw_params = _searched_values(tree, candidate)[0] if name == CONFIG_FILE else dict(candidate)
            recovered_from = name
            break
    unknown: list[str] = []
    if raw_params is None:
        raw_params = dict(params_read.value or {})
        _, unknown = _searched_values(tree, raw_params)
    if unknown:
        names = ", ".join(unknown)
        consequence = f"searched values unknown ({names}): shown empty, the trial cannot be exported"
    elif recovered_from is not None:
        consequence = f"searched values taken from {recovered_from}"
    else:
        consequence = "the spec lists no searched key"
    params_problems = []
    if params_read.problem is not None:
        params_problems.append(f"{PARAMS_FILE}: {params_read.problem}; {consequence}")
    elif params_read.value is not None and recovered_from != PARAMS_FILE:
        missing = _searched_values(tree, params_read.value)[1]
        params_problems.append(f"{PARAMS_FILE}: no value for searched key(s) {', '.join(missing)}; "
                               f"{consequence}")
    elif unknown:
        params_problems.append(f"searched values unknown ({names}): no {PARAMS_FILE}, and no valid "
                               f"{CONFIG_FILE} or Ray copy holds them; shown empty, the trial cannot be "
                               "exported")
    params = {k: v for k, v in raw_params.items() if k != TRIAL_INDEX}

    # epoch records
    engine = _read_json(path / ENGINE_FILE, list, "a JSON list of epoch records")
    engine_records = [r for r in (engine.value or []) if isinstance(r, dict)]
    candidates = [(ENGINE_FILE, engine, engine_records), (RAY_RESULT_FILE, result, result_lines)]
    chosen = next(((n, rd, recs) for n, rd, recs in candidates if rd.problem is None and recs), None)
    if chosen is None:  # no undamaged source: the damaged one reaching the later epoch (engine on ties)
        chosen = max(candidates, key=lambda c: _last_epoch(c[2]))
    source_name, source_read, source_records = chosen
    records, dropped = dedupe_records(source_records)
    record_problems = []
    for name, read, _ in candidates:
        if read.problem is None:
            continue
        if not records:
            where = "no epoch record could be read"
        elif name == source_name:
            where = f"epoch records from its {len(source_records)} readable record(s)"
        else:
            where = f"epoch records from {source_name}"
        record_problems.append(f"{name}: {read.problem}; {where}")

    error = None
    error_file = path / "error.txt"
    if error_file.is_file():
        text = error_file.read_text(encoding="utf-8", errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        error = lines[-1].strip() if lines else "error.txt"
    trial = _make_trial(trial_id, path, params, raw_params, records, dropped, spec, objective,
                        state.get(trial_id), error, config, config_source, unknown=unknown)
    config_problems = []
    if config_problem is not None:
        rebuilt = ("config rebuilt from search_spec.yaml and the searched values"
                   if trial.config_source == "rebuilt" else "config unknown")
        config_problems.append(f"{CONFIG_FILE}: {config_problem}; {rebuilt}")
    trial.problems = params_problems + config_problems + record_problems
    if source_read.problem is not None and source_read.torn_end and trial.status == "stopped early":
        lost = source_read.lost_epoch
        trial.problems.append(
            f"status 'stopped early' is uncertain: {source_name} is damaged at its end, so the trial may "
            f"have run longer than the {trial.epochs_run} epoch(s) read"
            + (f" (the damaged record is epoch {lost}'s)" if lost is not None else "")
            + ("; Ray's status TERMINATED does not tell this from an ASHA stop"
               if trial.ray_status == "TERMINATED" else "; it may also be an ASHA stop")
        )
    return trial


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
    *,
    problems: list[str] | None = None,
    unknown: Sequence[str] = (),
) -> Trial:
    if config is None and not unknown:  # never rebuilt with defaults standing in for unknown values
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
                 error if status == "error" else None, list(problems or []), list(unknown))


def searched_params(spec: Mapping[str, Any]) -> list[Any]:
    """The searched parameters of a saved spec (:class:`hiercls.tune.spec.Param`, branch parameters
    included, fixed values excluded), in the order the spec lists them; a name searched in several
    branches appears once per branch."""
    return [p for p, _ in iter_params(_search_tree(spec)) if p.kind != "fixed"]


def rebuild_config(
    spec: Mapping[str, Any], raw_params: Mapping[str, Any], trial_id: str
) -> dict[str, Any] | None:
    """The resolved training config a trial ran, rebuilt as :func:`hiercls.tune.trainable.train_trial`
    builds it (spec's fixed keys + searched values + derived seed); None when that fails. ``out_folder``
    is left unset (the trial's folder is not known here). The caller must pass every searched value:
    a missing one would silently take the training default."""
    try:
        known = {k: v for k, v in spec.items() if k in SearchSpec.settings()}
        search_spec = SearchSpec.from_dict(known)
        config = trial_config(search_spec.base_config(), raw_params, search_spec.seed, trial_id)
        return config.resolved().to_dict()
    except (ConfigError, SpecError, TypeError, ValueError, KeyError):
        return None
