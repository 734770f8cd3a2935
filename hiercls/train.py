"""The plain training run: ``python -m hiercls.train``.

Configuration precedence: defaults < ``--config FILE.yaml`` < flags < ``--set key=value``. The original
project's flags work as they were (``--architecture --loss --alpha --beta --lambda_fine --lambda_coarse
--fine_loss_start_epoch --fine_loss_ramp_epochs --coarse_loss_start_epoch --coarse_loss_ramp_epochs
--lr_schedule --epochs --batch_size --lr --out_folder --data_path``), also with hyphens, and so do the
reference code's embedding flags (``--barzdenzler --devise --word_vectors --use_2fc --fc_inner_dim
--use_fc_batchnorm --lr_fc --weight_decay_fc --train_backbone_after --embedding_size``; the booleans bare or
with ``True``/``False``). A run's recorded ``config.yaml`` given to ``--config`` (one in a run folder, beside
its ``checkpoints/`` or ``all_epoch_results.json``) runs in the folder holding it unless ``--out_folder`` is
given, whatever ``out_folder`` it names: a run folder copied or moved elsewhere resumes where it now is.

Examples::

    python -m hiercls.train --architecture plainnet --loss hierarchical-cross-entropy --alpha 0.4 \\
        --hierarchy cifar100-wordnet --lr_schedule cosine --epochs 180 --data_path data/cifar-100 \\
        --out_folder runs/hxe
    python -m hiercls.train --config best.yaml          # a config exported by analysis.export
    python -m hiercls.train ... --resume                # continue an interrupted run
    python -m hiercls.train --config runs/b/config.yaml --resume   # a copied or moved run, where it is now
    python -m hiercls.train --barzdenzler --loss cosine-distance --hierarchy cifar100-wordnet
    python -m hiercls.train --devise --loss ranking-loss --word_vectors wiki.en.bin
    python -m hiercls.train --smoke-test
    python -m hiercls.train --config best.yaml --check   # validate, print the resolved config, exit
    python -m hiercls.train --loss simple-hierarchy --epochs 10 \\
        --value_schedule '{1: {lambda_coarse: 0.0}, 3: {lambda_coarse: 1.0, lr: 0.05}}'

Exit status: 0 done; 1 the run's loss went NaN; 2 bad input, fixed in the arguments or files (flags,
config, data folder without the 100 CIFAR-100 classes, existing results, a corrupt or foreign
checkpoint); 3 an OS error while writing results (no space left, read-only, permission, a path under a
regular file): one line names the file, and the last completed epoch stays resumable; 130 interrupted
(Ctrl-C or SIGTERM; a second Ctrl-C is ignored while the run stops): rerun with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hiercls.cli import parse_overrides
from hiercls.config import ConfigError, TrainConfig, load_config, param_keys, recorded_run_folder
from hiercls.registry import (
    HIERARCHIES,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    TRAINING_PARAMS,
    Param,
    param_registries,
)
from hiercls.storage import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_NAN, EXIT_OK, EXIT_WRITE
from hiercls.value_schedule import all_variable_keys

__all__ = ["build_parser", "config_from_args", "main"]

# (config key, extra spellings, type, help). Every key also accepts its hyphenated spelling. A declared
# run-level parameter (TRAINING_PARAMS: lr) has type and help None: both come from its declaration.
_FLAGS: list[tuple[str, tuple[str, ...], Any, str | None]] = [
    ("data_dir", ("--data_path",), str, "CIFAR-100 folder (torchvision or ImageFolder layout; default: "
     "$HIERCLS_DATA_DIR, .data/cifar-100, the shared archive, then a download into .data/)"),
    ("hierarchy", (), str, "a built-in hierarchy ({hierarchy}) or a file"),
    ("val_size", (), int, "validation images held out of the training set (0: none)"),
    ("max_train_samples", (), int, "stratified subset of the training split, for quick runs"),
    ("cutout", (), int, "Cutout square side in pixels (0: off)"),
    ("crop_padding", (), int, "random crop's zero padding in pixels on each side (0: no crop)"),
    ("flip", (), str, "horizontal flips of training images: random (p = 1/2 every epoch), alternate (each "
     "image in every other epoch; airbench), none"),
    ("architecture", (), str, "one of {model}"),
    ("loss", (), str, "one of {loss}"),
    ("word_vectors", (), str, "with --devise: fastText word vectors of the class names (a .bin model or a "
     ".vec text file; needs the embeddings extra for .bin)"),
    ("embedding_size", (), int, "the embedding's dimension; taken from the embedding (a different value "
     "is an error)"),
    ("fc_inner_dim", (), int, "with --use_2fc: width of the head's hidden layer"),
    ("train_backbone_after", (), int, "epochs during which only the head trains (backbone frozen, "
     "BatchNorm statistics still updated); the reference code counted steps, this counts epochs"),
    ("optimizer", (), str, "one of {optimizer} (sgd: Nesterov momentum)"),
    *((key, (), None, None) for key in TRAINING_PARAMS),
    ("weight_decay", (), float, "weight decay"),
    ("lr_fc", (), float, "the head's learning rate (a second parameter group, scaled by the schedule like "
     "--lr; default: --lr)"),
    ("weight_decay_fc", (), float, "the head's weight decay (default: --weight_decay)"),
    ("lr_schedule", (), str, "one of {schedule} (cosine: SGDR; cutout: multi-step)"),
    ("epochs", (), int, "training epochs"),
    ("batch_size", (), int, "training batch size"),
    ("value_schedule", (), str, "values that change during training, a YAML mapping of 1-based epochs to "
     "values, e.g. '{{1: {{lambda_coarse: 0.0}}, 3: {{lambda_coarse: 1.0, lr: 0.05}}}}': from the start of "
     "that epoch the key takes that value; keys: {run_variable} (the base rate: the --lr_schedule shape "
     "applies on top) and the loss's {variable}"),
    ("ema_decay", (), float, "moving average of the weights per optimiser step, evaluated and saved in place "
     "of the trained weights (0: off; e.g. 0.99)"),
    ("seed", (), int, "seed of the initialisation, batches and augmentation (and of the split unless "
     "--split_seed is given)"),
    ("split_seed", (), int, "seed of the validation split and of the --max_train_samples subset (default: "
     "--seed); runs with the same split seed are validated on the same images"),
    ("device", (), str, "auto, cpu, cuda, cuda:N"),
    ("out_folder", (), str, "output folder (default runs/<loss>_<architecture>_seed<seed>)"),
    ("num_threads", (), int, "CPU threads for torch"),
    ("amp", (), str, "bf16 autocast of the training forward pass: auto (CUDA only), true, false; "
                     "metrics always come from fp32 logits"),
    ("channels_last", (), str, "NHWC memory format: auto (CUDA only), true, false"),
    ("checkpoint_every", (), int, "epochs between checkpoints (the last epoch is always saved)"),
]


def _param_flags(kind: str) -> list[tuple[str, tuple[str, ...], Any, str]]:
    """The flags of every parameter the entries of ``kind`` (``loss``, ``lr_schedule``) declare, made
    from the declarations: ``--alpha`` and, for names with underscores, the hyphenated spelling."""
    registry = param_registries()[kind]
    flags = []
    for key, param in param_keys(kind).items():
        owners = registry.owners(key)
        defaults = sorted({_shown(registry.defaults(o)[key]) for o in owners})
        default = defaults[0] if len(defaults) == 1 else " / ".join(
            f"{_shown(registry.defaults(o)[key])} for {o}" for o in owners)
        text = f"{', '.join(owners)}: {_declared_help(param, default)}"
        flags.append((key, (), _FLAG_TYPES[param.kind], text))
    return flags


def _declared_help(param: Param, default: str) -> str:
    """A declared parameter's ``--help`` text: its help, valid values, unit and default."""
    unit = f", {param.unit}" if param.unit else ""
    return f"{param.help} ({param.valid_text()}{unit}; default: {default})"


def _shown(value: Any) -> str:
    if value is None:
        return "derived"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _switch_value(text: str) -> bool | str:
    """``true``/``false`` (also yes/no, on/off, 1/0) for a bool parameter; other text is left for the
    config check to refuse with the valid values."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    return text


_FLAG_TYPES = {"float": float, "int": int, "bool": _switch_value, "ints": str, "floats": str}


def _flags() -> list[tuple[str, tuple[str, ...], Any, str]]:
    """The fixed flags with each loss's (schedule's) parameter flags after ``--loss`` (``--lr_schedule``)."""
    names = {r.kind: ", ".join(r.names()) for r in (HIERARCHIES, LOSSES, MODELS, OPTIMIZERS, SCHEDULES)}
    names["variable"] = ", ".join(f"{k} ({', '.join(LOSSES.owners(k))})" for k in all_variable_keys()
                                  if k not in TRAINING_PARAMS)
    names["run_variable"] = ", ".join(k for k in all_variable_keys() if k in TRAINING_PARAMS)
    out = []
    for key, extra, kind, text in _FLAGS:
        if key in TRAINING_PARAMS:  # type and help from the declaration
            param = TRAINING_PARAMS[key]
            flag = (key, extra, _FLAG_TYPES[param.kind], _declared_help(param, _shown(param.default)))
        else:
            flag = (key, extra, kind, text.format(**names))
        out.append(flag)
        if flag[0] in ("architecture", "loss", "lr_schedule"):
            out += _param_flags(flag[0])
    return out


def _default_text(key: str) -> str:
    return str(getattr(TrainConfig(), key))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags default to 'not given', so the YAML and defaults show through)."""
    parser = argparse.ArgumentParser(
        prog="python -m hiercls.train",
        description="Train one CIFAR-100 classifier with a hierarchy-aware loss.",
        epilog="Precedence: defaults < --config < flags < --set. Resolved config: OUT/config.yaml. "
               "Exit status: 0 done, 1 the loss went NaN, 2 bad input (flags, config, data, checkpoint), "
               "3 a write failed (disk full, read-only, permission), 130 interrupted (rerun with --resume).",
    )
    parser.add_argument("--config", help="YAML file of config keys (e.g. an earlier run's config.yaml: a "
                                         "config.yaml in a run folder, beside its checkpoints/ or "
                                         "all_epoch_results.json, runs in that folder unless --out_folder "
                                         "is given)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set t0=10 --set milestones=[60,120,160]")
    for key, extra, kind, text in _flags():
        if "default:" not in text:
            text = f"{text} (default: {_default_text(key)})"
        spellings = [f"--{key}", *extra]
        if "_" in key:
            spellings.append(f"--{key.replace('_', '-')}")
        if key == "data_dir":
            spellings = ["--data-dir", "--data_dir", "--data_path", "--data-path"]
        # a switch may be given bare (--normalize, --devise_single_negative) or with a value (True/false)
        bare = {"nargs": "?", "const": True, "metavar": "true|false"} if kind is _switch_value else {}
        parser.add_argument(
            *dict.fromkeys(spellings), dest=key, type=kind, default=argparse.SUPPRESS, help=text, **bare
        )
    # booleans of the reference code, accepted bare (--barzdenzler, as the seed wrote them) and with a
    # value (--barzdenzler True, as the reference wrote them)
    for key, text in (
        ("barzdenzler", "class embeddings of Barz & Denzler (WACV 2019) for the embedding losses "
                        "(their default)"),
        ("devise", "DeViSE (Frome et al., NeurIPS 2013): class embeddings from --word_vectors"),
        ("use_2fc", "a two-layer head: Linear -> ReLU [-> BatchNorm] -> Linear"),
        ("use_fc_batchnorm", "with --use_2fc: batch norm between the head's layers"),
        ("whiten_init", "set the first convolution from the training images' patch whitening and freeze "
                        "its weight (airbench)"),
        ("flip_tta", "validation and test score the mean outputs of each image and its mirror image"),
    ):
        spellings = dict.fromkeys([f"--{key}", f"--{key.replace('_', '-')}"])
        parser.add_argument(*spellings, dest=key, nargs="?", const=True, type=_switch_value,
                            default=argparse.SUPPRESS, metavar="true|false", help=f"{text} (default: false)")
    parser.add_argument("--amsgrad", dest="amsgrad", action="store_true", default=argparse.SUPPRESS,
                        help="adamw: use the AMSGrad variant")
    parser.add_argument("--deterministic", dest="deterministic", action="store_true",
                        default=argparse.SUPPRESS,
                        help="deterministic cuDNN and torch algorithms: bit-exact resume and reproduction "
                             "on CUDA (slower); the CPU is always exact")
    parser.add_argument("--compile", dest="compile", action="store_true", default=argparse.SUPPRESS,
                        help="torch.compile the model (compile time is reported apart from epoch time)")
    parser.add_argument("--no-test", dest="evaluate_test", action="store_false", default=argparse.SUPPRESS,
                        help="do not score the official test set at the end")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out_folder from checkpoints/last.pth (exact on the CPU; "
                             "on CUDA see docs/training.md)")
    parser.add_argument("--resume-from-best", "--resume_from_best", dest="resume_from_best",
                        action="store_true",
                        help="with --resume: continue from checkpoints/best.pth (its weights and epoch) "
                             "when last.pth is unreadable; not exact: fresh optimiser momentum, RNG "
                             "reseeded; the unreadable last.pth is kept as last.pth.corrupt")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in --out_folder")
    parser.add_argument("--smoke-test", action="store_true",
                        help="1 epoch on 1,000 training and 500 val images (CPU friendly)")
    parser.add_argument("--check", action="store_true",
                        help="validate everything a run would check before training (the config, hierarchy, "
                             "loss, schedule and word vectors; where the data is, found but not extracted, "
                             "downloaded or loaded; the output folder: existing results, --resume's "
                             "checkpoint and config, whether it can be written), print the resolved config "
                             "(YAML, as OUT/config.yaml would hold it), and exit without training or writing "
                             "results: 0, 2 bad input, 3 an unwritable output folder")
    return parser


SMOKE_TEST = {"epochs": 1, "max_train_samples": 1000, "val_size": 500, "batch_size": 100}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--config`` < flags < ``--set``, then the smoke-test settings if asked for.

    When ``--config`` is a run's recorded ``config.yaml`` (:func:`~hiercls.config.recorded_run_folder`:
    named ``config.yaml``, beside a ``checkpoints/`` folder or an ``all_epoch_results.json``) and neither
    ``--out_folder`` nor ``--set out_folder=`` is given, the output folder is the folder holding that
    file, not the ``out_folder`` it names: a run folder copied or moved elsewhere is resumed (or refused)
    where it now is, and the folder it was copied from is never touched.

    Raises:
        ConfigError: a ``--config`` file that is missing, unreadable, not UTF-8, not YAML or not a mapping
            (one line naming it), unknown keys, wrong types, bad --set items.
    """
    not_config = ("config", "set", "resume", "overwrite", "smoke_test", "resume_from_best", "check")
    flags = {k: v for k, v in vars(args).items() if k not in not_config}
    overrides = {**flags, **parse_overrides(args.set)}
    if args.smoke_test:
        overrides = {**overrides, **SMOKE_TEST}
        if "out_folder" not in overrides:
            overrides["out_folder"] = tempfile.mkdtemp(prefix="hiercls-smoke-")
    config = load_config(args.config, overrides)
    folder = recorded_run_folder(args.config) if args.config is not None and "out_folder" not in overrides \
        else None
    if folder is not None and not _same_folder(config.out_folder, folder):
        logging.getLogger("hiercls").info(
            "%s is the recorded config of the run in %s: the run is there, not in %s, the folder the file "
            "names (--out_folder chooses another)", args.config, folder, config.out_folder)
        config = config.replace(out_folder=str(folder))
    return config


def _same_folder(named: str | None, folder: Path) -> bool:
    """Whether the config's ``out_folder`` is ``folder`` (the same place, however spelled)."""
    return named is not None and Path(named).resolve() == folder.resolve()


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    # the first Ctrl-C (or SIGTERM) stops the run; later ones are ignored while it stops, so a second
    # Ctrl-C cannot cut the clean-up short or end in a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a run that went NaN, 2 bad input, 3 a failed write,
    130 interrupted; see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # --check: stdout is the resolved config alone (YAML), so its log lines go to stderr
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        stream=sys.stderr if args.check else sys.stdout, force=True)
    if args.resume_from_best and not args.resume:
        parser.error("--resume-from-best continues a run: add --resume")
    try:
        config = config_from_args(args)
    except ConfigError as err:  # the problems alone (no usage block): they name the key and valid values
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    if args.check:
        return _check(parser, args, config)
    # Both signals end the run the same way (also when SIGINT was ignored by a launching shell).
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    status = _run(parser, args, config)
    if status != EXIT_INTERRUPTED:  # after an interrupt further signals stay ignored until the exit
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, config: TrainConfig) -> int:
    # the engine (torch, the data, the models) stays out of --help and of flag errors
    from hiercls.engine import CheckpointError, DataError, RunExistsError, StorageError, fit

    try:
        result = fit(config, resume=args.resume, overwrite=args.overwrite,
                     resume_from_best=args.resume_from_best)
    except (ConfigError, RunExistsError, DataError, CheckpointError) as err:
        _ignore_signals()
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except StorageError as err:
        _ignore_signals()
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    except KeyboardInterrupt:
        _ignore_signals()
        print(f"\ninterrupted: {_resume_point(config)}; run the same command with --resume to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"results: {result['out_folder']}")
    return EXIT_OK if result["status"] == "ok" else EXIT_NAN


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, config: TrainConfig) -> int:
    """``--check``: :func:`hiercls.engine.check_run`, the resolved config on stdout, one line on stderr."""
    from hiercls.engine import CheckpointError, DataError, RunExistsError, StorageError, check_run  # see _run

    try:
        resolved, data = check_run(config, resume=args.resume, overwrite=args.overwrite,
                                   resume_from_best=args.resume_from_best)
    except (ConfigError, RunExistsError, DataError, CheckpointError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except StorageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    print(resolved.to_yaml(), end="")
    what = "resume" if args.resume else "run"
    print(f"check: ok: this would {what} in {resolved.out_folder}, reading {data}", file=sys.stderr)
    return EXIT_OK


def _resume_point(config: TrainConfig) -> str:
    """Where ``--resume`` will continue an interrupted run, from its epoch records (JSON, ours) and
    ``checkpoint_every``: the run checkpoints after every epoch whose number it divides."""
    from hiercls.engine import default_out_folder  # see _run

    out = Path(config.out_folder) if config.out_folder else default_out_folder(config)
    try:
        completed = len(json.loads((out / "all_epoch_results.json").read_text()))
    except (OSError, ValueError, TypeError):
        completed = 0
    every = config.checkpoint_every
    if completed >= config.epochs:  # the last epoch is always checkpointed
        return f"all {config.epochs} epochs are checkpointed, so --resume only writes the final results"
    saved = completed - completed % every
    if saved == 0:
        return f"no epoch was checkpointed yet (checkpoint_every: {every}), so --resume starts at epoch 1"
    often = "every epoch" if every == 1 else f"every {every} epochs"
    return f"checkpoints are written {often}, so --resume continues from epoch {saved + 1}"


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
