"""Hyperparameter search over hierarchy-aware CIFAR-100 training with Ray Tune: ``python tune_main.py``
(or ``hiercls-tune``). Defaults < the space file (``--space``) < command-line options; ``--check`` prints
the plan without starting Ray; ``docs/search.md`` has examples. ``--resume`` unpickles Ray's saved state,
so a folder another user could have written is refused unless ``--trust-experiment``.

Exit status (:mod:`hiercls.storage`):

====  ===========================================================================================
0     done (trials that went NaN or errored are part of a finished search)
2     something fixable in the input, found before any trial ran: the spec or a flag, the data
      folder, an unreachable or non-Ray ``--address``, a resource request no node fits, an
      experiment that exists (new search) or cannot be resumed, an untrusted experiment folder,
      an installed Ray or Optuna that breaks what hiercls relies on (hiercls.tune.contracts), an
      experiment another driver is running or resuming (its lock names the holder), an
      ``--optuna-storage`` URL that cannot be opened or written (not a URL, a driver that is not
      installed, an SQLite file in a missing or read-only folder; nothing is written)
3     an OS error while writing (no space, quota, read-only or unwritable ``--storage-path``; the
      search is stopped, its finished trials and state kept, ``summary.csv`` written if possible),
      or a torn Ray experiment state, or an Optuna journal garbled before its last record, empty or
      not replayable, that ``--resume`` refuses (a torn last record is dropped, the original kept)
130   interrupted (Ctrl-C, twice included, or SIGTERM); resume with the printed command
====  ===========================================================================================

The search itself never exits 1 (1 is the training CLI's "loss went NaN"); a traceback with status 1
is a bug in hiercls or Ray.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hiercls.experiment.layout import SPEC_FILE
from hiercls.experiment.lock import ExperimentInUseError
from hiercls.experiment.manifest import ManifestError
from hiercls.experiment.study import StudyStorageError
from hiercls.storage import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_WRITE, StorageError, describe_os_error
from hiercls.tune.cluster import ResourceError
from hiercls.tune.contracts import ContractError
from hiercls.tune.guard import UntrustedExperimentError
from hiercls.tune.modes import SCHEDULERS, SEARCHERS
from hiercls.tune.plan import TRAINABLE_KEY, TRAINABLES, make_plan, resume_command
from hiercls.tune.spec import (
    DEFAULT_NUM_SAMPLES,
    MAX_SAMPLES,
    SMOKE_SPACE,
    SearchSpec,
    SpecError,
    shipped_spaces,
)

DEFAULTS = SearchSpec()


def _concurrency(text: str) -> int | str:
    """``--max-concurrent``: a whole number, or ``auto`` (what the cluster runs; undoes a space file's)."""
    if text != "auto" and not text.strip().lstrip("+-").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or auto")
    return text if text == "auto" else int(text)


# (option, spec key, type, help)
_OPTIONS = [
    ("--name", "name", str, "experiment name (default: the space file's name)"),
    ("--storage-path", "storage_path", str,
     f"folder holding the experiments (default: {DEFAULTS.storage_path})"),
    ("--num-samples", "num_samples", int, f"trials in all (default: {DEFAULT_NUM_SAMPLES}); a grid search "
     "runs each of its points once, and takes no other number"),
    ("--epochs", "epochs", int, f"epochs per trial, also ASHA's max_t (default: {DEFAULTS.epochs})"),
    ("--searcher", "searcher", str, f"{', '.join(SEARCHERS)} (default: pb2 with --scheduler pb2, grid for a "
     "space with type: grid entries, nsga2 with --multi-objective, else tpe); docs/reference/modes.md says "
     "what each takes"),
    ("--scheduler", "scheduler", str, f"{', '.join(SCHEDULERS)}: asha stops weak trials early, none runs "
     "every trial in full, pb2 is population-based training (values change during training; no Optuna) "
     "(default: asha, but none for a grid search and for --multi-objective)"),
    ("--perturbation-interval", "perturbation_interval", int,
     f"PB2: epochs between perturbations, a multiple of checkpoint_every "
     f"(default: {DEFAULTS.perturbation_interval})"),
    ("--grace-period", "grace_period", int,
     f"ASHA: epochs before a trial can be stopped (default: {DEFAULTS.grace_period})"),
    ("--reduction-factor", "reduction_factor", float,
     f"ASHA: keep 1/R of the trials at each rung (default: {DEFAULTS.reduction_factor:g})"),
    ("--max-concurrent", "max_concurrent", _concurrency, "trials at once, or auto: what the cluster runs "
     "(GPUs / --gpus-per-trial on GPU searches, else CPUs / --cpus-per-trial) (default: auto)"),
    ("--gpus-per-trial", "gpus_per_trial", float,
     f"GPUs per trial; 0.25 packs four trials on one GPU (default: {DEFAULTS.gpus_per_trial:g})"),
    ("--cpus-per-trial", "cpus_per_trial", float,
     f"CPUs per trial, also torch's thread count (default: {DEFAULTS.cpus_per_trial:g})"),
    ("--address", "address", str,
     "join a running Ray cluster: auto or HOST:PORT (default: start a local Ray)"),
    ("--objective", "objective", str,
     f"what to minimise: val_top1_error, val_hdist@1 (error x severity in one number), val_hdist@5, "
     f"'val_top1_error + W * val_mistake_severity', or val_mistake_severity (warned: it rewards many "
     f"small mistakes) (default: {DEFAULTS.objective})"),
    ("--seed", "seed", int,
     f"search seed: TPE's and, with the trial's index, every trial's (default: {DEFAULTS.seed})"),
    ("--data-dir", "data_dir", str, "extracted CIFAR-100 (default: the space's train.data_dir, else found as "
     "`python -m hiercls.data locate` finds it)"),
    ("--startup-trials", "startup_trials", int,
     f"random trials before TPE models the results (default: {DEFAULTS.startup_trials})"),
    ("--max-failures", "max_failures", int,
     f"retries of a crashed trial from its last checkpoint (default: {DEFAULTS.max_failures})"),
    ("--optuna-storage", "optuna_storage", str,
     "a database URL for the Optuna study (sqlite:///study.db, postgresql://...; default: the journal file "
     "optuna_study.journal in the experiment folder); watch it with optuna-dashboard"),
    ("--top", "top", int, f"rows in the final table (default: {DEFAULTS.top})"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tune_main.py",
        description="Search the hyperparameters of hierarchy-aware CIFAR-100 training with Ray Tune: "
                    "TPE + ASHA, NSGA-II, a grid or PB2 (docs/reference/modes.md).",
        epilog="Options may also sit in the space file (same name, underscores; the command line wins). "
               "Results: STORAGE_PATH/NAME (summary.csv, one folder per trial). Resume with: python "
               "tune_main.py --name NAME --storage-path DIR --resume. Resuming unpickles Ray's saved state "
               "(tuner.pkl, experiment_state-*.json, searcher-state-*.pkl, the trials' *.pkl), which runs "
               "code from those files: a pickle not in the experiment's record signed with your key "
               "(~/.config/hiercls/experiment.key), or a folder or state file owned by another user or "
               "world-writable, is refused unless --trust-experiment. One driver at a time: a second search "
               "or resume of an experiment is refused, naming the holder. Exit status: 0 done; 2 fixable "
               "input (spec, data folder, unreachable or non-Ray --address, resources no node has, an "
               "untrusted, unresumable or busy experiment, a Ray or Optuna that breaks hiercls's contracts); "
               "3 an OS error while writing "
               "(no space, read-only, unwritable --storage-path: finished trials are kept, resume after "
               "fixing it) or a torn Ray state; 130 interrupted (Ctrl-C, SIGTERM); never 1.",
    )
    parser.add_argument("--space", default=None,
                        help="search space: a YAML file, or the name of one shipped with hiercls in "
                             f"search_spaces/ ({', '.join(shipped_spaces())}; an existing path wins) "
                             "(default: search_spaces/default.yaml)")
    for flag, key, kind, text in _OPTIONS:
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.add_argument(
        "--multi-objective", dest="multi_objective", action="store_true", default=None,
        help="search the Pareto front of (val_top1_error, val_mistake_severity) with Optuna's NSGA-II; "
             "no ASHA, because ASHA ranks trials on one number and would stop trials that lie on the "
             "front",
    )
    parser.add_argument(
        "--pb2-time-multiplexed", dest="pb2_time_multiplexed", action="store_true", default=None,
        help="PB2 with more members than run at once (a smaller max_concurrent is still refused): every "
             "member is started, as many run as the cluster fits, and Ray pauses each at every "
             "perturbation epoch to run the others; without it such a PB2 search is refused",
    )
    parser.add_argument(
        "--constraint", dest="constraints", action="append", default=None, metavar="'METRIC <= BOUND'",
        help="search only among trials meeting this bound (repeatable): 'val_top1_error <= 0.235', or "
             "relative to the first points_to_evaluate trial (run in full before any other): "
             "'val_top1_error <= baseline + 0.005'. METRIC: val_top1_error, val_hdist@1/5/10/20, "
             "val_mistake_severity, val_coarse_error. Optuna records each trial's constraint values; an "
             "infeasible trial is never reported as best",
    )
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment --name in --storage-path (Tuner.restore: finished "
                             "trials are kept, unfinished ones resume from their checkpoint, errored ones "
                             "restart); without --space the saved spec is used. Restoring unpickles Ray's "
                             "saved state: the folder is checked first (see --trust-experiment), and a "
                             "torn state is refused (exit 3) rather than starting a new search")
    parser.add_argument("--trust-experiment", action="store_true",
                        help="resume even an experiment whose pickles are not all in its record signed with "
                             "your key (someone else's, or made before hiercls kept that record), or whose "
                             "folder or a state file in it belongs to another user or is world-writable (its "
                             "pickles run code when unpickled); its pickles are then recorded as yours")
    parser.add_argument("--allow-large-search", dest="allow_large_search", action="store_true",
                        default=None,
                        help=f"allow --num-samples above {MAX_SAMPLES:,} (Ray keeps every trial in memory "
                             "and rewrites them all in its state after every epoch)")
    parser.add_argument("--smoke-test", action="store_true",
                        help=f"use the shipped space {SMOKE_SPACE.stem!r} (CPU: plainnet, "
                             "2 epochs, 2,000 training and 500 val images, a few minutes)")
    parser.add_argument("--trainable", choices=tuple(TRAINABLES), default=None,
                        help="train: real training (default); toy: a synthetic objective, no data or "
                             "training, to check a space or a cluster in seconds; --resume reuses the "
                             "experiment's own")
    parser.add_argument("--toy-sleep", type=float, default=0.0,
                        help="seconds per epoch of the toy trainable (default: 0)")
    parser.add_argument("--check", action="store_true",
                        help="validate everything and print the plan (searcher, scheduler, trials, what a "
                             "--resume would run), then exit without starting Ray or writing anything: 0, "
                             "or 2 with every problem")
    return parser


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    """YAML < command line. ``--resume`` without ``--space`` reuses the experiment's saved spec.

    Raises:
        SpecError: a bad file, unknown keys or wrong types; ``--space`` with ``--smoke-test``.
    """
    overrides = {key: getattr(args, key) for _, key, _, _ in _OPTIONS}
    overrides["multi_objective"] = args.multi_objective
    overrides["allow_large_search"] = args.allow_large_search
    overrides["pb2_time_multiplexed"] = args.pb2_time_multiplexed
    overrides["constraints"] = args.constraints
    if args.smoke_test and args.space:
        raise SpecError(["--smoke-test uses the shipped space 'smoke'; do not combine it with --space"])
    space = SMOKE_SPACE if args.smoke_test else args.space
    if space is None and args.resume and args.name:
        storage = Path(args.storage_path or DEFAULTS.storage_path).expanduser()
        saved = storage / args.name / SPEC_FILE
        if saved.is_file():
            space = saved
    # an experiment's saved spec also records its trainable (read by the runner on resume)
    ignore = (TRAINABLE_KEY,) if args.resume or (space is not None and Path(space).name == SPEC_FILE) else ()
    return SearchSpec.load(space, overrides, ignore=ignore)


def _interrupted_line(spec: SearchSpec | None) -> str:
    if spec is None or not spec.name:
        return "interrupted before the search started; nothing was saved"
    folder = spec.experiment_dir
    if not (folder / "tuner.pkl").is_file():
        return f"interrupted before the search saved any state in {str(folder)!r}; start it again"
    return (f"interrupted; the saved state in {str(folder)!r} is kept (finished trials too): resume with: "
            f"{resume_command(spec)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def error(message: object) -> None:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)

    def terminate(number: int, frame: object) -> None:  # SIGTERM (e.g. SLURM's time limit) = Ctrl-C
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, terminate)  # run_search keeps it once Ray has started
    previous_int = signal.getsignal(signal.SIGINT)
    spec: SearchSpec | None = None
    try:
        spec = spec_from_args(args)
        if args.check:
            plan = make_plan(spec, resume=args.resume, trainable=args.trainable, trust=args.trust_experiment)
            print("\n".join(plan.describe()))
            return EXIT_OK
        from hiercls.tune.runner import run_search  # Ray stays out of --help, --check and input errors

        outcome = run_search(spec, resume=args.resume, trainable=args.trainable, toy_sleep=args.toy_sleep,
                             trust=args.trust_experiment, sigterm_interrupts=True)
    except KeyboardInterrupt:  # a second Ctrl-C while Tune saves its state, or one before Ray started
        print(f"{parser.prog}: {_interrupted_line(spec)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (SpecError, ResourceError, UntrustedExperimentError, ContractError, ExperimentInUseError,
            StudyStorageError, ManifestError) as err:
        error(err)
        return EXIT_INPUT
    except StorageError as err:
        error(err)
        return EXIT_WRITE
    except OSError as err:
        error(describe_os_error(err, err.filename or "the experiment folder", "use"))
        return EXIT_WRITE
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_OK


def cli() -> int:
    """The ``hiercls-tune`` console script and ``python tune_main.py``: :func:`main` on ``sys.argv``; after
    an interrupt, a further Ctrl-C while Python exits is ignored (no traceback)."""
    status = main()
    if status == EXIT_INTERRUPTED:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status
