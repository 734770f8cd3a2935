"""Score a saved model without retraining: ``python -m hiercls.evaluate RUN_DIR_OR_CHECKPOINT``.

``RUN_DIR`` is a plain run's output folder (its ``config.yaml`` and ``final_model.pth``, or with
``--weights best`` its ``checkpoints/best.pth``); a checkpoint file (``last.pth``/``best.pth``) carries
its own config. The split is rebuilt from the config's seed and sizes, so ``--split val`` scores the
exact validation images of the run. Prints the metrics as JSON (fractions; see hiercls.metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hiercls.config import ConfigError, TrainConfig, load_config

__all__ = ["evaluate_saved", "main"]


def _locate(target: Path, weights: str) -> tuple[TrainConfig, dict[str, Any]]:
    if target.is_dir():
        config_path = target / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{str(target)!r} is not a run folder: it has no config.yaml")
        config = load_config(config_path)
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
        state = torch.load(path, map_location="cpu", weights_only=True)
        return config, state["model"] if "model" in state else state
    if target.is_file():
        state = torch.load(target, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "config" not in state or "model" not in state:
            raise ValueError(f"{str(target)!r} is not a hiercls checkpoint (no 'config' and 'model' entries)")
        return TrainConfig.from_dict(state["config"]), state["model"]
    raise FileNotFoundError(f"{str(target)!r} is neither a run folder nor a checkpoint file")


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
        ``loss``, ``num_samples``, ``num_mistakes``) plus ``split`` and ``source``.

    Raises:
        FileNotFoundError: missing run folder, config or weights.
        ValueError: unknown split or weights, a run without a validation split asked for ``val``.
    """
    from hiercls.data import DeviceLoader, load_cifar100, make_splits
    from hiercls.engine import TEST_KS, evaluate, resolve_device
    from hiercls.hierarchy import load_cifar100_hierarchy
    from hiercls.losses import build_loss
    from hiercls.models import build_model

    if split not in ("val", "test"):
        raise ValueError(f"split {split!r} is unknown; valid: val, test")
    config, state = _locate(Path(target), weights)
    changes = {k: v for k, v in (("data_dir", data_dir), ("device", device)) if v is not None}
    config = config.replace(**changes) if changes else config
    run_device = resolve_device(config.device)
    hierarchy = load_cifar100_hierarchy(config.hierarchy)
    splits = make_splits(
        load_cifar100(config.data_dir, download=config.download),
        val_size=config.val_size, seed=config.seed, max_train_samples=config.max_train_samples,
    )
    chosen = splits.val if split == "val" else splits.test
    if chosen is None:
        raise ValueError("this run has no validation split (val_size 0); use --split test")
    model = build_model(config.architecture, num_classes=hierarchy.num_classes)
    model.load_state_dict(state)
    model.to(run_device)
    cuda = run_device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader = DeviceLoader(chosen, batch_size=config.eval_batch_size, train=False, device=run_device,
                          channels_last=cuda)
    criterion = build_loss(config.loss, hierarchy, **config.loss_kwargs()).to(run_device)
    criterion.set_epoch(float(config.epochs))
    ks = TEST_KS if split == "test" else (1, 5, 10, 20)
    metrics = evaluate(model, loader, hierarchy, criterion, ks=ks, amp=config.amp and cuda)
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
    except (ConfigError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
