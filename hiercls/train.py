"""The plain training run: ``python -m hiercls.train``.

Configuration precedence: defaults < ``--config FILE.yaml`` < flags < ``--set key=value``. The original
project's flags work as they were (``--architecture --loss --alpha --beta --lambda_fine --lambda_coarse
--fine_loss_start_epoch --fine_loss_ramp_epochs --coarse_loss_start_epoch --coarse_loss_ramp_epochs
--lr_schedule --epochs --batch_size --lr --out_folder --data_path``), also with hyphens.

Examples::

    python -m hiercls.train --architecture plainnet --loss hierarchical-cross-entropy --alpha 0.4 \\
        --hierarchy cifar100-wordnet --lr_schedule cosine --epochs 180 --data_path data/cifar-100 \\
        --out_folder runs/hxe
    python -m hiercls.train --config best.yaml          # a config exported by analysis.export
    python -m hiercls.train ... --resume                # continue an interrupted run
    python -m hiercls.train --smoke-test --data-dir data/cifar-100
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from hiercls.config import ConfigError, TrainConfig, load_config, parse_overrides

__all__ = ["build_parser", "config_from_args", "main"]

# (config key, extra spellings, type, help). Every key also accepts its hyphenated spelling.
_FLAGS: list[tuple[str, tuple[str, ...], Any, str]] = [
    ("data_dir", ("--data_path",), str, "CIFAR-100 folder (torchvision or ImageFolder layout)"),
    ("hierarchy", (), str, "built-in hierarchy (cifar100-l5, cifar100-coarse, cifar100-wordnet) or file"),
    ("val_size", (), int, "validation images held out of the training set (0: none)"),
    ("max_train_samples", (), int, "stratified subset of the training split, for quick runs"),
    ("cutout", (), int, "Cutout square side in pixels (0: off)"),
    ("architecture", (), str, "plainnet, resnet18 (ResNet18), wrn28-10"),
    ("loss", (), str, "cross-entropy, hierarchical-cross-entropy, soft-labels, simple-hierarchy"),
    ("alpha", (), float, "hierarchical-cross-entropy: edge weights exp(-alpha * depth), larger = coarser"),
    ("beta", (), float, "soft-labels: target sharpness exp(-beta * d / d_max)"),
    ("lambda_fine", (), float, "simple-hierarchy: weight of the fine cross-entropy"),
    ("lambda_coarse", (), float, "simple-hierarchy: weight of the coarse cross-entropy"),
    ("fine_loss_start_epoch", (), float, "simple-hierarchy: epoch the fine term starts"),
    ("fine_loss_ramp_epochs", (), float, "simple-hierarchy: epochs of the fine term's linear ramp"),
    ("coarse_loss_start_epoch", (), float, "simple-hierarchy: epoch the coarse term starts"),
    ("coarse_loss_ramp_epochs", (), float, "simple-hierarchy: epochs of the coarse term's linear ramp"),
    ("coarse_level", (), int, "simple-hierarchy: depth of the coarse groups (default: 20 superclasses)"),
    ("optimizer", (), str, "sgd (Nesterov) or adamw"),
    ("lr", (), float, "base learning rate"),
    ("weight_decay", (), float, "weight decay"),
    ("lr_schedule", (), str, "cosine (SGDR), cyclic, cutout (multi-step), constant, onecycle"),
    ("epochs", (), int, "training epochs"),
    ("batch_size", (), int, "training batch size"),
    ("seed", (), int, "seed of the split, initialisation and augmentation"),
    ("device", (), str, "auto, cpu, cuda, cuda:N"),
    ("out_folder", (), str, "output folder (default runs/<loss>_<architecture>_seed<seed>)"),
    ("num_threads", (), int, "CPU threads for torch"),
]


def _default_text(key: str) -> str:
    """The default shown in --help: the config's, or for loss/schedule parameters their factory's."""
    from hiercls.losses import LOSSES, loss_params
    from hiercls.schedules import SCHEDULES, schedule_params

    value = getattr(TrainConfig(), key)
    if value is not None:
        return str(value)
    for registry, params in ((LOSSES, loss_params), (SCHEDULES, schedule_params)):
        for name in registry.names():
            if key in params(name) and params(name)[key] is not None:
                return f"{params(name)[key]} for {name}"
    return "none"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags default to 'not given', so the YAML and defaults show through)."""
    parser = argparse.ArgumentParser(
        prog="python -m hiercls.train",
        description="Train one CIFAR-100 classifier with a hierarchy-aware loss.",
        epilog="Precedence: defaults < --config < flags < --set. Resolved config: OUT/config.yaml.",
    )
    parser.add_argument("--config", help="YAML file of config keys (e.g. an earlier run's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set t0=10 --set milestones=[60,120,160]")
    for key, extra, kind, text in _FLAGS:
        text = f"{text} (default: {_default_text(key)})"
        spellings = [f"--{key}", *extra]
        if "_" in key:
            spellings.append(f"--{key.replace('_', '-')}")
        if key == "data_dir":
            spellings = ["--data-dir", "--data_dir", "--data_path", "--data-path"]
        parser.add_argument(
            *dict.fromkeys(spellings), dest=key, type=kind, default=argparse.SUPPRESS, help=text
        )
    parser.add_argument("--amsgrad", dest="amsgrad", action="store_true", default=argparse.SUPPRESS,
                        help="adamw: use the AMSGrad variant")
    parser.add_argument("--no-test", dest="evaluate_test", action="store_false", default=argparse.SUPPRESS,
                        help="do not score the official test set at the end")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out_folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in --out_folder")
    parser.add_argument("--smoke-test", action="store_true",
                        help="1 epoch on 1,000 training and 500 val images (CPU friendly)")
    return parser


SMOKE_TEST = {"epochs": 1, "max_train_samples": 1000, "val_size": 500, "batch_size": 100}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--config`` < flags < ``--set``, then the smoke-test settings if asked for.

    Raises:
        ConfigError: unknown keys, wrong types, bad --set items.
    """
    not_config = ("config", "set", "resume", "overwrite", "smoke_test")
    flags = {k: v for k, v in vars(args).items() if k not in not_config}
    overrides = {**flags, **parse_overrides(args.set)}
    if args.smoke_test:
        overrides = {**overrides, **SMOKE_TEST}
        if "out_folder" not in overrides:
            overrides["out_folder"] = tempfile.mkdtemp(prefix="hiercls-smoke-")
    return load_config(args.config, overrides)


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a run that went NaN, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    from hiercls.engine import DataError, RunExistsError, fit

    try:
        config = config_from_args(args)
    except ConfigError as err:
        parser.error(str(err))
    # Both signals end the run the same way (also when SIGINT was ignored by a launching shell).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        result = fit(config, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, RunExistsError, DataError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every completed epoch is checkpointed; run the same command with --resume "
            "to continue",
            file=sys.stderr,
        )
        return 130
    print(f"results: {result['out_folder']}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
