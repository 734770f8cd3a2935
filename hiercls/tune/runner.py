"""Run a search: the experiment checks before Ray starts, the Tuner (or ``Tuner.restore``), and the table
of the best trials.

Order of work in :func:`run_search`:

1. the spec is validated (every problem listed in one :class:`~hiercls.tune.spec.SpecError`); the
   experiment folder ``storage_path/name`` is checked: a new search refuses an existing experiment;
   ``resume`` refuses a folder another user could have written (Ray unpickles its state:
   :func:`hiercls.tune.guard.check_trusted`, unless ``trust``), a folder with nothing to restore, a
   changed spec (listing the changed keys) and a torn Ray state (:func:`~hiercls.tune.guard.
   check_state_intact`); the folder must be writable (:func:`hiercls.storage.check_writable`);
2. CIFAR-100 is decoded once on the driver (warming the decode cache every trial on this node reads);
3. Ray starts (or is joined: ``address``, first probed for a Ray GCS), and the per-trial CPU/GPU
   request is checked against the nodes (a GPU request on a cluster without GPUs fails here instead of
   leaving trials PENDING): :mod:`hiercls.tune.cluster`;
4. OptunaSearch (TPE, seeded, define-by-run for conditional spaces, ``points_to_evaluate`` first) under
   a concurrency limit, with ``ASHAScheduler(time_attr="epoch", max_t=epochs)`` (``scheduler: none``:
   none); ``multi_objective`` uses NSGA-II on (val_top1_error, val_mistake_severity) and no scheduler.
   A grid search (:meth:`~hiercls.tune.spec.SearchSpec.grid_points`) runs through Ray's
   ``BasicVariantGenerator`` instead: the param space is one ``tune.grid_search`` over the list of
   points (each point a trial's whole config, with its index), so every point runs exactly once, also
   across ``--resume``, and each trial's config holds only its point's keys; no scheduler unless
   ``scheduler: asha``. (Optuna is not used for grids: Ray's ``OptunaSearch`` refuses ``grid_search``
   and Optuna's ``GridSampler`` repeats points under concurrency.) Ray writes through
   :mod:`hiercls.tune.atomicfs` (no torn files; old checkpoints deleted only once the saved state no
   longer names them); a write failure on the storage stops the search as Ctrl-C does
   (:func:`hiercls.tune.guard.ray_log_guard`), and a failed restore raises instead of Ray starting a
   new search;
5. a table of the best trials (:func:`format_table`) and ``summary.csv`` in the experiment folder
   (:mod:`hiercls.tune.summary`; written atomically, also after a write failure when there is room).

The names other code imports from here (``ResourceError``, ``cluster_capacity``, ``check_reachable``,
``enable_cluster_token``, ``SearchOutcome``, ``summarize``, ...) are re-exported from those modules.

Known Ray limits (documented for users): ASHA's rung records are not restored by ``Tuner.restore``
(after a resume the first trials reaching a rung are compared with fewer or no earlier results, so fewer
trials are stopped). (Ray alone would tell Optuna an ASHA-stopped trial's last, early value as COMPLETE;
:class:`~hiercls.tune.space.SearchAlgorithm` tells it PRUNED.) A constrained search
(:mod:`hiercls.tune.constraints`) runs its baseline trial alone before any other.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.config import param_keys
from hiercls.storage import StorageError
from hiercls.tune.cluster import (
    ResourceError,
    _connection_help,
    check_reachable,
    check_resources,
    cluster_capacity,
    enable_cluster_token,
)
from hiercls.tune.constraints import read_bounds
from hiercls.tune.layout import SPEC_FILE, SUMMARY_FILE, pareto_mask
from hiercls.tune.parts import GROW_PREFIX, Part, read_parts, unfinished, write_parts
from hiercls.tune.spec import DataNotReadyError, SearchSpec, SpecError, spec_differences
from hiercls.tune.summary import (
    MULTI_METRICS,
    SearchOutcome,
    _best,
    _pareto,
    _rank_key,
    _write_summary,
    summarize,
)

__all__ = [
    "SPEC_FILE",
    "SearchOutcome",
    "SearchStorageError",
    "check_experiment",
    "check_reachable",
    "check_resources",
    "cluster_capacity",
    "enable_cluster_token",
    "format_table",
    "grid_param_space",
    "pareto_mask",
    "resume_command",
    "run_search",
    "summarize",
]

TRAINABLE_KEY = "trainable"  # also saved in SPEC_FILE: a resume reuses the experiment's trainable


# ---------------------------------------------------------------------------------------------- checks
def check_experiment(spec: SearchSpec, *, resume: bool, trust: bool = False) -> dict[str, Any]:
    """Refuse to overwrite an experiment without ``resume``, and for a resume: a folder another user
    could have written (unless ``trust``), a changed spec, a folder with nothing to restore, or a torn
    Ray state. Nothing is unpickled here.

    Returns the experiment's saved spec (with its ``trainable``) when resuming, else ``{}``.

    Raises:
        SpecError: the experiment exists (new search), does not exist or has nothing to restore
            (resume), or its saved spec differs (the changed keys are listed).
        UntrustedExperimentError: the folder or a state file in it is another user's or world-writable
            (see :func:`hiercls.tune.guard.untrusted_paths`), and ``trust`` is False.
        TornStateError: Ray's saved state is incomplete (:func:`hiercls.tune.guard.check_state_intact`).
    """
    from ray import tune

    from hiercls.tune.guard import STATE_GLOB, check_state_intact, check_trusted

    folder = spec.experiment_dir
    saved_path = folder / SPEC_FILE
    exists = folder.is_dir() and any(folder.iterdir())
    if not resume:
        if exists:
            raise SpecError([
                f"experiment {str(folder)!r} already exists; pass --resume to continue it or choose "
                "another --name (it is never overwritten)"
            ])
        return {}
    if not exists:
        raise SpecError([f"nothing to resume: experiment {str(folder)!r} does not exist"])
    if not trust:
        check_trusted(folder)
    if not tune.Tuner.can_restore(str(folder)) or not any(folder.glob(STATE_GLOB)):
        raise SpecError([
            f"experiment {str(folder)!r} has no saved Tune state to restore (it stopped before its first "
            "save); start again under another --name"
        ])
    saved: dict[str, Any] = {}
    if saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        diffs = spec_differences({k: v for k, v in saved.items() if k != TRAINABLE_KEY}, spec.to_dict())
        if isinstance(saved.get("num_samples"), int) and spec.num_samples != saved["num_samples"]:
            _check_growth(spec, int(saved["num_samples"]))
            diffs = [d for d in diffs if not d.startswith("num_samples:")]
        if diffs:
            raise SpecError([
                f"refusing to resume {str(folder)!r}: the search specification changed in "
                f"{len(diffs)} key(s) (resume with the original space and options, or use a new --name)",
                *diffs,
            ])
    check_state_intact(folder)
    try:
        parts = read_parts(folder, int(saved.get("num_samples") or spec.num_samples))
    except ValueError as err:
        raise SpecError([str(err)]) from err
    for part in parts[1:]:
        if not trust:
            check_trusted(part.folder)
        check_state_intact(part.folder)
    return saved


def _check_growth(spec: SearchSpec, total: int) -> None:
    """A resume with another ``num_samples`` than the search's ``total``: growing it is allowed (a larger
    number, not for a grid, and for a search relative to a baseline only once its bounds are fixed).

    Raises:
        SpecError: a smaller number, a grid search, or a baseline that never finished.
    """
    if spec.num_samples < total:
        raise SpecError([
            f"--num-samples {spec.num_samples} is below the search's {total} trials: a search can grow (a "
            "larger --num-samples adds trials) but not shrink; resume without --num-samples"
        ])
    if spec.is_grid():
        raise SpecError([f"--num-samples {spec.num_samples}: a grid search runs its {total} points once "
                         "each and cannot grow; add points in a new search"])
    if any(c.relative for c in spec.parsed_constraints()) and read_bounds(spec.experiment_dir) is None:
        raise SpecError(["cannot grow this constrained search: its baseline trial never finished, so its "
                         "bounds are not fixed; resume it without --num-samples first"])


def resume_command(spec: SearchSpec) -> str:
    """The command that resumes this experiment (the README's): ``python tune_main.py --name NAME
    --storage-path DIR --resume`` (the saved spec supplies everything else)."""
    import shlex

    return (f"python tune_main.py --name {shlex.quote(str(spec.name))} --storage-path "
            f"{shlex.quote(str(spec.storage_path))} --resume")


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


# ---------------------------------------------------------------------------------------------- the search
def run_search(
    spec: SearchSpec,
    *,
    resume: bool = False,
    trainable: str | None = None,
    toy_sleep: float = 0.0,
    echo: Callable[[str], Any] = print,
    ray_init_kwargs: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    trust: bool = False,
    sigterm_interrupts: bool = False,
) -> SearchOutcome:
    """Validate, start (or resume) the search described by ``spec`` and summarise it.

    Args:
        spec: the search; validated here before anything else happens.
        resume: continue ``storage_path/name`` with ``Tuner.restore`` (unfinished trials resume from
            their last checkpoint, errored ones restart). Restoring unpickles Ray's saved state: the
            folder is checked first (:func:`hiercls.tune.guard.check_trusted`).
        trainable: ``train`` (the real one) or ``toy`` (:mod:`hiercls.tune.toy`: no data, no training);
            None: ``train`` for a new search, the experiment's own for a resume (saved in its spec).
        toy_sleep: seconds per toy epoch.
        echo: where the summary lines go.
        ray_init_kwargs: extra ``ray.init`` arguments when this call starts Ray.
        callbacks: ``tune.Callback`` objects for a new search (e.g. timing in the benchmark).
        trust: resume even a folder that another user could have written (``--trust-experiment``).
        sigterm_interrupts: treat SIGTERM (e.g. a batch system's time limit) as Ctrl-C while the search
            runs: Tune saves its state and stops (``ray.init`` would otherwise install its own handler,
            which exits at once). Main thread only.

    Every file Ray writes to the experiment folder is written atomically
    (:mod:`hiercls.tune.atomicfs`), and so are ``search_spec.yaml`` and ``summary.csv``.

    Raises:
        SpecError: invalid spec or experiment folder state (before Ray starts).
        UntrustedExperimentError: resuming a folder another user could have written (before Ray starts).
        ResourceError: no node can host a trial, or the cluster at ``address`` cannot be joined.
        StorageError: the experiment folder is not writable (before Ray starts); Ray's saved state is
            torn (:class:`~hiercls.tune.guard.TornStateError`); or a write failed during the search
            (:class:`SearchStorageError`: the search was stopped, its state and finished trials kept,
            ``summary.csv`` written when possible, the table printed).
    """
    from hiercls.storage import check_writable

    started = time.perf_counter()
    notes = spec.validate()
    for note in notes:
        echo(f"warning: {note}")
    spec = spec.resolved()
    if trainable not in (None, "train", "toy"):
        raise SpecError([f"trainable {trainable!r} is unknown; valid: train, toy"])
    saved = check_experiment(spec, resume=resume, trust=trust)
    # a grown search is several Ray experiments (hiercls.tune.parts); a larger num_samples grows it
    parts = read_parts(spec.experiment_dir, int(saved.get("num_samples") or spec.num_samples)) if resume \
        else [Part(spec.experiment_dir, int(spec.num_samples))]
    grow_to = spec.num_samples if resume and spec.num_samples > sum(p.num_samples for p in parts) else None
    trainable = _choose_trainable(spec, trainable, saved, resume)
    folder = check_writable(spec.experiment_dir, "--storage-path")
    cache_dir, base = None, spec.base_config()
    if trainable == "train":
        base["data_dir"], cache_dir = _warm_data(spec, echo)

    import ray
    from ray import tune

    from hiercls.storage import atomic_write_text, describe_os_error
    from hiercls.tune.atomicfs import (
        atomic_local_filesystem,
        flush_deferred_deletions,
        remove_stale_temporaries,
    )
    from hiercls.tune.constraints import merge_bounds, write_bounds
    from hiercls.tune.guard import RestoreFailedError, TornStateError, ray_log_guard

    # one checkpoint kept per trial forces an experiment snapshot after every epoch; that is intended
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from hiercls.tune.toy import toy_trial
    from hiercls.tune.trainable import TrialSetup, train_trial

    own_ray = False
    if ray.is_initialized() and spec.address:
        echo(f"warning: Ray is already running in this process; address {spec.address!r} is not used")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": True,
                                  "logging_level": "WARNING"}
        # "local": a new instance, never a stale cluster found through /tmp/ray/ray_current_cluster
        kwargs["address"] = spec.address or "local"
        kwargs.update(ray_init_kwargs or {})
        check_reachable(kwargs["address"])
        note = enable_cluster_token(kwargs["address"])
        if note:
            echo(note)
        try:
            ray.init(**kwargs)
        except ConnectionError as err:
            raise ResourceError(_connection_help(kwargs["address"], err)) from err
        own_ray = True

    previous_sigterm = None
    if sigterm_interrupts and threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_sigint)

    failures: list[OSError] = []

    def save_spec() -> None:  # the experiment's spec, with its trainable (what a resume reads)
        atomic_write_text(folder / SPEC_FILE, spec.to_yaml() + yaml.safe_dump({TRAINABLE_KEY: trainable}))

    def on_storage_error(err: OSError) -> None:
        if failures:
            return
        failures.append(err)
        echo(f"storage failure: {describe_os_error(err, folder)}; stopping the search (finished trials and "
             "Ray's saved state are kept)")
        _interrupt_tune()

    try:
        check_resources(spec.cpus_per_trial, spec.gpus_per_trial)
        if spec.max_concurrent is None and (not resume or grow_to is not None):
            spec = dataclasses.replace(
                spec, max_concurrent=cluster_capacity(spec.cpus_per_trial, spec.gpus_per_trial)
            )
            echo(f"max_concurrent: {spec.max_concurrent} (trials the cluster's resources run at once)")
        if spec.is_grid() and not resume:
            echo(f"grid search: {spec.num_samples} points, each run once "
                 f"(scheduler: {spec.scheduler_in_use()})")
        if not resume:
            save_spec()
            constraints = spec.parsed_constraints()
            if constraints and not any(c.relative for c in constraints):  # fixed now; else by the baseline
                write_bounds(folder, constraints, merge_bounds(constraints, None), None)
        else:
            if grow_to is not None:  # the new total first: an interrupted growth resumes as a growth
                save_spec()
            for part in parts:
                remove_stale_temporaries(part.folder)
            # a failed search earlier in this process may have left deletions waiting; the state this
            # resume restores may name those checkpoints: keep them
            flush_deferred_deletions(folder, delete=False)
        setup = TrialSetup(
            base=base, experiment_dir=str(folder), objective=spec.objective,
            search_seed=spec.seed, cache_dir=cache_dir, toy_sleep=toy_sleep, gpu_fraction=spec.gpus_per_trial,
            continuation=spec.scheduler_in_use() == "pb2",
            value_bounds=spec.pb2_bounds() if spec.scheduler_in_use() == "pb2" else {},
        )
        function = train_trial if trainable == "train" else toy_trial
        resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}

        def runnable_in(part_folder: Path) -> Any:  # a part's trials live in (and log to) its folder
            part_setup = dataclasses.replace(setup, experiment_dir=str(part_folder))
            return tune.with_resources(tune.with_parameters(function, setup=part_setup), resources=resources)

        filesystem = atomic_local_filesystem()
        current = parts[-1]
        with ray_log_guard(on_storage_error):
            results = None
            if resume and (grow_to is None or unfinished(current)):
                echo(f"resuming {current.folder}")
                tuner = tune.Tuner.restore(
                    str(current.folder), runnable_in(current.folder), resume_unfinished=True,
                    restart_errored=True, storage_filesystem=filesystem,
                )
                results = _fit(tuner)
            elif not resume:
                results = _fit(_new_tuner(spec, runnable_in(folder), callbacks, filesystem))
            if grow_to is not None and not failures and (results is None or _part_done(results, current)):
                done = sum(p.num_samples for p in parts)
                current = Part(folder / f"{GROW_PREFIX}{len(parts)}", grow_to - done)
                echo(f"growing the search from {grow_to - current.num_samples} to {grow_to} trials: "
                     f"{current.num_samples} more in {current.folder}")
                parts.append(current)
                write_parts(folder, parts)  # search_spec.yaml holds the new total already
                tuner = _new_tuner(spec, runnable_in(current.folder), callbacks, filesystem, part=current)
                results = _fit(tuner)
            earlier = [] if len(parts) == 1 else [
                (p, tune.Tuner.restore(str(p.folder), runnable_in(p.folder),
                                       storage_filesystem=filesystem).get_results())
                for p in parts if p is not current]
        if not failures:  # Tune's final state is saved: older checkpoints it no longer names can go
            flush_deferred_deletions(folder)  # every part's (they are inside)
        interrupted = bool(failures) or not _part_done(results, current)
    except RestoreFailedError as err:
        raise TornStateError(
            f"cannot resume {str(folder)!r}: {err}; refusing to continue, since Ray would start a new search "
            "over the experiment (nothing was changed)"
        ) from err
    finally:
        if own_ray:
            shutdown_ray()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    rows = summarize(results, spec, folder=current.folder)
    for part, part_results in earlier:
        rows += summarize(part_results, spec, folder=part.folder)
    rows.sort(key=_rank_key)
    bounds = read_bounds(spec.experiment_dir) if spec.constraints else None
    baseline_failed = (spec.constraints and bounds is None and not failures
                       and not any(r["status"] == "unfinished" for r in rows))
    outcome = SearchOutcome(
        experiment_dir=spec.experiment_dir, rows=rows, best=_best(rows),
        interrupted=interrupted and not baseline_failed,
        seconds=time.perf_counter() - started, pareto=_pareto(rows) if spec.multi_objective else [],
        bounds=bounds,
    )
    summary_error: StorageError | None = None
    try:
        _write_summary(outcome)
    except StorageError as err:
        summary_error = err
    for line in format_table(outcome, spec):
        echo(line)
    if failures or summary_error is not None:
        cause = failures[0] if failures else summary_error
        written = (f"{SUMMARY_FILE} lists the {outcome.num_trials} trials so far" if summary_error is None
                   else f"{SUMMARY_FILE} was not written ({summary_error})")
        first = describe_os_error(cause, folder) if failures else str(summary_error)
        raise SearchStorageError(
            f"{first}: the search stopped; finished trials and Ray's last saved state are kept; {written}. "
            f"Free space (or make the folder writable), then resume with: {resume_command(spec)}",
            cause.errno, outcome,
        )
    return outcome


class SearchStorageError(StorageError):
    """A write to the experiment folder failed during a search (exit status 3). The search was stopped
    the way Ctrl-C stops it; ``outcome`` is its :class:`SearchOutcome` so far."""

    def __init__(self, message: str, error_number: int | None, outcome: SearchOutcome) -> None:
        super().__init__(message, error_number)
        self.outcome = outcome


def _part_done(results: Any, part: Part) -> bool:
    """Whether every trial of ``part`` ended (finished, stopped or errored) in ``results``."""
    return results.num_terminated + results.num_errors >= part.num_samples


def _sigterm_as_sigint(number: int, frame: Any) -> None:
    signal.raise_signal(signal.SIGINT)


def shutdown_ray() -> None:
    """``ray.shutdown()`` with Ctrl-C ignored meanwhile (in the main thread): a second Ctrl-C while Ray
    stops would leave it half shut down, and the process would then end with status 1 at exit."""
    import ray

    if threading.current_thread() is not threading.main_thread():
        ray.shutdown()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_tune() -> bool:
    """Stop the running Tune loop the way Ctrl-C does: SIGUSR1, which Tune's own handler turns into
    "save the experiment state and return" (running trials stay resumable). False (nothing sent) when
    no handler is installed (outside ``Tuner.fit``), where the signal would end the process."""
    number = getattr(signal, "SIGUSR1", None)
    if number is None or not callable(signal.getsignal(number)):
        return False
    signal.raise_signal(number)
    return True


def _fit(tuner: Any) -> Any:
    """``tuner.fit()``; when Ray finished the run but could not build its ResultGrid (a torn
    ``error.pkl`` in a trial folder raises ``EOFError``), the results are built again with unreadable
    trial errors replaced by a note."""
    from ray.tune import ResultGrid

    local = getattr(tuner, "_local_tuner", None)
    before = getattr(local, "_experiment_analysis", None)
    try:
        return tuner.fit()
    except Exception:
        analysis = getattr(local, "_experiment_analysis", None)
        if analysis is None or analysis is before:  # the run itself failed
            raise

        class TolerantResultGrid(ResultGrid):
            @staticmethod
            def _populate_exception(trial: Any) -> Any:
                try:
                    return ResultGrid._populate_exception(trial)
                except Exception as err:  # torn or unreadable error.pkl / error.txt
                    from ray.tune import TuneError

                    return TuneError(
                        f"trial {trial.trial_id} errored; its saved error is unreadable ({err!r})"
                    )

        return TolerantResultGrid(analysis)


def _warm_data(spec: SearchSpec, echo: Callable[[str], Any]) -> tuple[str, str]:
    """Find CIFAR-100 (the spec's ``data_dir``, else :func:`hiercls.data.find_cifar100`) and decode it once
    on the driver (fills the decode cache). Returns (absolute data folder, absolute cache folder); the
    trials read that folder, and a spec without ``data_dir`` keeps none (a resume finds it again).

    Raises:
        DataNotReadyError: no data (every place tried is named), a bad shared archive, or data that is not
            the complete CIFAR-100 (a :class:`SpecError` of one line).
        StorageError: extracting the shared archive failed on an OS error (nothing kept).
    """
    from hiercls.data import (
        check_complete,
        default_cache_dir,
        find_cifar100,
        load_cifar100,
        resolve_data_dir,
    )
    from hiercls.storage import StorageError

    given = spec.base_config().get("data_dir")
    cache = default_cache_dir().expanduser().resolve()
    try:
        if given is None:
            found = find_cifar100(download=bool(spec.train.get("download", True)))
            data_dir = str(found.path)
            echo(f"data: {data_dir} (from {found.source})")
        else:  # as given: an error when missing (the project's .data/cifar-100 is filled when it can be)
            data_dir = str(resolve_data_dir(given))
    except StorageError:
        raise
    except (OSError, ValueError) as err:
        raise DataNotReadyError(str(err)) from err
    try:
        data = load_cifar100(data_dir, download=bool(spec.train.get("download", False)), cache_dir=cache)
        check_complete(data, data_dir)
    except (OSError, RuntimeError, ValueError) as err:
        raise DataNotReadyError(f"CIFAR-100 could not be loaded from {data_dir!r}: {err}") from err
    return data_dir, str(cache)


def trial_dirname(trial: Any) -> str:
    """``trial_<id>``: short folder names (Ray's default spells out every parameter)."""
    return f"trial_{trial.trial_id}"


def grid_param_space(spec: SearchSpec) -> dict[str, Any]:
    """The Tuner's param space of a grid search: ``tune.grid_search`` over the list of points, each the
    whole config of one trial (its searched values and its :data:`~hiercls.tune.layout.TRIAL_INDEX`,
    the point's position). Ray's variant generator resolves the grid at the root of the config, so a
    trial's config is exactly its point: flat, with only its branch's keys (as a TPE trial's)."""
    from ray import tune

    from hiercls.tune.layout import TRIAL_INDEX

    return tune.grid_search([{**point, TRIAL_INDEX: i} for i, point in enumerate(spec.grid_points())])


def pb2_param_space(spec: SearchSpec) -> dict[str, Any]:
    """The Tuner's param space of a PB2 search: each searched key drawn from its range (``tune.uniform``
    or ``tune.loguniform``), fixed keys as they are. PB2 then changes the searched keys within the same
    bounds (linearly: its Gaussian process sees the raw values)."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, p in spec.params().items():
        if p.kind == "fixed":
            space[name] = p.value
        elif p.kind == "loguniform":
            space[name] = tune.loguniform(float(p.low), float(p.high))
        else:
            space[name] = tune.uniform(float(p.low), float(p.high))
    return space


def _new_tuner(spec: SearchSpec, runnable: Any, callbacks: Sequence[Any] = (), filesystem: Any = None,
               part: Part | None = None):
    """The Tuner of a new search, or (``part``) of a growth of one: a Ray experiment in ``part.folder``
    asking ``part.num_samples`` more trials of the search's existing Optuna study (no points to
    evaluate: they ran; constraint bounds as fixed before)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from hiercls.tune.space import DefineByRun, PicklableNSGAIISampler, SearchAlgorithm
    from hiercls.tune.study import open_storage

    params = spec.params()
    points = None if part is not None else [dict(p) for p in spec.points_to_evaluate] or None
    constraints = spec.parsed_constraints()
    pb2 = spec.scheduler_in_use() == "pb2"
    # a growth's sampler gets its own seed: the search seed again would draw the same random startup
    # values (TPE's first trials, NSGA-II's first generation) as the first part did
    grow_seed = spec.seed if part is None else spec.seed + 7919 * int(part.name.removeprefix(GROW_PREFIX))
    # the study lives in storage (the experiment's journal file, or --optuna-storage), named after it
    study = {} if spec.is_grid() or pb2 else {
        "storage": open_storage(spec.experiment_dir, spec.optuna_storage), "study_name": spec.name,
        "experiment_dir": str(part.folder if part is not None else spec.experiment_dir),
    }
    if constraints and part is not None:
        study["bounds"] = (read_bounds(spec.experiment_dir) or {}).get("bounds")
    if (study and part is None and spec.optuna_storage
            and spec.name in optuna.get_all_study_names(study["storage"])):
        raise SpecError([f"--optuna-storage {spec.optuna_storage!r} already holds a study named "
                         f"{spec.name!r}: a new search needs its own (choose another --name, or --resume "
                         "that search)"])
    metric, mode = ("objective", "min") if not spec.multi_objective else (None, None)
    param_space = None
    num_samples = spec.num_samples
    if spec.is_grid():
        # each point once: one grid over the points, one sample of it
        search_alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0)
        param_space, num_samples = grid_param_space(spec), 1
    elif pb2:  # Ray's PBT/PB2 take no search algorithm: the first values are drawn by Ray's generator
        search_alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0, points_to_evaluate=points)
        param_space = pb2_param_space(spec)
    elif spec.multi_objective:
        searcher = SearchAlgorithm(
            space=DefineByRun(params), metric=list(MULTI_METRICS), mode=["min", "min"],
            points_to_evaluate=points, sampler=PicklableNSGAIISampler(seed=grow_seed),
            constraints=constraints, full_epochs=spec.epochs, **study,
        )
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)
    else:
        sampler = optuna.samplers.TPESampler(seed=grow_seed, n_startup_trials=spec.startup_trials)
        searcher = SearchAlgorithm(
            space=DefineByRun(params), metric="objective", mode="min", points_to_evaluate=points,
            sampler=sampler, max_epochs=spec.epochs if spec.scheduler_in_use() == "asha" else None,
            constraints=constraints, full_epochs=spec.epochs, **study,
        )
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)
    scheduler = None
    if pb2:
        from hiercls.tune.space import PB2UntilLastEpoch

        # synchronous: at each perturbation epoch the whole population is compared (the lowest quarter
        # continues from the best quarter's checkpoints), not whichever trials happen to have reported
        scheduler = PB2UntilLastEpoch(  # metric and mode come from the TuneConfig
            time_attr="epoch", perturbation_interval=spec.perturbation_interval,
            hyperparam_bounds={k: list(v) for k, v in spec.pb2_bounds().items()}, synch=True,
            last_epoch=spec.epochs,
        )
    if spec.scheduler_in_use() == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=spec.epochs, grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
        )
    if part is not None:
        num_samples = part.num_samples
    tune_config = tune.TuneConfig(
        metric=metric, mode=mode, search_alg=search_alg,
        scheduler=scheduler, num_samples=num_samples, trial_dirname_creator=trial_dirname,
    )
    name, storage = (spec.name, spec.storage_path) if part is None else (part.name, str(part.folder.parent))
    run_config = tune.RunConfig(
        name=name, storage_path=storage, storage_filesystem=filesystem,
        # PB2: a donor's checkpoint must outlive the donor's next save until its recipient has restored it
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3 if pb2 else 1),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=1, callbacks=list(callbacks) or None,
    )
    return tune.Tuner(runnable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# ---------------------------------------------------------------------------------------------- the table
def _constraint_lines(outcome: SearchOutcome, spec: SearchSpec) -> list[str]:
    """The bounds in force and the feasible count, or why there are no bounds."""
    if not spec.constraints:
        return []
    if outcome.bounds is None:
        return [f"constraints {'; '.join(spec.constraints)}: no bounds yet: the baseline trial (the first "
                "points_to_evaluate point) did not finish in full, so no trial was judged"]
    baseline = outcome.bounds.get("baseline") or {}
    shown = "; ".join(f"{m} <= {b:.6g}" for m, b in outcome.bounds["bounds"].items())
    source = ""
    if baseline:
        values = ", ".join(f"{m} {v:.6g}" for m, v in baseline.get("values", {}).items())
        source = f" (baseline trial {baseline.get('trial_id')}: {values})"
    feasible, judged = outcome.feasible_count()
    share = f" ({feasible / judged:.0%})" if judged else ""
    lines = [f"constraints: {shown}{source}; {feasible} of {judged} trials that ran in full are "
             f"feasible{share}"]
    if judged and not feasible:
        lines.append("no trial meets the constraints: no best trial (loosen the bound or search longer)")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


def _param_text(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={_short(row['params'][k])}" for k in keys if k in row["params"])


def format_table(outcome: SearchOutcome, spec: SearchSpec) -> list[str]:
    """The best trials as text lines (loss and its parameters, schedule and its parameters, lr, weight
    decay, val error, mistake severity, objective, epochs run, status), then where results live."""
    loss_keys, schedule_keys = list(param_keys("loss")), list(param_keys("lr_schedule"))
    shown = outcome.pareto if spec.multi_objective else outcome.rows[: spec.top]
    title = "Pareto front (val_top1_error vs val_mistake_severity)" if spec.multi_objective else (
        f"best {len(shown)} of {outcome.num_trials} trials by {spec.objective} (lower is better; trials "
        "that ran their full length first" + (", feasible ones first" if spec.constraints else "") + ")"
    )
    judged = outcome.bounds is not None
    header = ["#", "trial", "loss (parameters)", "schedule (parameters)", "lr", "wd", "val_err", "severity",
              "objective", "epochs", "status", *(["feasible"] if judged else [])]
    body = []
    for i, row in enumerate(shown, start=1):
        loss_text = row["loss"] + (f" ({p})" if (p := _param_text(row, loss_keys)) else "")
        sched_text = row["lr_schedule"] + (f" ({p})" if (p := _param_text(row, schedule_keys)) else "")
        status = row["status"] + (" (ASHA stop)" if row["stopped_early"] else "")
        body.append([
            str(i), row["trial_id"], loss_text, sched_text, _short(row["params"].get("lr", "")),
            _short(row["params"].get("weight_decay", "")), f"{row['val_top1_error']:.4f}",
            f"{row['val_mistake_severity']:.4f}", f"{row['objective']:.4f}",
            f"{row['epochs']}/{spec.epochs}", status,
            *([{True: "yes", False: "NO", None: "-"}[row.get("feasible")]] if judged else []),
        ])
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    lines = ["", title]
    for r in [header, *body]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    n_nan = sum(1 for r in outcome.rows if r["status"] == "nan")
    n_err = sum(1 for r in outcome.rows if r["status"] == "error")
    n_open = sum(1 for r in outcome.rows if r["status"] == "unfinished")
    lines.append(
        f"{outcome.num_trials} trials: {outcome.num_stopped_early} stopped early by ASHA, {n_nan} went NaN, "
        f"{n_err} errored" + (f", {n_open} unfinished" if n_open else "") + f"; {outcome.seconds:.0f} s"
    )
    lines += _constraint_lines(outcome, spec)
    lines.append(f"results: {outcome.experiment_dir} (all trials: {outcome.experiment_dir / SUMMARY_FILE})")
    if outcome.best is not None:
        has_config = (Path(outcome.best["path"]) / "config.yaml").is_file()
        full = " (config.yaml there is its full training config)" if has_config else ""
        lines.append(f"best trial: {outcome.best['path']}{full}")
    if outcome.interrupted:
        lines.append(
            f"interrupted: resume with `{resume_command(spec)}` (finished trials are kept, running ones "
            "continue from their last epoch)"
        )
    return lines
