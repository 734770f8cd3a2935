"""``python -m hiercls.schedules plot``: draw a learning-rate schedule with matplotlib.

    python -m hiercls.schedules plot --schedule cosine --epochs 200 --base-lr 0.05 --out lr.png \\
        [--set t0=12 --set t_mult=2] [--steps-per-epoch 100] [--log]

Exit status: 0 written (the file's path is printed), 2 bad arguments or schedule parameters.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hiercls.cli import parse_overrides
from hiercls.registry import SCHEDULES
from hiercls.schedules import validate_params

__all__ = ["main", "plot"]


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items: YAML values (``t0=12``, ``milestones=[60,120,160]``), and comma lists
    (``milestones=60,120,160``) as tuples, the same forms ``python -m hiercls.train --set`` takes."""
    out = parse_overrides(items)
    for key, value in out.items():
        if isinstance(value, str) and "," in value:
            out[key] = tuple(yaml.safe_load(part) for part in value.split(",") if part.strip())
    return out


def plot(
    name: str,
    *,
    epochs: float,
    base_lr: float,
    out: str,
    steps_per_epoch: int = 100,
    log_y: bool = False,
    **params: Any,
) -> Path:
    """Draw schedule ``name`` over ``epochs`` epochs (sampled per iteration) into the image file ``out``.

    ``out`` without a suffix gets ``.png``; missing parent folders are created. Returns the file written.

    Raises:
        ValueError: as :func:`learning_rate`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = validate_params(name, base_lr, epochs, params)
    fn = SCHEDULES.get(name)
    total = int(round(epochs * steps_per_epoch))
    xs = [k / steps_per_epoch for k in range(total + 1)]
    ys = [fn(x, base_lr=float(base_lr), epochs=float(epochs), **full) for x in xs]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(xs, ys, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    ax.set_title(f"{SCHEDULES.canonical(name)} (base_lr={base_lr}{', ' + shown if shown else ''})")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(out) if Path(out).suffix else Path(out).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hiercls.schedules plot --schedule NAME --epochs E --base-lr LR --out FILE [--set k=v]``."""
    parser = argparse.ArgumentParser(prog="python -m hiercls.schedules", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plot", help="draw a learning-rate schedule with matplotlib")
    p.add_argument("--schedule", required=True, help=f"one of: {', '.join(SCHEDULES.names())}")
    p.add_argument("--epochs", type=float, required=True)
    p.add_argument("--base-lr", type=float, required=True)
    p.add_argument("--out", required=True, help="image file (PNG)")
    p.add_argument("--steps-per-epoch", type=int, default=100,
                   help="learning-rate points drawn per epoch (default 100)")
    p.add_argument("--log", action="store_true", help="logarithmic learning-rate axis")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="schedule parameter, e.g. t0=12 or milestones=60,120,160 (repeatable; YAML values)",
    )
    args = parser.parse_args(argv)
    try:
        params = _parse_sets(args.set)
        written = plot(
            args.schedule,
            epochs=args.epochs,
            base_lr=args.base_lr,
            out=args.out,
            steps_per_epoch=args.steps_per_epoch,
            log_y=args.log,
            **params,
        )
    except ValueError as err:
        parser.error(str(err))
    print(written)
    return 0


