"""Hyperparameter search over hierarchy-aware CIFAR-100 training with Ray Tune: ``python tune_main.py``.

Precedence: SearchSpec defaults < the space file (``--space``, default ``search_spaces/default.yaml``) <
command-line options. Examples::

    python tune_main.py --space search_spaces/hxe.yaml --data-dir data/cifar-100 --name hxe
    python tune_main.py --space search_spaces/joint.yaml --gpus-per-trial 0.25 --max-concurrent 8
    python tune_main.py --name hxe --resume                     # after Ctrl-C
    python tune_main.py --smoke-test --data-dir data/cifar-100  # CPU, a few minutes

Exit status: 0 done, 2 invalid input (nothing started), 130 interrupted (resume with --resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hiercls.tune.spec import DEFAULT_SPACE, SMOKE_SPACE, SearchSpec, SpecError

DEFAULTS = SearchSpec()

# (option, spec key, type, help)
_OPTIONS = [
    ("--name", "name", str, "experiment name (default: the space file's name)"),
    ("--storage-path", "storage_path", str,
     f"folder holding the experiments (default: {DEFAULTS.storage_path})"),
    ("--num-samples", "num_samples", int, f"trials in all (default: {DEFAULTS.num_samples})"),
    ("--epochs", "epochs", int, f"epochs per trial, also ASHA's max_t (default: {DEFAULTS.epochs})"),
    ("--grace-period", "grace_period", int,
     f"ASHA: epochs before a trial can be stopped (default: {DEFAULTS.grace_period})"),
    ("--reduction-factor", "reduction_factor", float,
     f"ASHA: keep 1/R of the trials at each rung (default: {DEFAULTS.reduction_factor:g})"),
    ("--max-concurrent", "max_concurrent", int, f"trials at once (default: {DEFAULTS.max_concurrent})"),
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
    ("--data-dir", "data_dir", str, "extracted CIFAR-100 (default: the space's train.data_dir)"),
    ("--startup-trials", "startup_trials", int,
     f"random trials before TPE models the results (default: {DEFAULTS.startup_trials})"),
    ("--max-failures", "max_failures", int,
     f"retries of a crashed trial from its last checkpoint (default: {DEFAULTS.max_failures})"),
    ("--top", "top", int, f"rows in the final table (default: {DEFAULTS.top})"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tune_main.py",
        description="Search the hyperparameters of hierarchy-aware CIFAR-100 training with Ray Tune "
                    "(Optuna TPE + ASHA).",
        epilog="Every option can also be set in the space file (same name, underscores); the command line "
               "wins. Results: STORAGE_PATH/NAME (summary.csv, one folder per trial).",
    )
    default_space = DEFAULT_SPACE.relative_to(DEFAULT_SPACE.parents[1])
    parser.add_argument("--space", default=None, help=f"search space YAML (default: {default_space})")
    for flag, key, kind, text in _OPTIONS:
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.add_argument(
        "--multi-objective", dest="multi_objective", action="store_true", default=None,
        help="search the Pareto front of (val_top1_error, val_mistake_severity) with Optuna's NSGA-II; "
             "no ASHA, because ASHA ranks trials on one number and would stop trials that lie on the "
             "front",
    )
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment --name in --storage-path (Tuner.restore: finished "
                             "trials are kept, unfinished ones resume from their checkpoint, errored ones "
                             "restart); without --space the saved spec is used")
    parser.add_argument("--smoke-test", action="store_true",
                        help=f"use {SMOKE_SPACE.relative_to(SMOKE_SPACE.parents[1])} (CPU: plainnet, "
                             "2 epochs, 2,000 training and 500 val images, a few minutes)")
    parser.add_argument("--trainable", choices=("train", "toy"), default=None,
                        help="train: real training (default); toy: a synthetic objective, no data or "
                             "training, to check a space or a cluster in seconds; --resume reuses the "
                             "experiment's own")
    parser.add_argument("--toy-sleep", type=float, default=0.0,
                        help="seconds per epoch of the toy trainable (default: 0)")
    return parser


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    """YAML < command line. ``--resume`` without ``--space`` reuses the experiment's saved spec.

    Raises:
        SpecError: a bad file, unknown keys or wrong types; ``--space`` with ``--smoke-test``.
    """
    from hiercls.tune.runner import SPEC_FILE

    overrides = {key: getattr(args, key) for _, key, _, _ in _OPTIONS}
    overrides["multi_objective"] = args.multi_objective
    if args.smoke_test and args.space:
        raise SpecError(["--smoke-test uses search_spaces/smoke.yaml; do not combine it with --space"])
    space = SMOKE_SPACE if args.smoke_test else args.space
    if space is None and args.resume and args.name:
        storage = Path(args.storage_path or DEFAULTS.storage_path).expanduser()
        saved = storage / args.name / SPEC_FILE
        if saved.is_file():
            space = saved
    return SearchSpec.load(space, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from hiercls.tune.runner import ResourceError, run_search

    try:
        spec = spec_from_args(args)
        outcome = run_search(spec, resume=args.resume, trainable=args.trainable, toy_sleep=args.toy_sleep)
    except (SpecError, ResourceError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
