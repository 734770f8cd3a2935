"""Score a saved model without retraining: ``python -m hiercls.evaluate RUN_DIR_OR_CHECKPOINT``.

``RUN_DIR`` is a plain run's output folder (its ``config.yaml`` and ``final_model.pth``, or with
``--weights best`` its ``checkpoints/best.pth``); a checkpoint file (``last.pth``/``best.pth``) carries
its own config. The split is rebuilt from the config's seed and sizes, so ``--split val`` scores the
exact validation images of the run. Prints the metrics as JSON (fractions; see hiercls.metrics).

Weights are read with ``torch.load(weights_only=True)``: a file holding anything but tensors and plain
values is refused, never executed. Exit status: 0 done, 2 bad input (missing or unreadable file, not a
hiercls checkpoint, data that is not CIFAR-100).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hiercls.config import ConfigError, TrainConfig, read_saved_config
from hiercls.engine import CheckpointError, build_run, evaluate, load_checkpoint
from hiercls.metrics import TEST_KS, VAL_KS

__all__ = ["evaluate_saved", "main"]


def _locate(target: Path, weights: str) -> tuple[TrainConfig, dict[str, Any], int | None]:
    """The config, model weights and epoch (None when the file does not say: ``final_model.pth``) of a
    run folder or checkpoint file, read with ``weights_only=True`` (nothing in the file is executed).

    Raises:
        FileNotFoundError: no run folder, config or weights file.
        ValueError: unknown ``weights``.
        CheckpointError: a weights file that is corrupt, truncated, not a hiercls checkpoint, or holds
            Python objects other than tensors and plain values.
    """
    if target.is_dir():
        config_path = target / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{str(target)!r} is not a run folder: it has no config.yaml")
        config = read_saved_config(config_path)
        if weights == "best":
            path = target / "checkpoints" / "best.pth"
        elif weights == "last":
            path = target / "final_model.pth"
        else:
            raise ValueError(f"weights {weights!r} is unknown; valid: last, best")
        if not path.is_file():
            hint = (
                "the run has not finished: score its last completed epoch with "
                f"{str(target / 'checkpoints' / 'last.pth')!r}, or its best one with --weights best"
                if weights == "last"
                else "no epoch has finished yet"
            )
            raise FileNotFoundError(f"{str(path)!r} does not exist ({hint})")
        state = load_checkpoint(path, require=())
        model = state["model"] if "model" in state else state
        if not all(isinstance(v, torch.Tensor) for v in model.values()):
            raise CheckpointError(f"{str(path)!r} holds no model weights (a mapping of tensors)")
        return config, model, _epoch_of(state)
    if target.is_file():
        state = load_checkpoint(target, require=("config", "model"))
        try:
            config = TrainConfig.from_dict(state["config"])
        except (ConfigError, TypeError, ValueError) as err:
            raise CheckpointError(f"{str(target)!r} holds an invalid config: {err}") from err
        # a last.pth of a run that averages its weights: the average is what the run evaluates
        model = state["ema"]["weights"] if isinstance(state.get("ema"), dict) else state["model"]
        return config, model, _epoch_of(state)
    raise FileNotFoundError(f"{str(target)!r} is neither a run folder nor a checkpoint file")


def _epoch_of(state: dict[str, Any]) -> int | None:
    """The completed epochs a checkpoint records (``last.pth``, ``best.pth``), else None."""
    epoch = state.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1 else None


def evaluate_saved(
    target: str | Path,
    *,
    split: str = "test",
    weights: str = "last",
    data_dir: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Metrics of a saved model on ``split``.

    Args:
        target: a run folder or a checkpoint file.
        split: ``val`` (the run's held-out images) or ``test`` (the official test set).
        weights: for a run folder, ``last`` (``final_model.pth``) or ``best`` (best val epoch).
        data_dir: overrides the config's data folder.
        device: overrides the config's device.

    Returns:
        :func:`hiercls.engine.evaluate`'s dict (``top1_error``, ``mistake_severity``, ``hdist@k`` ...,
        ``loss``, ``num_samples``, ``num_mistakes``) plus ``split`` and ``source``. ``loss`` uses the
        loss values in effect in the weights' epoch (the checkpoint's, else the last;
        :meth:`~hiercls.config.TrainConfig.values_at`).

    Raises:
        FileNotFoundError: missing run folder, config or weights.
        ValueError: unknown split or weights, a run without a validation split asked for ``val``, data
            that is not the complete CIFAR-100.
        CheckpointError: an unreadable, foreign or unsafe weights file (never executed).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split {split!r} is unknown; valid: val, test")
    config, state, epoch = _locate(Path(target), weights)
    changes = {k: v for k, v in (("data_dir", data_dir), ("device", device)) if v is not None}
    config = config.replace(**changes) if changes else config
    if split == "val" and config.val_size == 0:
        raise ValueError("this run has no validation split (val_size 0); use --split test")
    run = build_run(config.replace(compile=False))  # the run's own splits, model and loss
    run.model.load_state_dict(state)
    loader = run.val_loader if split == "val" else run.test_loader()
    run.criterion.set_epoch(float(config.epochs))
    run.set_values(config.values_at(min(epoch or config.epochs, config.epochs)))  # the loss of that epoch
    ks = TEST_KS if split == "test" else VAL_KS
    # fp32 outputs and flip_tta, as in training
    metrics = evaluate(run.model, loader, run.hierarchy, run.criterion, ks=ks, tta=config.flip_tta)
    return {**metrics, "split": split, "source": str(target)}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints JSON, returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m hiercls.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="run folder or checkpoint file (.pth)")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="default: test")
    parser.add_argument("--weights", choices=("last", "best"), default="last",
                        help="for a run folder: final_model.pth (last, the default) or checkpoints/best.pth")
    parser.add_argument("--data-dir", "--data_path", dest="data_dir", help="override the run's data folder")
    parser.add_argument("--device", help="override the run's device")
    args = parser.parse_args(argv)
    try:
        result = evaluate_saved(args.target, split=args.split, weights=args.weights, data_dir=args.data_dir,
                                device=args.device)
    except (ConfigError, FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
