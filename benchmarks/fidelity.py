"""Accuracy against training time: speednet (the ``speedrun`` recipe) beside plainnet and ResNet-18.

    python benchmarks/fidelity.py                       # the full CPU figures: 10 minutes a model
    python benchmarks/fidelity.py --quick               # CI: 1,000 images, 8 s a model, about a minute
    python benchmarks/fidelity.py --device cuda         # a GPU: compiled, bf16; img/s, TFLOP/s, time to 70 %

Every model trains on the same stratified training subset and is scored on the same held-out
validation split (``val_size`` images of the official training set, seed 0), with the engine's own
``Run.train_step`` and ``Run.evaluate`` (so speednet's scores use its recipe's flip TTA). Each model gets
the same budget of *training* seconds (evaluation time is not counted, and is printed apart), and a
learning-rate schedule that ends within it:

* ``speednet``: ``recipes/speedrun.yaml`` as shipped (its 6 epochs; ``--speedrun-set epochs=16`` and the like
  change any key, e.g. for a GPU's longer run);
* ``plainnet`` and ``resnet18``: their own defaults (batch 128, lr 0.05, Nesterov SGD, weight decay 5e-4,
  random crop and flip) with the one-cycle schedule over as many epochs as their measured throughput fits
  into the budget (at least 1: a model that cannot finish one epoch stops mid-schedule at the budget), and
  ``channels_last`` as speednet has it (about 1.3x on this CPU, so the comparison is of models, not of
  memory layouts).

The validation split is scored every ``max(budget / 20, 4 x the last evaluation's seconds)`` of training
(at most a fifth of the time goes to evaluation) and at the end. For each accuracy threshold the report
gives the training seconds of the first evaluation at or above it (an upper bound: the resolution is the
evaluation interval) and each model's time against speednet's. The issue's CPU goal is checked as
``speednet's time to plainnet's final accuracy`` against plainnet's budget (goal: 3x or more).

On CUDA each model is compiled (``torch.compile``) and trains under bf16 autocast (the recipe's
``amp: auto``) for :data:`GPU_BUDGET` seconds, speednet with :data:`GPU_SPEEDRUN`; the report adds
img/s, the FLOPs of one training step (``torch.utils.flop_counter``) and the achieved TFLOP/s, and 70 %
joins the thresholds (the goal: 70 % in 25 s or less).

Writes ``--report`` (JSON; default ``fidelity_report.json`` in the working folder; written once before
the first model trains and again after each) and prints a table. ``--quick`` (CI) judges no goal: its
accuracies are near chance. Exit status: 0 done, 2 bad arguments, data not found, or a report that cannot
be written.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hiercls.cli import parse_overrides  # noqa: E402
from hiercls.config import ConfigError, TrainConfig, load_config  # noqa: E402
from hiercls.data import DataNotFoundError, load_cifar100, resolve_data_dir  # noqa: E402
from hiercls.engine import Run, build_run  # noqa: E402

ARCHITECTURES = ("speednet", "plainnet", "resnet18")
THRESHOLDS = (0.10, 0.20, 0.30, 0.40, 0.50, 0.60)
GPU_THRESHOLDS = (0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70)
QUICK = {"budget": 8.0, "train_samples": 1000, "val_size": 200}
GPU_BUDGET = 40.0
"""Training seconds a model on CUDA: the three models with compilation and evaluation in under 4 minutes."""
GPU_SPEEDRUN = ("epochs=16", "width=128")
"""speednet's recipe on CUDA unless ``--speedrun-set`` is given: a longer, wider run aimed at 70 % (the
CIFAR-100 speedruns' 13 epochs); a first setting, not yet measured on a GPU."""


def model_config(arch: str, args: argparse.Namespace, epochs: int) -> TrainConfig:
    """The config ``arch`` trains with here (see the module docstring)."""
    common = {
        "data_dir": args.data_dir, "val_size": args.val_size, "max_train_samples": args.train_samples,
        "evaluate_test": False, "download": False, "device": args.device, "seed": args.seed,
        "num_threads": args.threads, "compile": args.device.startswith("cuda"), "channels_last": "true",
    }
    if arch == "speednet":
        overrides = {**common}
        if args.quick:
            overrides.update(width=16, batch_size=64)
        return load_config("speedrun", {**overrides, **parse_overrides(args.speedrun_set)})
    quick = {"batch_size": 32} if args.quick else {}
    return TrainConfig.from_dict({**common, **quick, "architecture": arch, "lr_schedule": "onecycle",
                                  "epochs": epochs})


def planned_epochs(arch: str, args: argparse.Namespace, data: Any) -> tuple[int, float]:
    """Epochs of ``arch``'s schedule: the recipe's for speednet, else what its training throughput (a few
    measured steps) fits into the budget, at least 1. Returns (epochs, measured images/s; NaN for
    speednet)."""
    if arch == "speednet":
        return model_config(arch, args, 1).epochs, math.nan
    run = build_run(model_config(arch, args, 1), data)
    batches = run.train_loader.epoch(0)
    images, labels = next(batches)
    run.train_step(images, labels)  # warm-up (allocations, compilation)
    sync(run)
    steps, seen, t0 = 0, 0, time.perf_counter()
    for images, labels in batches:
        run.train_step(images, labels)
        steps, seen = steps + 1, seen + labels.shape[0]
        if steps >= 3 or time.perf_counter() - t0 > args.budget / 10:
            break
    sync(run)
    ips = seen / max(time.perf_counter() - t0, 1e-9)
    return max(1, round(args.budget * ips / run.train_loader.num_samples)), ips


def sync(run: Run) -> None:
    if run.cuda:
        torch.cuda.synchronize(run.device)


def step_flops(run: Run) -> int | None:
    """FLOPs of one training step (forward and backward) at the run's batch size, counted by
    ``torch.utils.flop_counter`` on the uncompiled model; None when it cannot count them."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        model = copy.deepcopy(run.model)  # the run's weights and statistics stay as they are
        images, labels = next(iter(run.train_loader.epoch(0)))
        with FlopCounterMode(display=False) as counter:
            with run.autocast():
                outputs = model(images)
            run.criterion(outputs.float(), labels).backward()
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a figure we can do without
        return None


def train_for_budget(arch: str, args: argparse.Namespace, data: Any, thresholds: tuple[float, ...]) -> dict:
    """Train ``arch`` for ``args.budget`` training seconds (or its schedule's end), scoring the validation
    split on the way; the curve, the time to each threshold and the throughput."""
    epochs, planning_ips = planned_epochs(arch, args, data)
    config = model_config(arch, args, epochs)
    run = build_run(config, data)
    warm = run.warm_up()
    flops = step_flops(run) if run.cuda else None
    curve: list[dict[str, float]] = []
    train_s = eval_s = 0.0
    seen = 0
    interval = args.budget / 20
    next_eval = interval

    def score(epoch_progress: float) -> None:
        nonlocal eval_s, interval
        t0 = time.perf_counter()
        metrics = run.evaluate(run.val_loader)
        sync(run)
        spent = time.perf_counter() - t0
        eval_s += spent
        interval = max(args.budget / 20, 4 * spent)
        curve.append({"train_seconds": round(train_s, 2), "epochs": round(epoch_progress, 3),
                      "images": seen, "val_top1": 1.0 - metrics["top1_error"],
                      "val_mistake_severity": metrics["mistake_severity"], "val_hdist@1": metrics["hdist@1"]})
        print(f"  {arch:9s} {train_s:7.1f} s  epoch {epoch_progress:5.2f}  val top-1 "
              f"{100 * curve[-1]['val_top1']:5.1f} %", flush=True)

    steps_per_epoch = len(run.train_loader)
    done = False
    for epoch in range(config.epochs):
        run.set_values(config.values_at(epoch + 1))
        run.model.train()
        t0 = time.perf_counter()
        for step, (images, labels) in enumerate(run.train_loader.epoch(epoch), start=1):
            run.train_step(images, labels)
            seen += labels.shape[0]
            if not run.cuda or step % 4 == 0 or step == steps_per_epoch:  # a CUDA sync every 4 steps
                sync(run)
                now = time.perf_counter()
                train_s += now - t0
                t0 = now
                progress = epoch + step / steps_per_epoch
                if train_s >= args.budget:
                    done = True
                    break
                if train_s >= next_eval and not (epoch + 1 == config.epochs and step == steps_per_epoch):
                    score(progress)
                    next_eval = train_s + interval
                    run.model.train()
                    t0 = time.perf_counter()
        if done:
            break
    score(epoch + step / steps_per_epoch)
    reached = {f"{round(100 * t)}%": next((p["train_seconds"] for p in curve if p["val_top1"] >= t), None)
               for t in thresholds}
    out = {
        "architecture": arch, "config": {k: v for k, v in config.to_dict().items() if v is not None},
        "parameters": sum(p.numel() for p in run.model.parameters()), "schedule_epochs": config.epochs,
        "train_seconds": round(train_s, 2), "eval_seconds": round(eval_s, 2),
        "compile_seconds": round(warm, 2),
        "images_per_second": seen / train_s if train_s > 0 else math.nan,
        "planning_images_per_second": planning_ips, "final_val_top1": curve[-1]["val_top1"],
        "seconds_to": reached, "curve": curve,
    }
    if flops is not None:
        out["step_flops"] = flops
        out["tflops_per_second"] = flops / config.batch_size * out["images_per_second"] / 1e12
    return out


def time_to(entry: dict, accuracy: float) -> float | None:
    """Training seconds of ``entry``'s first evaluation at or above ``accuracy`` (a fraction), else None."""
    return next((p["train_seconds"] for p in entry["curve"] if p["val_top1"] >= accuracy), None)


def summary(models: list[dict], thresholds: tuple[float, ...], budget: float, *, judged: bool = True
            ) -> dict[str, Any]:
    """Ratios against speednet at every threshold, and the issue's goals; ``judged`` False (``--quick``:
    near-chance accuracies, seconds of training) leaves every ``met`` None."""
    by = {m["architecture"]: m for m in models}
    out: dict[str, Any] = {"ratio_to_speednet": {}}
    speed = by.get("speednet")
    if speed is None:
        return out
    for m in models:
        if m is speed:
            continue
        ratios = {}
        for t in thresholds:
            mine, theirs = time_to(m, t), time_to(speed, t)
            ratios[f"{round(100 * t)}%"] = (mine / theirs) if mine is not None and theirs else None
        out["ratio_to_speednet"][m["architecture"]] = ratios
    plain = by.get("plainnet")
    if plain is not None:
        target = plain["final_val_top1"]
        t_speed = time_to(speed, target)
        out["plainnet_goal"] = {
            "plainnet_final_val_top1": target, "plainnet_train_seconds": plain["train_seconds"],
            "speednet_seconds_to_it": t_speed,
            "speedup": plain["train_seconds"] / t_speed if t_speed else None,
            "goal": "speednet reaches plainnet's final accuracy in a third of plainnet's time or less",
        }
        met = bool(t_speed and plain["train_seconds"] / t_speed >= 3)
        out["plainnet_goal"]["met"] = met if judged else None
    forty = time_to(speed, 0.40)
    out["speednet_40_percent"] = {"seconds": forty, "goal_seconds": 600,
                                  "met": (forty is not None and forty <= 600) if judged else None}
    if speed.get("tflops_per_second") is not None:
        seventy = time_to(speed, 0.70)
        out["speednet_70_percent"] = {"seconds": seventy, "goal_seconds": 25,
                                      "met": (seventy is not None and seventy <= 25) if judged else None}
    out["budget_seconds"] = budget
    return out


def table(report: dict) -> str:
    thresholds = report["thresholds"]
    head = ["model", "params", "img/s", "epochs", "final top-1"]
    head += [f"t({round(100 * t)}%)" for t in thresholds]
    rows = [head]
    for m in report["models"]:
        rows.append([m["architecture"], f"{m['parameters'] / 1e6:.2f}M", f"{m['images_per_second']:.0f}",
                     f"{m['curve'][-1]['epochs']:.2f}/{m['schedule_epochs']}",
                     f"{100 * m['final_val_top1']:.1f} %"]
                    + [("-" if time_to(m, t) is None else f"{time_to(m, t):.0f} s") for t in thresholds])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for arch, ratios in report["summary"].get("ratio_to_speednet", {}).items():
        shown = ", ".join(f"{k}: {v:.1f}x" for k, v in ratios.items() if v is not None)
        shown = shown or "none reached by both"
        lines.append(f"{arch} time / speednet time: {shown}")
    goal = report["summary"].get("plainnet_goal")
    if goal:
        speedup = "-" if goal["speedup"] is None else f"{goal['speedup']:.1f}x"
        verdict = {True: "met", False: "not met", None: "not judged in --quick"}[goal["met"]]
        lines.append(f"plainnet's final {100 * goal['plainnet_final_val_top1']:.1f} % after "
                     f"{goal['plainnet_train_seconds']:.0f} s: speednet {goal['speednet_seconds_to_it']} s, "
                     f"{speedup} (goal 3x: {verdict})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/fidelity.py", description=__doc__.split("\n")[0])
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES),
                        help=f"comma-separated, from {', '.join(ARCHITECTURES)} (default: all)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds a model (default 600 on the CPU, 40 on CUDA)")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="stratified training subset (default: the whole training split; --quick: 1000)")
    parser.add_argument("--val-size", type=int, default=None,
                        help="held-out validation images (default 5000; --quick: 200)")
    parser.add_argument("--speedrun-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of speednet's recipe, e.g. epochs=16 or width=128 (repeatable)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-100 folder (default: as training finds it)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="CI: 1,000 training and 200 validation images, 8 s a model (unless given), "
                             "small batches, speednet width 16; no goal is judged")
    parser.add_argument("--report", default="fidelity_report.json",
                        help="JSON report path, written before the first model trains and after each "
                             "(default: fidelity_report.json in the working folder)")
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.architectures.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHITECTURES]
    if bad or not archs or len(set(archs)) < len(archs):
        print(f"error: --architectures {args.architectures!r}: valid: {', '.join(ARCHITECTURES)}",
              file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available here", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    budget_given = args.budget
    if args.budget is None:
        args.budget = GPU_BUDGET if cuda else 600.0
    if cuda and not args.speedrun_set:
        args.speedrun_set = list(GPU_SPEEDRUN)
    if args.quick:
        args.budget = QUICK["budget"] if budget_given is None else budget_given
        args.train_samples = args.train_samples or QUICK["train_samples"]
        args.val_size = QUICK["val_size"] if args.val_size is None else args.val_size
    if args.val_size is None:
        args.val_size = 5000
    bad_set = [item for item in args.speedrun_set if "=" not in item]
    if bad_set:
        print(f"error: --speedrun-set {bad_set[0]!r}: expected KEY=VALUE (a key of the speedrun recipe)",
              file=sys.stderr)
        return 2
    if args.budget <= 0:
        print(f"error: --budget {args.budget}: valid: a positive number of seconds", file=sys.stderr)
        return 2
    try:
        args.data_dir = str(resolve_data_dir(args.data_dir, download=False))
        data = load_cifar100(args.data_dir, download=False)
        for arch in archs:
            model_config(arch, args, 1).validate()
    except (DataNotFoundError, ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = GPU_THRESHOLDS if args.device.startswith("cuda") else THRESHOLDS
    report: dict[str, Any] = {
        "command": " ".join(["python benchmarks/fidelity.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
        "budget_seconds": args.budget, "thresholds": list(thresholds), "models": [], "summary": {},
    }
    path = Path(args.report)
    try:  # a report that cannot be written is refused before any training, not after the first model
        path.write_text(json.dumps(report, indent=2))
    except OSError as err:
        print(f"error: --report {str(path)!r} cannot be written: {err.strerror or err}", file=sys.stderr)
        return 2
    report["quick"] = bool(args.quick)
    for arch in archs:
        print(f"{arch}: training for up to {args.budget:.0f} s", flush=True)
        report["models"].append(train_for_budget(arch, args, data, thresholds))
        report["summary"] = summary(report["models"], thresholds, args.budget, judged=not args.quick)
        path.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
