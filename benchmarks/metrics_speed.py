"""Speed of hiercls.metrics.compute_metrics against a per-sample Python loop like the original project's.

The baseline follows the structure of the making-better-mistakes evaluation (run_xent.py): batch by
batch, rank the classes with torch, then for every sample and each of its 100 ranked classes look the
distance up in a symmetric {(class_a, class_b): distance} dict (key sorted on every look-up), and
aggregate the table with numpy (hdist, hdist_top, hdist_mistakes, hierarchical precision and mAP at
k in 1, 5, 10, 20, 100). compute_metrics gets the same k and also computes the CRM variants, coarse-free.
The two must agree on hdist@k, hdist_top@k and the mistake severity before any time is reported.

    python benchmarks/metrics_speed.py [--samples 10000] [--batch-size 256] [--repeats 3] [--device cpu]

Measured figures are kept in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hiercls.hierarchy import load_hierarchy
from hiercls.metrics import compute_metrics

KS = (1, 5, 10, 20, 100)


class SymmetricDistances:
    """Distance look-up by class-name pair in either order, as the original project's dict does."""

    def __init__(self, pairs: dict[tuple[str, str], int]) -> None:
        self.pairs = pairs

    def __getitem__(self, key: tuple[str, str]) -> int:
        return self.pairs[tuple(sorted(key))]


def python_loop_metrics(
    logits: torch.Tensor, targets: torch.Tensor, hierarchy, batch_size: int, as_lists: bool = False
):
    """Original-style evaluation: a Python double loop over samples and ranks, per batch.

    With ``as_lists=False`` the inner loop indexes the target and top-k tensors element by element, as
    run_xent.py does; ``as_lists=True`` converts them to Python lists first (the fastest a per-sample
    Python loop gets), a stricter baseline.
    """
    lookup = SymmetricDistances(hierarchy.distance_dict())
    classes = hierarchy.classes
    max_dist = hierarchy.max_distance
    kmax = max(KS)
    best = np.sort(hierarchy.distances.numpy(), axis=1)
    best = 1 - best / max_dist
    sums = {f"{m}@{k}": 0.0 for k in KS for m in ("hdist", "hdist_top", "hdist_mistakes", "hprecision")}
    severity, mistakes = 0.0, 0
    for start in range(0, len(targets), batch_size):
        batch_targets = targets[start : start + batch_size]
        ranked = logits[start : start + batch_size].topk(kmax, dim=1).indices
        if as_lists:
            batch_targets, ranked = batch_targets.tolist(), ranked.tolist()
        table = np.empty([len(batch_targets), kmax])
        for i in range(len(batch_targets)):
            for j in range(kmax):
                table[i, j] = lookup[(classes[ranked[i][j]], classes[batch_targets[i]])]
        batch_targets = list(map(int, batch_targets))
        wrong = table[:, 0] != 0
        mistakes += int(wrong.sum())
        severity += float(table[wrong, 0].sum())
        sims = 1 - table / max_dist
        best_rows = best[batch_targets]
        for k in KS:
            sums[f"hdist@{k}"] += float(table[:, :k].mean(axis=1).sum())
            sums[f"hdist_top@{k}"] += float(sum(np.min(table[b, :k]) for b in range(len(batch_targets))))
            sums[f"hdist_mistakes@{k}"] += float(table[wrong, :k].mean(axis=1).sum())
            sums[f"hprecision@{k}"] += float((sims[:, :k].sum(axis=1) / best_rows[:, :k].sum(axis=1)).sum())
    out = {key: value / (mistakes if "mistakes" in key else len(targets)) for key, value in sums.items()}
    out["mistake_severity"] = severity / max(mistakes, 1)
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hierarchy", default="cifar100-wordnet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    hierarchy = load_hierarchy(args.hierarchy)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.samples, hierarchy.num_classes, generator=gen)
    targets = torch.randint(0, hierarchy.num_classes, (args.samples,), generator=gen)

    ours = compute_metrics(logits.to(args.device), targets.to(args.device), hierarchy, KS)
    for as_lists in (False, True):
        baseline = python_loop_metrics(logits, targets, hierarchy, args.batch_size, as_lists)
        for key, value in baseline.items():
            if abs(ours[key] - value) > 1e-9:
                raise SystemExit(f"results disagree on {key}: {ours[key]} vs {value}")

    def vectorised():
        compute_metrics(logits.to(args.device), targets.to(args.device), hierarchy, KS)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    t_ours = best_of(vectorised, args.repeats)
    t_loop = best_of(lambda: python_loop_metrics(logits, targets, hierarchy, args.batch_size), args.repeats)
    t_lists = best_of(
        lambda: python_loop_metrics(logits, targets, hierarchy, args.batch_size, as_lists=True), args.repeats
    )
    print(f"{args.samples} x {hierarchy.num_classes} logits, hierarchy {args.hierarchy}, "
          f"device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"k = {KS}")
    print(f"python loop, tensor indexing (as run_xent.py):    {t_loop:.3f} s")
    print(f"python loop over lists (stricter baseline):       {t_lists:.3f} s")
    print(f"compute_metrics (same metrics plus mAHP and CRM): {t_ours:.4f} s")
    print(f"speed-up vs the original-style loop: {t_loop / t_ours:.0f}x")
    print(f"speed-up vs the list loop:           {t_lists / t_ours:.0f}x")


if __name__ == "__main__":
    main()
