"""Training throughput: the original project's input pipeline against hiercls's, same model, same process.

(a) baseline, like the original project: torchvision ImageFolder + DataLoader with PIL transforms
    (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), fp32, NCHW, and
    ``loss.item()`` after every step;
(b) hiercls: the whole split as uint8 on the device, crop/flip/normalise batched on the device
    (``DeviceLoader``), bf16 autocast and channels_last on CUDA, no host sync per step: the engine's
    own training loop (``hiercls.engine.Run.train_epoch``).

Both train a freshly initialised ``--architecture`` with Nesterov SGD for ``--steps`` steps of
``--batch-size`` after ``--warmup`` steps that are not timed. Prints images/s of each and the ratio;
on CUDA also the achieved TFLOP/s of (b) (FLOPs per image, forward + backward, from
``torch.utils.flop_counter``) and its fraction of a bf16 matmul peak measured here.

    python benchmarks/train_throughput.py --data-dir .data/cifar-100 [--architecture resnet18]
        [--batch-size 512] [--steps 50] [--warmup 10] [--device auto] [--workers 4]

Needs the ImageFolder layout (the baseline reads JPEG files). Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from hiercls.config import TrainConfig
from hiercls.data import CIFAR100_MEAN, CIFAR100_STD, load_cifar100
from hiercls.engine import Run, build_run, resolve_device
from hiercls.models import build_model


def baseline_images_per_second(args, device: torch.device) -> float:
    """Original-style pipeline: PIL transforms in DataLoader workers, fp32, loss.item() per step."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
    ])
    dataset = datasets.ImageFolder(os.path.join(args.data_dir, "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )
    torch.manual_seed(0)
    model = build_model(args.architecture).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = iter(loader)
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the original logged every step, a host sync per step
    return args.steps * args.batch_size / (time.perf_counter() - start)


def hiercls_images_per_second(args, data) -> tuple[float, Run]:
    """The engine's own loop over a training split of exactly (warmup + steps) batches."""
    def make(steps: int) -> Run:
        config = TrainConfig(
            data_dir=args.data_dir, architecture=args.architecture, batch_size=args.batch_size,
            max_train_samples=steps * args.batch_size, val_size=5000, device=args.device,
            lr_schedule="constant", epochs=1,
        )
        return build_run(config, data)

    if args.warmup:
        make(args.warmup).train_epoch(0, None)  # warm-up: allocator, cuDNN autotuning, kernels
    run = make(args.steps)
    if run.cuda:
        torch.cuda.synchronize(run.device)
    start = time.perf_counter()
    _, finite = run.train_epoch(0, None)  # ends with a host sync (finite check)
    if run.cuda:
        torch.cuda.synchronize(run.device)
    assert finite
    return args.steps * args.batch_size / (time.perf_counter() - start), run


def flops_per_image(run: Run) -> float:
    """Forward + backward FLOPs of one training image, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    images, labels = next(iter(run.train_loader.epoch(99)))
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.amp):
            loss = F.cross_entropy(run.model(images).float(), labels)
        loss.backward()
    run.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def bf16_matmul_peak(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 dense matmul throughput in TFLOP/s (n x n x n)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-100 in the ImageFolder layout")
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    device = resolve_device(args.device)
    args.device = str(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    print(f"{args.architecture}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} "
          f"warm-up, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.workers} workers")
    data = load_cifar100(args.data_dir, download=False)
    ours, run = hiercls_images_per_second(args, data)
    base = baseline_images_per_second(args, device)
    print(f"(a) original-style pipeline: {base:10.1f} images/s")
    print(f"(b) hiercls:                 {ours:10.1f} images/s")
    print(f"ratio (b)/(a): {ours / base:.2f}x")
    if device.type == "cuda":
        per_image = flops_per_image(run)
        achieved = per_image * ours / 1e12
        peak = bf16_matmul_peak(device)
        print(f"FLOPs per training image (fwd+bwd): {per_image / 1e9:.2f} GFLOP")
        print(f"achieved: {achieved:.1f} TFLOP/s; measured bf16 matmul peak: {peak:.1f} TFLOP/s "
              f"({100 * achieved / peak:.1f}% of it)")


if __name__ == "__main__":
    main()
