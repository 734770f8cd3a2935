"""The search plan: everything the driver needs, decided once from the spec (and, on ``--resume``, the
saved experiment) before Ray starts: the mode (:mod:`hiercls.tune.modes`), the trainable and what it
reports, the parts, resume and growth, the constraint bounds. The runner builds the Ray objects from the
frozen :class:`SearchPlan` (:mod:`hiercls.tune.builders`), filling in only the cluster's capacity.
Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hiercls.experiment.layout import SPEC_FILE
from hiercls.experiment.lock import LOCK_FILE, check_not_in_use
from hiercls.experiment.manifest import user_key
from hiercls.experiment.parts import GROW_PREFIX, Part, read_parts, unfinished
from hiercls.experiment.study import (
    STUDY_FILE,
    JournalError,
    check_study,
    open_storage,
    storage_text,
    study_names,
)
from hiercls.tune import toy, trainable
from hiercls.tune.constraints import Constraint, merge_bounds, read_bounds
from hiercls.tune.guard import STATE_GLOB, TUNER_FILE, check_state_intact, check_trusted
from hiercls.tune.modes import Mode, population_problems, scheduler_of, searcher_of
from hiercls.tune.objective import MULTI_METRICS
from hiercls.tune.parameters import Param
from hiercls.tune.spec import PER_TRIAL_SPLITS, SearchSpec, SpecError, spec_differences

__all__ = ["TRAINABLES", "TRAINABLE_KEY", "SearchPlan", "check_experiment", "make_plan", "restorable",
           "resume_command"]

TRAINABLE_KEY = "trainable"
"""Saved in the experiment's ``search_spec.yaml`` beside the spec: a resume reuses the trainable."""
TRAINABLES: dict[str, tuple[str, ...]] = {"train": trainable.REPORTS, "toy": toy.REPORTS}
"""The trainables by name, with the metrics each reports (what an objective or a constraint may read)."""
GROW_SEED_STEP = 7919
"""A growth's sampler seed is ``seed + 7919 * k`` (grow-k): the search seed again would draw the first
part's random startup values (TPE's first trials, NSGA-II's first generation) once more."""


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What a search runs (:func:`make_plan`): the resolved ``spec``; the ``searcher`` and ``scheduler``
    rows in use; the parsed ``params``; the ``trainable``; ``resume``; ``parts``, the Ray experiments so
    far; ``restore_last`` (the last part has trials left: ``Tuner.restore`` it); ``grow``, the part a
    growth adds once the last is done (else None); the parsed ``constraints`` and the ``bounds`` known now
    (None while a baseline must fix them); ``max_concurrent`` (None: the cluster's capacity, set by
    :meth:`with_capacity`); ``notes``, warnings to print once."""

    spec: SearchSpec
    searcher: Mode
    scheduler: Mode
    params: Mapping[str, Param]
    trainable: str
    resume: bool
    parts: tuple[Part, ...]
    restore_last: bool
    grow: Part | None
    constraints: tuple[Constraint, ...]
    bounds: Mapping[str, float] | None
    max_concurrent: int | None
    notes: tuple[str, ...] = ()
    trusted: bool = False
    """``--trust-experiment`` on a resume: its pickles were not checked (and are recorded as the user's)."""

    @property
    def experiment_dir(self) -> Path:
        return self.spec.experiment_dir

    @property
    def members(self) -> int:
        """The trials of the Ray experiment this plan starts (a growth's, else the search's): under PB2, the
        members of the population, all compared at each perturbation epoch."""
        return (self.grow if self.grow is not None else self.parts[0]).num_samples

    def starts_tuner(self) -> bool:
        """Whether a new Ray experiment is built (a new search or a growth): it needs ``max_concurrent``."""
        return not self.resume or self.grow is not None

    def points(self, part: Part) -> list[dict[str, Any]] | None:
        """The ``points_to_evaluate`` of ``part``: the spec's for the first part, none for a growth (they
        ran)."""
        return [dict(p) for p in self.spec.points_to_evaluate] or None if part == self.parts[0] else None

    def sampler_seed(self, part: Part) -> int:
        """The seed of ``part``'s sampler: the search seed, ``+ GROW_SEED_STEP * k`` for ``grow-k``."""
        k = int(part.name.removeprefix(GROW_PREFIX)) if part.name.startswith(GROW_PREFIX) else 0
        return self.spec.seed + GROW_SEED_STEP * k

    def describe(self) -> list[str]:
        """The plan in a few lines (``tune_main.py --check``)."""
        spec, what = self.spec, "new search"
        if self.resume:
            what = "resume: " + ", then ".join(
                ([f"restore {self.parts[-1].folder.name} (Ray runs what is unfinished)"] if self.restore_last
                 else [])
                + ([f"grow by {self.grow.num_samples} trials in {self.grow.name}"] if self.grow else []))
        shown = ", ".join(f"{k} {getattr(spec, k)}" for k in self.scheduler.takes)
        lines = [
            f"experiment: {self.experiment_dir} ({what})",
            f"searcher: {self.searcher.name} ({self.searcher.summary})",
            f"scheduler: {self.scheduler.name}" + (f" ({shown})" if shown else ""),
            f"trials: {spec.num_samples} of {spec.epochs} epochs, trainable {self.trainable}, "
            f"{self.max_concurrent or 'as many as the cluster runs'} at once",
            *([self._population_line()] if self.scheduler.population else []),
            f"objective: {spec.objective}" + (" (NSGA-II: val_top1_error, val_mistake_severity)"
                                              if self.searcher.name == "nsga2" else ""),
        ]
        if self.searcher.study:
            lines.append(f"Optuna study: {storage_text(self.experiment_dir, spec.optuna_storage)}")
        lines += [f"constraint: {c.text}" for c in self.constraints]
        return lines + [f"warning: {note}" for note in self.notes]

    def _population_line(self) -> str:
        """How the population runs: all at once, or time-multiplexed (``pb2_time_multiplexed``)."""
        if self.spec.pb2_time_multiplexed:
            return (f"population: {self.members} members, time-multiplexed (pb2_time_multiplexed): all are "
                    "started, as many run as the cluster fits, and Ray pauses members at each perturbation "
                    "epoch to run the others")
        return (f"population: {self.members} members, all running at once (pb2_time_multiplexed false: a "
                f"cluster that runs fewer than {self.members} trials at once is refused when Ray starts)")

    def with_capacity(self, capacity: int) -> SearchPlan:
        """This plan with ``max_concurrent`` set to ``capacity`` when it was left to the cluster."""
        if self.max_concurrent is not None:
            return self
        return dataclasses.replace(self, max_concurrent=capacity)


# ---------------------------------------------------------------------------------------------- the plan
def make_plan(spec: SearchSpec, *, resume: bool = False, trainable: str | None = None,
              trust: bool = False) -> SearchPlan:
    """Validate ``spec`` and decide the search. Nothing is written and nothing is unpickled.

    Raises:
        SpecError: an invalid spec, an unknown trainable or one that does not report a metric the
            objective or a constraint reads, an existing experiment (new search), or one that cannot be
            resumed (missing, nothing saved, changed spec, a growth that is not allowed).
        UntrustedExperimentError: resuming a folder another user could have written (unless ``trust``).
        TornStateError: Ray's saved state of a part is torn.
        JournalError: a resume's Optuna journal is missing or damaged.
        ManifestError: the user's key is readable by others.
    """
    notes = spec.validate()
    spec = spec.resolved()
    if trainable not in (None, *TRAINABLES):
        raise SpecError([f"trainable {trainable!r} is unknown; valid: {', '.join(TRAINABLES)}"])
    params = spec.params()
    searcher = searcher_of(spec, params)
    scheduler = scheduler_of(spec, searcher)
    saved, parts = check_experiment(spec, resume=resume, trust=trust)
    if saved and "split_seed" not in saved:  # saved before one split per search: its trials keep their own
        spec = dataclasses.replace(spec, split_seed=PER_TRIAL_SPLITS)
        notes.append(f"{spec.experiment_dir} was started before one validation split per search: its trials "
                     "go on with their own splits (split_seed: trial), so analysis.rank ranks them per split")
    user_key(create=False)  # a key others can read is refused before anything runs
    if searcher.study:
        _check_study(spec, resume)
    chosen = _choose_trainable(spec, trainable, saved, resume)
    _check_reports(spec, chosen, searcher)
    done = sum(p.num_samples for p in parts)
    grow = Part(spec.experiment_dir / f"{GROW_PREFIX}{len(parts)}", spec.num_samples - done) \
        if resume and spec.num_samples > done else None
    if scheduler.population and (grow is not None or not resume):  # a Ray experiment starts: all at once
        _refuse(population_problems(spec, (grow or parts[0]).num_samples))
    constraints = tuple(spec.parsed_constraints())
    return SearchPlan(
        spec=spec, searcher=searcher, scheduler=scheduler, params=params, trainable=chosen, resume=resume,
        parts=tuple(parts), restore_last=resume and (grow is None or unfinished(parts[-1])), grow=grow,
        constraints=constraints, bounds=_bounds(spec, constraints, resume),
        max_concurrent=spec.max_concurrent, notes=tuple(notes), trusted=trust and resume,
    )


def _refuse(problems: list[str]) -> None:
    """Raises:
        SpecError: listing ``problems``, when there are any."""
    if problems:
        raise SpecError(problems)


def _bounds(spec: SearchSpec, constraints: tuple[Constraint, ...], resume: bool
            ) -> Mapping[str, float] | None:
    """The bounds known before any trial: fixed numbers, or (resume) those the experiment saved."""
    if not constraints:
        return None
    if resume:
        return (read_bounds(spec.experiment_dir) or {}).get("bounds")
    return None if any(c.relative for c in constraints) else merge_bounds(constraints, None)


def _check_study(spec: SearchSpec, resume: bool) -> None:
    """A new search needs its own study: ``--optuna-storage`` must open (an SQLite file's folder must exist
    and be writable) and hold no study of its name. A resume needs the study it had: its journal file (the
    URL is checked by :func:`check_experiment`). Checked before anything is written.

    Raises:
        StudyStorageError: the URL cannot be opened or written (one line naming it; exit status 2).
        SpecError: it holds a study named ``spec.name``.
        JournalError: resuming without the experiment's journal (exit status 3).
    """
    journal = spec.experiment_dir / STUDY_FILE
    if resume and not spec.optuna_storage and not journal.is_file():
        raise JournalError(f"cannot resume {str(spec.experiment_dir)!r}: its Optuna journal {str(journal)!r} "
                           "is missing (the searcher's study: every trial's values and results); restore it "
                           "from a backup, or start the search again under a new --name (nothing was "
                           "changed)")
    if resume or not spec.optuna_storage:
        return
    names = study_names(open_storage(spec.experiment_dir, spec.optuna_storage))
    if spec.name in names:
        raise SpecError([f"--optuna-storage {spec.optuna_storage!r} already holds a study named "
                         f"{spec.name!r}: a new search needs its own (choose another --name, or --resume "
                         "that search)"])


def _check_reports(spec: SearchSpec, chosen: str, searcher: Mode) -> None:
    """The objective's and the constraints' metrics must be among what trainable ``chosen`` reports.

    Raises:
        SpecError: naming each metric it never reports (it would never be judged).
    """
    reports = TRAINABLES[chosen]
    wanted = {"objective": spec.parsed_objective().metrics}
    if searcher.name == "nsga2":
        wanted["--multi-objective"] = MULTI_METRICS
    for c in spec.parsed_constraints():
        wanted[f"constraint {c.text!r}"] = (c.metric,)
    problems = [f"{what} reads {metric}, which the {chosen} trainable never reports (it reports "
                f"{', '.join(reports)})" for what, metrics in wanted.items() for metric in metrics
                if metric not in reports]
    if problems:
        raise SpecError(problems)


def _choose_trainable(spec: SearchSpec, trainable: str | None, saved: Mapping[str, Any], resume: bool) -> str:
    """The trainable to run: the one asked for (``train`` by default) for a new search; for a resume
    the experiment's own from its saved spec ``saved`` (``train`` when not recorded), and a different
    one is refused."""
    if not resume:
        return trainable or "train"
    own = str(saved.get(TRAINABLE_KEY) or "train")
    if trainable is not None and trainable != own:
        raise SpecError([
            f"refusing to resume {str(spec.experiment_dir)!r} with --trainable {trainable}: it was started "
            f"with --trainable {own} (resume without --trainable, or use a new --name)"
        ])
    return own


# ---------------------------------------------------------------------------------------------- resume
def resume_command(spec: SearchSpec) -> str:
    """The command that resumes this experiment (the README's): ``python tune_main.py --name NAME
    --storage-path DIR --resume`` (the saved spec supplies everything else)."""
    return (f"python tune_main.py --name {shlex.quote(str(spec.name))} --storage-path "
            f"{shlex.quote(str(spec.storage_path))} --resume")


def restorable(folder: Path) -> bool:
    """Whether Ray saved a state to restore in ``folder``: ``tuner.pkl`` and an
    ``experiment_state-*.json`` (what ``Tuner.restore`` reads first; checked without Ray)."""
    return (folder / TUNER_FILE).is_file() and any(folder.glob(STATE_GLOB))


def check_experiment(spec: SearchSpec, *, resume: bool, trust: bool = False
                     ) -> tuple[dict[str, Any], list[Part]]:
    """Refuse to overwrite an experiment without ``resume``; for a resume, a folder another user could
    have written (unless ``trust``), nothing to restore, a changed spec or a torn Ray state. Nothing is
    unpickled. Returns the experiment's saved spec (with its ``trainable``; ``{}`` for a new search) and
    its parts (:mod:`hiercls.experiment.parts`; a new search's one part, the folder itself).

    Raises:
        SpecError: the experiment exists (new search), does not exist or has nothing to restore
            (resume), or its saved spec differs (the changed keys are listed).
        UntrustedExperimentError: the folder or a state file in it is another user's or world-writable
            (see :func:`hiercls.tune.guard.untrusted_paths`), or holds a pickle not in its signed record
            (:mod:`hiercls.experiment.manifest`), and ``trust`` is False.
        TornStateError: Ray's saved state is incomplete (:func:`hiercls.tune.guard.check_state_intact`).
        JournalError: the Optuna journal is damaged beyond a torn last record
            (:func:`hiercls.experiment.study.check_study`).
        StudyStorageError: the ``--optuna-storage`` database cannot be opened or written.
    """
    folder = spec.experiment_dir
    check_not_in_use(folder)
    exists = folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())
    if not resume:
        if exists:
            raise SpecError([f"experiment {str(folder)!r} already exists; pass --resume to continue it or "
                             "choose another --name (it is never overwritten)"])
        return {}, [Part(folder, int(spec.num_samples))]
    if not exists:
        raise SpecError([f"nothing to resume: experiment {str(folder)!r} does not exist"])
    check_state_intact(folder)  # first: a torn state file is named as torn, not as one hiercls did not write
    if not trust:
        check_trusted(folder)
    if not restorable(folder):
        raise SpecError([f"experiment {str(folder)!r} has no saved Tune state to restore (it stopped before "
                         "its first save); start again under another --name"])
    saved = _saved_spec(folder / SPEC_FILE)
    _check_unchanged(spec, saved)
    try:
        parts = read_parts(folder, int(saved.get("num_samples") or spec.num_samples))
    except ValueError as err:
        raise SpecError([str(err)]) from err
    for part in parts[1:]:
        check_state_intact(part.folder)
        if not trust:
            check_trusted(part.folder)
    check_study(folder, spec.optuna_storage)  # the parts write into the experiment's journal
    return saved, parts


def _saved_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SpecError([f"{str(path)!r} is not a readable saved search spec: {err}"]) from err


def _check_unchanged(spec: SearchSpec, saved: Mapping[str, Any]) -> None:
    """A resume must run the saved spec; only ``num_samples`` may grow (:func:`_check_growth`).

    Raises:
        SpecError: listing the changed keys.
    """
    if not saved:
        return
    diffs = spec_differences({k: v for k, v in saved.items() if k != TRAINABLE_KEY}, spec.to_dict())
    if isinstance(saved.get("num_samples"), int) and spec.num_samples != saved["num_samples"]:
        _check_growth(spec, int(saved["num_samples"]))
        diffs = [d for d in diffs if not d.startswith("num_samples:")]
    if diffs:
        raise SpecError([
            f"refusing to resume {str(spec.experiment_dir)!r}: the search specification changed in "
            f"{len(diffs)} key(s) (resume with the original space and options, or use a new --name)", *diffs,
        ])


def _check_growth(spec: SearchSpec, total: int) -> None:
    """A resume with another ``num_samples`` than the search's ``total``: growing it is allowed (a larger
    number; for a search relative to a baseline only once its bounds are fixed). A grid, whose
    ``num_samples`` is its number of points, is refused by the spec check before this.

    Raises:
        SpecError: a smaller number, or a baseline that never finished.
    """
    if spec.num_samples < total:
        raise SpecError([f"--num-samples {spec.num_samples} is below the search's {total} trials: a search "
                         "can grow (a larger --num-samples adds trials) but not shrink; resume without "
                         "--num-samples"])
    if any(c.relative for c in spec.parsed_constraints()) and read_bounds(spec.experiment_dir) is None:
        raise SpecError(["cannot grow this constrained search: its baseline trial never finished, so its "
                         "bounds are not fixed; resume it without --num-samples first"])

