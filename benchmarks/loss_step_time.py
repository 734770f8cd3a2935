"""Time per training step of every registered loss relative to cross-entropy, on the same batch.

For each loss, a freshly seeded ``--architecture`` with the loss's number of outputs (classes, the
embedding's dimension, or one per non-root node for yolo-v2) does ``--warmup`` untimed and ``--steps``
timed Nesterov-SGD steps on one fixed batch of ``--batch-size`` real CIFAR-100 training images (forward,
the loss, backward, optimiser step: what ``Run.train_step`` does). The loss alone (forward + backward on
that batch's outputs) is timed too. The losses take turns, ``--rounds`` times, and each figure is the
median over its rounds, so a busy machine slows every loss alike; on CUDA each timing is synchronised.
DeViSE's ``ranking-loss`` runs on Barz & Denzler's embeddings here (its cost does not depend on where the
embedding comes from, only on its dimension).

    python benchmarks/loss_step_time.py [--data-dir .data/cifar-100] [--hierarchy cifar100-wordnet]
        [--architecture plainnet] [--batch-size 128] [--steps 10] [--warmup 3] [--rounds 3] [--device auto]

Prints one row per loss: ms per step, the ratio to cross-entropy, and the loss's own ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hiercls.data import find_cifar100, load_cifar100
from hiercls.data.loader import DeviceLoader
from hiercls.engine import resolve_device
from hiercls.hierarchy import load_cifar100_hierarchy
from hiercls.losses import LOSSES, build_loss
from hiercls.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--hierarchy", default="cifar100-wordnet")
    parser.add_argument("--architecture", default="plainnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data_dir = args.data_dir or str(find_cifar100().path)
    data = load_cifar100(data_dir, download=False)
    loader = DeviceLoader(data.train_images, data.train_labels, batch_size=args.batch_size, train=True,
                          seed=0, device=device)
    images, labels = next(iter(loader.epoch(0)))
    hierarchy = load_cifar100_hierarchy(args.hierarchy)

    setups = {}
    for name in LOSSES.names():
        loss = build_loss(name, hierarchy).to(device)
        torch.manual_seed(0)
        model = build_model(args.architecture, num_classes=loss.num_outputs).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

        def step(model=model, loss=loss, opt=opt) -> None:
            out = model(images)
            value = loss(out.float(), labels)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()

        outputs = torch.randn(args.batch_size, loss.num_outputs, device=device, requires_grad=True)

        def loss_only(loss=loss, outputs=outputs) -> None:
            outputs.grad = None
            loss(outputs, labels).backward()

        setups[name] = (step, loss_only)

    step_ms: dict[str, list[float]] = {n: [] for n in setups}
    loss_ms: dict[str, list[float]] = {n: [] for n in setups}
    for _ in range(args.rounds):
        for name, (step, loss_only) in setups.items():
            step_ms[name].append(1e3 * _time(step, args.steps, args.warmup, device))
            loss_ms[name].append(1e3 * _time(loss_only, 5 * args.steps, args.warmup, device))

    base = statistics.median(step_ms["cross-entropy"])
    print(f"{args.architecture}, {args.hierarchy}, batch {args.batch_size}, {device.type}, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'loss':28s} {'outputs':>7s} {'ms/step':>9s} {'vs CE':>7s} {'loss ms':>8s}")
    for name in setups:
        ms = statistics.median(step_ms[name])
        outputs = build_loss(name, hierarchy).num_outputs
        print(f"{name:28s} {outputs:7d} {ms:9.1f} {ms / base:7.3f} {statistics.median(loss_ms[name]):8.3f}")


if __name__ == "__main__":
    main()
