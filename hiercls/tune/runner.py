"""Run a search: :func:`run_search` takes the plan (:mod:`hiercls.tune.plan`), decodes CIFAR-100 once on
the driver, starts or joins Ray, runs each part (the last restored when it has trials left; a new one for a
new search or a growth: :func:`hiercls.tune.builders.new_tuner`), prints the table of the best trials and
writes ``summary.csv``. Ray writes through :mod:`hiercls.tune.atomicfs`; a full disk stops the search as
Ctrl-C does (:func:`hiercls.tune.guard.ray_log_guard`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ray
import yaml
from ray import tune

from hiercls.config import param_keys
from hiercls.data import decode_once
from hiercls.experiment.layout import SPEC_FILE, SUMMARY_FILE
from hiercls.experiment.lock import experiment_lock
from hiercls.experiment.manifest import adopt, user_key
from hiercls.experiment.parts import Part, write_parts
from hiercls.experiment.state import LOST_FOLDER, lost_trial_folders
from hiercls.experiment.study import STUDY_FILE
from hiercls.registry import TRAINING_PARAMS
from hiercls.storage import StorageError, atomic_write_text, check_writable, describe_os_error
from hiercls.tune.atomicfs import atomic_local_filesystem, flush_deferred_deletions, remove_stale_temporaries
from hiercls.tune.batch import STOP_GRACE_S, SigtermStop
from hiercls.tune.builders import new_tuner
from hiercls.tune.cluster import (
    ResourceError,
    check_reachable,
    check_resources,
    cluster_capacity,
    connection_help,
    enable_cluster_token,
)
from hiercls.tune.constraints import read_bounds, write_bounds
from hiercls.tune.contracts import check_contracts
from hiercls.tune.guard import RestoreFailedError, TornStateError, ray_log_guard
from hiercls.tune.modes import population_problems
from hiercls.tune.plan import TRAINABLE_KEY, SearchPlan, make_plan, resume_command
from hiercls.tune.space import restoring_into
from hiercls.tune.spec import DataNotReadyError, SearchSpec
from hiercls.tune.summary import (
    SearchOutcome,
    best_row,
    pareto_rows,
    rank_key,
    results_on_disk,
    summarize,
    write_summary,
)
from hiercls.tune.toy import toy_trial
from hiercls.tune.trainable import TrialSetup, train_trial

__all__ = ["SearchStorageError", "format_table", "run_search"]


# ---------------------------------------------------------------------------------------------- the search
def run_search(spec: SearchSpec, *, resume: bool = False, trainable: str | None = None,
               toy_sleep: float = 0.0, echo: Callable[[str], Any] = print,
               ray_init_kwargs: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (),
               trust: bool = False, sigterm_interrupts: bool = False) -> SearchOutcome:
    """Validate, start (or resume, or grow) the search described by ``spec`` and summarise it.

    Args:
        spec: the search; validated before anything else happens.
        resume: continue ``storage_path/name`` (``Tuner.restore``: unfinished trials resume from their last
            checkpoint, errored ones restart; a larger ``num_samples`` grows it). Restoring unpickles Ray's
            saved state: the folder is checked first (:func:`hiercls.tune.guard.check_trusted`).
        trainable: ``train`` or ``toy`` (:mod:`hiercls.tune.toy`); None: ``train`` for a new search, the
            experiment's own for a resume.
        toy_sleep: seconds per toy epoch.
        echo: where the summary lines go.
        ray_init_kwargs: extra ``ray.init`` arguments when this call starts Ray.
        callbacks: ``tune.Callback`` objects for a new Ray experiment.
        trust: resume even a folder another user could have written (``--trust-experiment``).
        sigterm_interrupts: SIGTERM (a batch system's time limit) stops the search as Ctrl-C does.

    Raises:
        SpecError: invalid spec or experiment folder state (before Ray starts).
        UntrustedExperimentError: resuming a folder another user could have written (before Ray starts).
        ContractError: the installed Ray or Optuna breaks what hiercls relies on (before Ray starts).
        ExperimentInUseError: another driver runs or resumes the same experiment (before Ray starts).
        ResourceError: no node can host a trial, or the cluster at ``address`` cannot be joined.
        StorageError: the folder is not writable (before Ray starts); Ray's saved state is torn
            (:class:`~hiercls.tune.guard.TornStateError`); or a write failed during the search
            (:class:`SearchStorageError`: stopped, state and finished trials kept, the table printed).
    """
    started = time.perf_counter()
    folder = make_plan(spec, resume=resume, trainable=trainable, trust=trust).experiment_dir  # input errors
    check_contracts()
    user_key()  # the key that signs the experiment's pickles (hiercls.experiment.manifest), made once
    check_writable(folder, "--storage-path")
    with experiment_lock(folder):
        # again under the lock: a driver that held it may have changed the experiment meanwhile
        plan = make_plan(spec, resume=resume, trainable=trainable, trust=trust)
        for note in plan.notes:
            echo(f"warning: {note}")
        setup = _trial_setup(plan, toy_sleep, echo)
        failures: list[OSError] = []
        with _ray_session(plan, echo, ray_init_kwargs, sigterm_interrupts, started) as plan:
            _prepare_folder(plan, echo)
            runs = _run_parts(plan, setup, callbacks, failures, echo)
        outcome = _outcome(plan, runs, failures, started)
        return _finish(plan, outcome, failures, echo)


def _finish(plan: SearchPlan, outcome: SearchOutcome, failures: list[OSError],
            echo: Callable[[str], Any]) -> SearchOutcome:
    """``summary.csv`` and the table; a failed write raises :class:`SearchStorageError` after the table."""
    summary_error = None
    try:
        write_summary(outcome)
    except StorageError as err:
        summary_error = err
    for line in format_table(outcome, plan.spec):
        echo(line)
    if failures or summary_error is not None:
        raise _storage_failure(outcome, plan.spec, failures, summary_error)
    return outcome


class SearchStorageError(StorageError):
    """A write to the experiment folder failed during a search (exit status 3). The search was stopped
    the way Ctrl-C stops it; ``outcome`` is its :class:`SearchOutcome` so far."""

    def __init__(self, message: str, error_number: int | None, outcome: SearchOutcome) -> None:
        super().__init__(message, error_number)
        self.outcome = outcome


def _storage_failure(outcome: SearchOutcome, spec: SearchSpec, failures: list[OSError],
                     summary_error: StorageError | None) -> SearchStorageError:
    folder = outcome.experiment_dir
    cause = failures[0] if failures else summary_error
    written = (f"{SUMMARY_FILE} lists the {outcome.num_trials} trials so far" if summary_error is None
               else f"{SUMMARY_FILE} was not written ({summary_error})")
    first = describe_os_error(cause, folder) if failures else str(summary_error)
    return SearchStorageError(
        f"{first}: the search stopped; finished trials and Ray's last saved state are kept; {written}. "
        f"Free space (or make the folder writable), then resume with: {resume_command(spec)}",
        cause.errno, outcome,
    )


# ---------------------------------------------------------------------------------------------- Ray
@contextlib.contextmanager
def _ray_session(plan: SearchPlan, echo: Callable[[str], Any], ray_init_kwargs: Mapping[str, Any] | None,
                 sigterm_interrupts: bool, started: float) -> Iterator[SearchPlan]:
    """Ray started (or joined, or the running instance), the resource request checked, a PB2 population
    the cluster cannot run at once refused (unless ``pb2_time_multiplexed``), ``max_concurrent`` left to
    the cluster set to its capacity; yields the plan so completed. Ray is shut down after, when
    this started it; a failed restore is a :class:`TornStateError`."""
    # one checkpoint kept per trial forces an experiment snapshot after every epoch; that is intended
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    own_ray = _start_ray(plan.spec.address, echo, ray_init_kwargs)
    previous_sigterm, stop = None, SigtermStop(lambda: _finish_on_disk(plan, echo, started))
    if sigterm_interrupts and threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, stop)
    try:
        cpus, gpus = plan.spec.cpus_per_trial, plan.spec.gpus_per_trial
        check_resources(cpus, gpus)
        capacity = cluster_capacity(cpus, gpus) if plan.starts_tuner() else None
        if capacity is not None and plan.scheduler.population:  # PB2: every member at once, or refused
            problems = population_problems(plan.spec, plan.members, capacity,
                                           f"{cpus:g} CPU, {gpus:g} GPU a trial")
            if problems:
                raise ResourceError(problems[0])
        if capacity is not None and plan.max_concurrent is None:
            plan = plan.with_capacity(capacity)
            echo(f"max_concurrent: {plan.max_concurrent} (trials the cluster's resources run at once)")
        yield plan
    except RestoreFailedError as err:
        raise TornStateError(
            f"cannot resume {str(plan.experiment_dir)!r}: {err}; refusing to continue, since Ray would start "
            "a new search over the experiment (nothing was changed)"
        ) from err
    finally:
        if own_ray:
            shutdown_ray()
        stop.disarm()  # Ray stopped: the normal way on prints the table
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _start_ray(address: str | None, echo: Callable[[str], Any],
               ray_init_kwargs: Mapping[str, Any] | None) -> bool:
    """Start a local Ray, or join the cluster at ``address``; False when Ray already ran in this process.

    Raises:
        ResourceError: nothing (or no Ray) answers at ``address``, or joining it failed.
    """
    if ray.is_initialized():
        if address:
            echo(f"warning: Ray is already running in this process; address {address!r} is not used")
        return False
    # "local": a new instance, never a stale cluster found through /tmp/ray/ray_current_cluster
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": True,
                              "logging_level": "WARNING", "address": address or "local",
                              **(ray_init_kwargs or {})}
    check_reachable(kwargs["address"])
    note = enable_cluster_token(kwargs["address"])
    if note:
        echo(note)
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise ResourceError(connection_help(kwargs["address"], err)) from err
    return True


def shutdown_ray() -> None:
    """``ray.shutdown()`` with Ctrl-C ignored meanwhile (in the main thread): a second Ctrl-C while Ray
    stops would leave it half shut down, and the process would then end with status 1 at exit."""
    if threading.current_thread() is not threading.main_thread():
        ray.shutdown()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish_on_disk(plan: SearchPlan, echo: Callable[[str], Any], started: float) -> None:
    """The table and ``summary.csv`` of a search Ray could not stop (:mod:`hiercls.tune.batch`), from the
    state Ray saved last and the trials' ``result.json``."""
    echo(f"SIGTERM: the search did not stop within {STOP_GRACE_S:g} s (Ray's own processes were signalled "
         "too, as a batch system signals the whole job): its table comes from what is on disk")
    parts = [*plan.parts, *([plan.grow] if plan.grow is not None and plan.grow.folder.is_dir() else [])]
    rows = [row for part in parts for row in summarize(results_on_disk(part.folder), plan.spec,
                                                       folder=part.folder)]
    outcome = _search_outcome(plan, rows, lambda bounds: True, started)
    with contextlib.suppress(StorageError):
        write_summary(outcome)
    for line in format_table(outcome, plan.spec):
        echo(line)


def interrupt_tune() -> bool:
    """Stop the running Tune loop the way Ctrl-C does: SIGUSR1, which Tune's own handler turns into
    "save the experiment state and return" (running trials stay resumable). False (nothing sent) when
    no handler is installed (outside ``Tuner.fit``), where the signal would end the process."""
    number = getattr(signal, "SIGUSR1", None)
    if number is None or not callable(signal.getsignal(number)):
        return False
    signal.raise_signal(number)
    return True


# ---------------------------------------------------------------------------------------------- the parts
def _trial_setup(plan: SearchPlan, toy_sleep: float, echo: Callable[[str], Any]) -> TrialSetup:
    """What every trial shares; the real trainable's data is found and decoded here, once."""
    spec, base, cache_dir = plan.spec, plan.spec.base_config(), None
    if plan.trainable == "train":
        base["data_dir"], cache_dir = _warm_data(spec, echo)
    pb2 = plan.scheduler.name == "pb2"
    return TrialSetup(
        base=base, experiment_dir=str(plan.experiment_dir), objective=spec.objective, search_seed=spec.seed,
        cache_dir=cache_dir, toy_sleep=toy_sleep, gpu_fraction=spec.gpus_per_trial, continuation=pb2,
        value_bounds=spec.pb2_bounds(plan.params) if pb2 else {},
    )


def _prepare_folder(plan: SearchPlan, echo: Callable[[str], Any]) -> None:
    """The experiment's spec (with its trainable; a growth's new total first, so an interrupted growth
    resumes as one), fixed constraint bounds, and no temporary files of a killed driver."""
    folder = plan.experiment_dir
    if plan.starts_tuner():
        text = plan.spec.to_yaml() + yaml.safe_dump({TRAINABLE_KEY: plan.trainable})
        atomic_write_text(folder / SPEC_FILE, text)
    if not plan.resume and plan.searcher.name == "grid":
        echo(f"grid search: {plan.spec.num_samples} points, each run once (scheduler: {plan.scheduler.name})")
    if not plan.resume and plan.bounds is not None:
        write_bounds(folder, plan.constraints, plan.bounds, None)
    for part in plan.parts if plan.resume else ():
        remove_stale_temporaries(part.folder)
        for lost in lost_trial_folders(part.folder):  # kept, out of the search's way
            (part.folder / LOST_FOLDER).mkdir(exist_ok=True)
            lost.rename(part.folder / LOST_FOLDER / lost.name)
            echo(f"{lost.name} was started after Ray's last save by a driver that was then killed: moved to "
                 f"{LOST_FOLDER}/ (its values run again as a new trial)")
    if plan.resume:  # deletions a failed search in this process left waiting: the restored state names them
        flush_deferred_deletions(folder, delete=False)
        # a killed driver's Optuna journal lock (Optuna waits 30 s for it): this driver holds the experiment
        (folder / f"{STUDY_FILE}.lock").unlink(missing_ok=True)
    if plan.trusted:  # --trust-experiment: from now on its pickles are recorded as the user's
        count = sum(adopt(part.folder) for part in plan.parts)
        echo(f"--trust-experiment: {count} pickled state file(s) of {folder} recorded as yours")


class _Runs(NamedTuple):
    """The results of the part that ran last (``current``) and those of the earlier parts."""

    current: Part
    results: Any
    earlier: list[tuple[Part, Any]]


def _run_parts(plan: SearchPlan, setup: TrialSetup, callbacks: Sequence[Any], failures: list[OSError],
               echo: Callable[[str], Any]) -> _Runs:
    """Restore the last part (when it has trials left), then start a new Ray experiment (a new search, or
    the growth once the last part is done); the other parts' results are read back."""
    function = train_trial if plan.trainable == "train" else toy_trial
    resources = {"cpu": plan.spec.cpus_per_trial, "gpu": plan.spec.gpus_per_trial}

    def runnable_in(part: Part) -> Any:  # a part's trials live in (and log to) its folder
        part_setup = dataclasses.replace(setup, experiment_dir=str(part.folder))
        return tune.with_resources(tune.with_parameters(function, setup=part_setup), resources=resources)

    def on_storage_error(err: OSError) -> None:
        if not failures:
            failures.append(err)
            echo(f"storage failure: {describe_os_error(err, plan.experiment_dir)}; stopping the search "
                 "(finished trials and Ray's saved state are kept)")
            interrupt_tune()

    filesystem, parts, results = atomic_local_filesystem(), list(plan.parts), None
    with ray_log_guard(on_storage_error):
        if plan.restore_last:
            echo(f"resuming {parts[-1].folder}")
            with restoring_into(parts[-1].folder):  # new trials and the study live where it is now
                results = tune.Tuner.restore(str(parts[-1].folder), runnable_in(parts[-1]),
                                             resume_unfinished=True, restart_errored=True,
                                             storage_filesystem=filesystem).fit()
        elif not plan.resume:
            results = new_tuner(plan, parts[-1], runnable_in(parts[-1]), callbacks, filesystem).fit()
        if plan.grow is not None and not failures and (results is None or _part_done(results, parts[-1])):
            echo(f"growing the search from {plan.spec.num_samples - plan.grow.num_samples} to "
                 f"{plan.spec.num_samples} trials: {plan.grow.num_samples} more in {plan.grow.folder}")
            parts.append(plan.grow)
            write_parts(plan.experiment_dir, parts)  # search_spec.yaml holds the new total already
            results = new_tuner(plan, plan.grow, runnable_in(plan.grow), callbacks, filesystem).fit()
        earlier = [(p, _results_of(p, runnable_in(p), filesystem)) for p in parts[:-1]]
    if not failures:  # Tune's final state is saved: older checkpoints it no longer names can go
        flush_deferred_deletions(plan.experiment_dir)  # every part's (they are inside)
    return _Runs(parts[-1], results, earlier)


def _results_of(part: Part, runnable: Any, filesystem: Any) -> Any:
    """The results of an earlier part, read back through Ray (which unpickles its state)."""
    with restoring_into(part.folder):
        return tune.Tuner.restore(str(part.folder), runnable, storage_filesystem=filesystem).get_results()


def _part_done(results: Any, part: Part) -> bool:
    """Whether every trial of ``part`` ended (finished, stopped or errored) in ``results``."""
    return results.num_terminated + results.num_errors >= part.num_samples


def _outcome(plan: SearchPlan, runs: _Runs, failures: list[OSError], started: float) -> SearchOutcome:
    """Every part's trials ranked, the best one, the Pareto front, the constraint bounds, and whether the
    search was interrupted (not when a baseline that failed ended it)."""
    spec = plan.spec
    rows = summarize(runs.results, spec, folder=runs.current.folder)
    for part, part_results in runs.earlier:
        rows += summarize(part_results, spec, folder=part.folder)

    def interrupted(bounds: Mapping[str, Any] | None) -> bool:
        unfinished = any(r["status"] == "unfinished" for r in rows)  # Ray's in-memory results may differ
        baseline_failed = spec.constraints and bounds is None and not failures and not unfinished
        stopped = bool(failures) or not _part_done(runs.results, runs.current) or unfinished
        return bool(stopped and not baseline_failed)

    return _search_outcome(plan, rows, interrupted, started)


def _search_outcome(plan: SearchPlan, rows: list[dict[str, Any]],
                    interrupted: Callable[[Mapping[str, Any] | None], bool], started: float) -> SearchOutcome:
    """The outcome of ``rows`` (every part's trials): ranked, the best one, the Pareto front (NSGA-II), the
    constraint bounds read back, ``interrupted(bounds)``, the seconds since ``started``."""
    rows = sorted(rows, key=rank_key)
    bounds = read_bounds(plan.experiment_dir) if plan.spec.constraints else None
    return SearchOutcome(
        experiment_dir=plan.experiment_dir, rows=rows, best=best_row(rows), interrupted=interrupted(bounds),
        seconds=time.perf_counter() - started,
        pareto=pareto_rows(rows) if plan.searcher.name == "nsga2" else [], bounds=bounds,
    )


def _warm_data(spec: SearchSpec, echo: Callable[[str], Any]) -> tuple[str, str]:
    """CIFAR-100 found and decoded once on the driver (:func:`hiercls.data.decode_once`): (absolute data
    folder, decode cache folder), which the trials read.

    Raises:
        DataNotReadyError: no data, a bad shared archive, or not the complete CIFAR-100 (one line).
        StorageError: extracting the shared archive failed on an OS error (nothing kept).
    """
    try:
        found, cache = decode_once(spec.base_config().get("data_dir"), download=spec.train.get("download"))
    except StorageError:
        raise
    except (OSError, ValueError) as err:
        raise DataNotReadyError(str(err)) from err
    if found.source != "given":
        echo(f"data: {found.path} (from {found.source})")
    return str(found.path), str(cache)


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
    shown = outcome.pareto if spec.multi_objective else outcome.rows[: spec.top]
    title = "Pareto front (val_top1_error vs val_mistake_severity)" if spec.multi_objective else (
        f"best {len(shown)} of {outcome.num_trials} trials by {spec.objective} (lower is better; trials "
        "that ran their full length first" + (", feasible ones first" if spec.constraints else "") + ")"
    )
    judged = outcome.bounds is not None
    header = ["#", "trial", "loss (parameters)", "schedule (parameters)", *TRAINING_PARAMS, "wd", "val_err",
              "severity", "objective", "epochs", "status", *(["feasible"] if judged else [])]
    scheduler = spec.scheduler_in_use()
    body = [_table_row(i, row, spec.epochs, judged, scheduler == "asha")
            for i, row in enumerate(shown, start=1)]
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    lines = ["", title]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body]]
    return lines + _footer_lines(outcome, spec, scheduler)


def _table_row(i: int, row: Mapping[str, Any], epochs: int, judged: bool, asha: bool) -> list[str]:
    loss_text, sched_text = (row[kind] + (f" ({p})" if (p := _param_text(row, param_keys(kind))) else "")
                             for kind in ("loss", "lr_schedule"))
    status = row["status"] + (" (ASHA stop)" if asha and row["stopped_early"] else "")
    return [str(i), row["trial_id"], loss_text, sched_text,
            *(_short(row["params"].get(k, "")) for k in (*TRAINING_PARAMS, "weight_decay")),
            f"{row['val_top1_error']:.4f}", f"{row['val_mistake_severity']:.4f}", f"{row['objective']:.4f}",
            f"{row['epochs']}/{epochs}", status,
            *([{True: "yes", False: "NO", None: "-"}[row.get("feasible")]] if judged else [])]


def _footer_lines(outcome: SearchOutcome, spec: SearchSpec, scheduler: str) -> list[str]:
    """The counts (early stops under ASHA, the one scheduler that stops trials; else the scheduler's
    name), the constraints, where results live, the best trial, how to resume."""
    count = {key: sum(r["status"] == key for r in outcome.rows) for key in ("nan", "error", "unfinished")}
    unfinished = f", {count['unfinished']} unfinished" if count["unfinished"] else ""
    stops = (f": {outcome.num_stopped_early} stopped early by ASHA," if scheduler == "asha"
             else f" (scheduler {scheduler}):")
    lines = [f"{outcome.num_trials} trials{stops} {count['nan']} went NaN, {count['error']} "
             f"errored{unfinished}; {outcome.seconds:.0f} s",
             *_constraint_lines(outcome, spec),
             *([f"warning: {outcome.split_warning}"] if outcome.split_warning else []),
             f"results: {outcome.experiment_dir} (all trials: {outcome.experiment_dir / SUMMARY_FILE})"]
    if outcome.best is not None:
        has_config = (Path(outcome.best["path"]) / "config.yaml").is_file()
        full = " (config.yaml there is its full training config)" if has_config else ""
        lines.append(f"best trial: {outcome.best['path']}{full}")
    if outcome.interrupted:
        lines.append(f"interrupted: resume with `{resume_command(spec)}` (finished trials are kept, running "
                     "ones continue from their last epoch)")
    return lines
