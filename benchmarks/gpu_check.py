"""One-shot check of the accelerated path on a GPU (and, in a quick mode, on the CPU in CI).

    python benchmarks/gpu_check.py                        # on a CUDA machine: at most ~4 minutes
    python benchmarks/gpu_check.py --quick --device cpu   # CI: plainnet and a narrow speednet, eager, 2 steps

Writes a JSON report (``--report``, default ``gpu_check_report.json``; rewritten after every section, so a
run cut short still leaves what it measured) and prints a table. Every section runs in its own
``try``: an error is recorded as ``{"error": "Type: message"}`` and the next section runs. After
``--budget-seconds`` (default 220) the remaining sections are recorded as ``{"skipped": "time budget"}``.
Data: synthetic CIFAR-shaped uint8 images (seeded; labels ``i % 100``), or the real set with
``--data-dir``. Sections, most important first:

``environment``
    torch, CUDA and cuDNN versions, the device, its memory, CPU count.
``matmul_peak``
    measured bf16 matmul TFLOP/s (8192^3 on CUDA after a warm-up, timed with synchronisation; 256^3 on
    the CPU): the denominator of every "fraction of peak".
``throughput``
    training images/s of ``run.train_step`` (the engine's own step: on-device augmentation, bf16
    autocast and channels_last at ``auto``) per (architecture, eager/compiled, batch); achieved TFLOP/s
    = FLOPs of one forward+backward (``torch.utils.flop_counter``) x steps / seconds, and its fraction
    of the matmul peak; ``compile_seconds`` apart; ``kernels_per_step`` (CUDA kernels, memcpy and
    memset launched in one steady-state step, from ``torch.profiler``; on the CPU the aten ops
    dispatched); ``syncs_per_step`` (CUDA only: synchronising calls reported by
    ``torch.cuda.set_sync_debug_mode``). The first entries (ResNet-18 at batch 512 compiled; speednet at
    batch 512 compiled and eager; ResNet-18 at batch 512 eager and batch 128 eager) run before the other
    sections; the rest (plainnet, WRN-28-10) after them. speednet's entries are built from the speedrun
    recipe (``recipes/speedrun.yaml``: width 64, depth 2, one-cycle Nesterov SGD, crop padding 2,
    alternating flip, whitened and frozen stem, channels_last on; bf16 autocast at ``auto``, so on
    CUDA), with 10 warm-up and 40 timed steps.
    Target: ResNet-18, batch 512, compiled, at 35 % or more of the bf16 matmul peak.
``packing``
    one against four training processes on one GPU (ResNet-18, batch 128, eager; each packed process
    caps its memory at 1/4 with ``torch.cuda.set_per_process_memory_fraction``), started together
    behind a file barrier: aggregate images/s of each count and their ratio, peak memory of each
    process. Target: four at 1.6x or more the aggregate of one. Quick mode: plainnet, 1 vs 2 processes
    on one CPU thread each.
``speednet_packing``
    the same for speednet as the search's trials train it: the speedrun recipe, batch 512, eager, 10
    warm-up and 60 timed steps per process on 50,000 synthetic images (45,000 training, 5,000
    validation). The single process then times one validation pass (after an untimed one) as a trial
    validates: the recipe's flip TTA (two forward passes per image, fp32 as ``evaluate`` runs) and the
    metrics; ``eval.images_per_second`` counts validation images, each with its mirror image.
    ``projection``: trials finished per GPU-hour by the four packed processes at the fidelity of the
    shipped ``speedrun`` space (its ``epochs``, 6, on 50,000 less its ``val_size`` = 45,000 images) and
    at 4 epochs: ``trials_per_gpu_hour = 3600 * aggregate images/s of four / (epochs * training
    images)``; ``trials_per_gpu_hour_with_eval = 3600 / (epochs * (training images / aggregate images/s
    + validation images / eval images/s))``: validation counted as if it had the GPU to itself. Neither
    counts a trial's start-up (process, data, whitening, first steps) nor the search's own overhead.
    Target: 1,000 or more trials per GPU-hour at 4 epochs, validation included. Quick mode: width 16,
    batch 32, 2 steps, 1 vs 2 processes on one CPU thread each (2,000 images, 200 for validation), the
    projection then of the two processes.
``bf16_vs_fp32``
    one batch, the same weights: loss with and without bf16 autocast (relative difference), cosine
    similarity and relative norm difference of the flattened gradients; and that ``evaluate`` gives the
    same metrics inside an autocast block as outside (its logits are fp32, dtype recorded).
``determinism``
    ops that ``torch.use_deterministic_algorithms(True)`` refuses on CUDA, found by
    ``hiercls.numerics.refused_ops`` on the CPU for every architecture (forward+backward), every
    loss and the metrics; on CUDA also the "does not have a deterministic implementation" warnings of
    one training step per architecture, and whether two identical 3-step runs give bit-equal weights
    with ``deterministic`` on and off.
``resume``
    a tiny ``fit`` (plainnet, 200 training images, batch 100, 2 epochs) against the same run
    interrupted during epoch 2 and resumed: records equal (timings aside) and final weights bit-equal,
    with ``deterministic`` on (and off, on CUDA).

``targets``
    the three targets above with the measured figure and ``met`` (true/false; null when not measured, as
    in the quick mode).

Exit status: 0 (also when a section failed or a target was missed: see the report), 2 bad arguments
(also the full mode without CUDA).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hiercls.config import TrainConfig, load_config  # noqa: E402
from hiercls.data import Cifar100, DeviceLoader, load_cifar100  # noqa: E402
from hiercls.engine import Run, build_run, evaluate, fit  # noqa: E402
from hiercls.hierarchy import cifar100_superclass_labels, load_cifar100_hierarchy  # noqa: E402
from hiercls.losses import LOSSES, build_loss  # noqa: E402
from hiercls.metrics import MetricAccumulator  # noqa: E402
from hiercls.models import MODELS, build_model  # noqa: E402
from hiercls.numerics import deterministic_mode, refused_ops  # noqa: E402

TIMING = ("epoch_seconds", "images_per_second", "compile_seconds")
FIRST = [("resnet18", True, 512), ("speednet", True, 512), ("speednet", False, 512), ("resnet18", False, 512),
         ("resnet18", False, 128)]
LATER = [("resnet18", True, 128), ("plainnet", False, 128), ("plainnet", True, 128), ("plainnet", False, 512),
         ("plainnet", True, 512), ("wrn28-10", False, 128), ("wrn28-10", False, 512), ("wrn28-10", True, 128)]
RECIPES = {"speednet": "speedrun"}
"""Architectures whose entries are built from a shipped training recipe (``recipes/<name>.yaml``), not the
defaults: speednet is trained, and searched, with the speedrun recipe."""
QUICK_KEYS = {"speednet": {"width": 16}}
"""Keys laid over an architecture's config in the quick mode (a narrow speednet keeps the CPU check short)."""
SPACE = "speedrun"
"""The shipped search space whose fidelity (``epochs``, training images) the packed speednet trials are
projected to."""
TARGET_EPOCHS = 4
"""The issue's fidelity for the trials-per-GPU-hour target."""
CIFAR_TRAIN_IMAGES = 50_000


# ------------------------------------------------------------------------------------------- helpers
def synthetic_cifar(n_train: int, n_test: int, seed: int = 0) -> Cifar100:
    """Seeded random uint8 images [N, 3, 32, 32] with labels ``i % 100`` (every class present)."""
    g = torch.Generator().manual_seed(seed)
    return Cifar100(
        train_images=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.arange(n_train) % 100,
        test_images=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.arange(n_test) % 100,
    )


def make_run(data: Cifar100, device: str, arch: str, batch: int, out: str, recipe: str | None = None,
             **keys: Any) -> Run:
    """The engine's run (loaders, model, loss, optimiser, schedule) for one benchmark configuration: the
    defaults, or with ``recipe`` (a shipped recipe's name or a YAML file) that recipe, with the data,
    architecture, batch size, device and ``keys`` laid over it (the recipe keeps its ``epochs`` and
    ``eval_batch_size``, so its learning-rate schedule and evaluation batches are those of a real run)."""
    values = {"data_dir": "synthetic", "val_size": min(5000, len(data.train_labels) // 10),
              "architecture": arch, "batch_size": batch, "device": device, "evaluate_test": False,
              "out_folder": out}
    if recipe is not None:
        return build_run(load_config(recipe, {**values, **keys}), data)
    return build_run(TrainConfig.from_dict({**values, "eval_batch_size": 500, "epochs": 1, **keys}), data)


def space_fidelity(name: str = SPACE) -> dict[str, Any]:
    """The fidelity of the shipped search space ``name``: its trials' ``epochs``, training images (50,000
    less the ``val_size`` of its resolved train config, at most its ``max_train_samples``), validation
    images and whether validation uses flip TTA."""
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.load(name)
    base = spec.base_config()
    val = int(base.get("val_size", TrainConfig.val_size))
    train = CIFAR_TRAIN_IMAGES - val
    if base.get("max_train_samples"):
        train = min(train, int(base["max_train_samples"]))
    return {"space": name, "epochs": int(spec.epochs), "train_images": train, "val_images": val,
            "flip_tta": bool(base.get("flip_tta", TrainConfig.flip_tta))}


def trials_per_gpu_hour(aggregate_ips: float, epochs: int, train_images: int, eval_ips: float | None = None,
                        val_images: int = 0) -> float:
    """Trials of ``epochs`` epochs on ``train_images`` images finished per GPU-hour by packed trials training
    at ``aggregate_ips`` images/s together: ``3600 * aggregate_ips / (epochs * train_images)``; with
    ``eval_ips`` (validation images scored per second) each epoch also pays ``val_images / eval_ips``
    seconds of the whole GPU."""
    epoch_seconds = train_images / aggregate_ips + (val_images / eval_ips if eval_ips else 0.0)
    return 3600.0 / (epochs * epoch_seconds)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(run: Run):
    """Training batches of consecutive epochs, full batches only."""
    size = run.train_loader.batch_size
    for epoch in itertools.count():
        for images, labels in run.train_loader.epoch(epoch):
            if labels.shape[0] == size:
                yield images, labels


def timed_steps(run: Run, warmup: int, steps: int) -> float:
    """Seconds of ``steps`` training steps after ``warmup`` untimed ones (synchronised)."""
    stream = batches(run)
    for _ in range(warmup):
        run.train_step(*next(stream))
    sync(run.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run.train_step(*next(stream))
    sync(run.device)
    return time.perf_counter() - t0


def step_flops(run: Run) -> int:
    """FLOPs of one forward + backward pass of the model on one training batch (counted eagerly)."""
    from torch.utils.flop_counter import FlopCounterMode

    images, labels = next(batches(run))
    counter = FlopCounterMode(display=False)
    with counter:
        with run.autocast():
            out = run.model(images)
        run.criterion(out.float(), labels).backward()
    run.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.count += 1
        return func(*args, **(kwargs or {}))


def kernels_per_step(run: Run) -> tuple[int, str]:
    """CUDA kernels (and memcpy/memset) in one steady-state step; on the CPU, aten ops dispatched."""
    stream = batches(run)
    run.train_step(*next(stream))
    images, labels = next(stream)
    if run.device.type != "cuda":
        counter = _OpCounter()
        with counter:
            run.train_step(images, labels)
        return counter.count, "aten ops (CPU)"
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(run.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run.train_step(images, labels)
        sync(run.device)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return len(kernels), "CUDA kernels incl. memcpy/memset"


def syncs_per_step(run: Run, steps: int = 3) -> float | None:
    """Synchronising CUDA calls per training step (``torch.cuda.set_sync_debug_mode``); None on the CPU."""
    if run.device.type != "cuda":
        return None
    stream = batches(run)
    run.train_step(*next(stream))
    sync(run.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                run.train_step(*next(stream))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


# ------------------------------------------------------------------------------------------- sections
def section_environment(ctx: dict) -> dict:
    device = ctx["device"]
    out = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return out


def section_matmul_peak(ctx: dict) -> dict:
    device = ctx["device"]
    n = 8192 if device.type == "cuda" else 256
    iters = 20 if device.type == "cuda" else 3
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    seconds = time.perf_counter() - t0
    tflops = 2 * n**3 * iters / seconds / 1e12
    ctx["peak"] = tflops
    return {"size": n, "tflops": tflops}


def throughput_entry(ctx: dict, arch: str, compiled: bool, batch: int) -> dict:
    quick = ctx["quick"]
    warmup, steps = (1, 2) if quick else {"wrn28-10": (3, 10), "speednet": (10, 40)}.get(arch, (5, 20))
    recipe = RECIPES.get(arch)
    keys = QUICK_KEYS.get(arch, {}) if quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(ctx["data"], ctx["device_name"], arch, batch, tmp, recipe=recipe, compile=compiled,
                       **keys)
        compile_seconds = run.warm_up()
        flops = ctx["flops"].get((arch, batch))
        if flops is None:
            flops = ctx["flops"][(arch, batch)] = step_flops(run)
        seconds = timed_steps(run, warmup, steps)
        entry = {
            "architecture": arch, "compiled": compiled, "batch": batch,
            "images_per_second": batch * steps / seconds,
            "tflops": flops * steps / seconds / 1e12,
            "compile_seconds": compile_seconds,
            "amp": run.amp, "channels_last": run.channels_last,
        }
        if recipe is not None:
            entry.update(recipe=recipe, **keys)
        if ctx.get("peak"):
            entry["fraction_of_peak"] = entry["tflops"] / ctx["peak"]
        entry["kernels_per_step"], entry["kernels_counted"] = kernels_per_step(run)
        entry["syncs_per_step"] = syncs_per_step(run)
        return entry


def section_throughput(ctx: dict, configs: list[tuple[str, bool, int]], deadline: float) -> list[dict]:
    out = []
    for arch, compiled, batch in configs:
        if time.perf_counter() > deadline:
            out.append({"architecture": arch, "compiled": compiled, "batch": batch, "skipped": "time budget"})
            continue
        try:
            out.append(throughput_entry(ctx, arch, compiled, batch))
        except Exception as err:  # noqa: BLE001 - recorded, the next configuration runs
            out.append({"architecture": arch, "compiled": compiled, "batch": batch, "error": _describe(err)})
    return out


def packed_round(job: dict, count: int) -> list[dict]:
    """``count`` packing workers (:func:`packing_worker`) of ``job``, each warmed up, then released together
    behind a file barrier; their results, in order. Each of several caps its CUDA memory at 1/count."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(count):
            spec = {**job, "fraction": 1.0 / count if count > 1 else 1.0, "barrier": tmp, "index": i}
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        deadline = time.time() + (120 if not job["quick"] else 90)
        while time.time() < deadline and not all(
            (Path(tmp) / f"ready-{i}").exists() or procs[i].poll() is not None for i in range(count)
        ):
            time.sleep(0.05)
        (Path(tmp) / "go").touch()
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(5.0, deadline - time.time() + 60))
            if proc.returncode != 0:
                raise RuntimeError(f"worker failed ({proc.returncode}): {stderr.strip()[-500:]}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def aggregate(results: list[dict]) -> dict[str, Any]:
    """Aggregate images/s of packed workers (all their images over first start to last end), each one's
    images/s and peak memory."""
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    return {
        "aggregate_images_per_second": sum(r["images"] for r in results) / (end - start),
        "per_process_images_per_second": [r["images"] / (r["end"] - r["start"]) for r in results],
        "peak_memory_mib": [r["peak_memory_mib"] for r in results],
    }


def section_packing(ctx: dict) -> dict:
    quick = ctx["quick"]
    counts = (1, 2) if quick else (1, 4)
    job = {"arch": "plainnet" if quick else "resnet18", "batch": 32 if quick else 128,
           "steps": 2 if quick else 100, "warmup": 1 if quick else 10, "device": ctx["device_name"],
           "quick": quick}
    out: dict[str, Any] = {"architecture": job["arch"], "batch": job["batch"], "steps": job["steps"]}
    for count in counts:
        out[f"processes_{count}"] = aggregate(packed_round(job, count))
    one = out[f"processes_{counts[0]}"]["aggregate_images_per_second"]
    out["ratio"] = out[f"processes_{counts[1]}"]["aggregate_images_per_second"] / one
    return out


def section_speednet_packing(ctx: dict) -> dict:
    """One against four speednet trials (the speedrun recipe, batch 512, eager, as the search's trials run)
    on one GPU, the validation images/s of one (flip TTA, the recipe's), and the projected trials per
    GPU-hour at the shipped space's fidelity and at :data:`TARGET_EPOCHS` epochs."""
    quick = ctx["quick"]
    counts = (1, 2) if quick else (1, 4)
    keys = QUICK_KEYS["speednet"] if quick else {}
    job = {"arch": "speednet", "recipe": RECIPES["speednet"], "keys": keys, "batch": 32 if quick else 512,
           "steps": 2 if quick else 60, "warmup": 1 if quick else 10, "device": ctx["device_name"],
           "quick": quick, "n_train": 2000 if quick else CIFAR_TRAIN_IMAGES}
    out: dict[str, Any] = {"architecture": "speednet", "recipe": job["recipe"], **keys, "batch": job["batch"],
                           "steps": job["steps"]}
    for count in counts:
        results = packed_round({**job, "measure_eval": count == 1}, count)
        out[f"processes_{count}"] = aggregate(results)
        if count == 1:
            scored = results[0]["eval"]
            out["eval"] = {"images_per_second": scored["images"] / scored["seconds"],
                           "val_images": scored["images"], "flip_tta": scored["flip_tta"],
                           "batch": scored["batch"]}
    packed = out[f"processes_{counts[1]}"]["aggregate_images_per_second"]
    out["ratio"] = packed / out[f"processes_{counts[0]}"]["aggregate_images_per_second"]
    fidelity = space_fidelity()
    eval_ips = out["eval"]["images_per_second"]
    train, val = fidelity["train_images"], fidelity["val_images"]
    projection: dict[str, Any] = {
        "space": fidelity["space"], "train_images": train, "val_images": val, "processes": counts[1],
        "aggregate_images_per_second": packed, "eval_images_per_second": eval_ips,
    }
    fidelities = (("at_space_epochs", fidelity["epochs"]), (f"at_{TARGET_EPOCHS}_epochs", TARGET_EPOCHS))
    for label, epochs in fidelities:
        projection[label] = {
            "epochs": epochs,
            "trials_per_gpu_hour": trials_per_gpu_hour(packed, epochs, train),
            "trials_per_gpu_hour_with_eval": trials_per_gpu_hour(packed, epochs, train, eval_ips, val),
        }
    projection["assumes"] = (
        "steady-state training of the packed processes; with_eval adds val_images / eval_images_per_second "
        "(one process alone, flip TTA) per epoch; per-trial start-up (process, data, whitening, first "
        "steps) and the search's own overhead are not counted")
    out["projection"] = projection
    return out


def packing_worker(spec: dict) -> None:
    """One packed training process: warm up, wait at the barrier, time the steps (then, with
    ``measure_eval``, time one validation pass after an untimed one), print JSON."""
    device = torch.device(spec["device"] if spec["device"] != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if spec["quick"]:
        torch.set_num_threads(1)
    if device.type == "cuda" and spec["fraction"] < 1:
        torch.cuda.set_per_process_memory_fraction(spec["fraction"], device)
    data = synthetic_cifar(spec.get("n_train") or (2000 if spec["quick"] else 20000), 100)
    scored = None
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(data, str(device), spec["arch"], spec["batch"], tmp, recipe=spec.get("recipe"),
                       **spec.get("keys", {}))
        stream = batches(run)
        for _ in range(spec["warmup"]):
            run.train_step(*next(stream))
        sync(device)
        barrier = Path(spec["barrier"])
        (barrier / f"ready-{spec['index']}").touch()
        while not (barrier / "go").exists():
            time.sleep(0.01)
        start = time.time()
        for _ in range(spec["steps"]):
            run.train_step(*next(stream))
        sync(device)
        end = time.time()
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        if spec.get("measure_eval") and run.val_loader is not None:
            run.evaluate(run.val_loader)  # untimed: cuDNN's choices, the metrics' set-up
            sync(device)
            t0 = time.perf_counter()
            metrics = run.evaluate(run.val_loader)
            sync(device)
            scored = {"images": metrics["num_samples"], "seconds": time.perf_counter() - t0,
                      "flip_tta": run.config.flip_tta, "batch": run.val_loader.batch_size}
    print(json.dumps({"start": start, "end": end, "images": spec["steps"] * spec["batch"],
                      "peak_memory_mib": peak, "eval": scored}))


def section_bf16_vs_fp32(ctx: dict) -> dict:
    arch = "plainnet" if ctx["quick"] else "resnet18"
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(ctx["data"], ctx["device_name"], arch, 32 if ctx["quick"] else 128, tmp)
        images, labels = next(batches(run))
        run.model.train()
        results = []
        for amp in (False, True):
            run.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=amp):
                out = run.model(images)
            loss = run.criterion(out.float(), labels)
            loss.backward()
            grad = torch.cat([p.grad.flatten().float() for p in run.model.parameters() if p.grad is not None])
            results.append((loss.item(), grad.clone(), out.dtype))
        (l32, g32, d32), (l16, g16, d16) = results
        seen = []
        handle = run.model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        plain = evaluate(run.net, run.val_loader, run.hierarchy, run.criterion)
        with torch.autocast(run.device.type, dtype=torch.bfloat16):
            inside = evaluate(run.net, run.val_loader, run.hierarchy, run.criterion)
        handle.remove()
    same = all(plain[k] == inside[k] or (isinstance(plain[k], float) and math.isnan(plain[k])
                                         and math.isnan(inside[k])) for k in plain)
    return {
        "architecture": arch, "forward_dtypes": [str(d32), str(d16)],
        "loss_fp32": l32, "loss_bf16": l16, "loss_relative_difference": abs(l16 - l32) / abs(l32),
        "gradient_cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
        "gradient_norm_relative_difference": float((g16.norm() - g32.norm()).abs() / g32.norm()),
        "evaluate_equal_with_outer_autocast": same,
        "evaluate_logits_dtypes": sorted({str(d) for d in seen}),
    }


def section_determinism(ctx: dict) -> dict:
    archs = ["plainnet"] if ctx["quick"] else MODELS.names()
    hierarchy = load_cifar100_hierarchy("cifar100-l5")
    g = torch.Generator().manual_seed(0)
    found: dict[str, dict] = {}
    images = torch.randn(2, 3, 32, 32, generator=g)
    for arch in archs:
        model = build_model(arch).train()

        def step(model=model):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(images)
            out.float().sum().backward()

        found[arch] = refused_ops(step)
    for name in LOSSES.names():
        loss = build_loss(name, hierarchy)
        x = torch.randn(8, loss.num_outputs, generator=g, requires_grad=True)
        t = torch.randint(0, 100, (8,), generator=g)
        found[f"loss {name}"] = refused_ops(lambda f=loss, x=x, t=t: f(x, t).backward())
    acc = MetricAccumulator(hierarchy, (1, 5, 20), cifar100_superclass_labels())
    found["metrics"] = refused_ops(lambda: (acc.update(torch.randn(8, 100, generator=g),
                                                       torch.arange(8)), acc.compute()))
    out: dict[str, Any] = {"refused_ops": {k: v for k, v in found.items() if v}}
    device = ctx["device"]
    if device.type != "cuda":
        out["cuda"] = None
        return out
    warned: dict[str, list[str]] = {}
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp, deterministic_mode(True, device):
            torch.use_deterministic_algorithms(True, warn_only=True)
            run = make_run(ctx["data"], ctx["device_name"], arch, 64, tmp, deterministic=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run.train_step(*next(batches(run)))
                sync(device)
            warned[arch] = sorted({str(w.message)[:200] for w in caught if "determinis" in str(w.message)})
    out["warnings"] = warned
    for on in (True, False):
        weights = []
        for _ in range(2):
            with tempfile.TemporaryDirectory() as tmp, deterministic_mode(on, device):
                run = make_run(ctx["data"], ctx["device_name"], "resnet18", 128, tmp, deterministic=on)
                stream = batches(run)
                for _ in range(3):
                    run.train_step(*next(stream))
                weights.append({k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()})
        out[f"two_runs_bit_equal_deterministic_{str(on).lower()}"] = all(
            torch.equal(weights[0][k], weights[1][k]) for k in weights[0]
        )
    return out


def section_resume(ctx: dict) -> dict:
    device = ctx["device"]
    modes = (True, False) if device.type == "cuda" else (True,)
    out = {}
    data = synthetic_cifar(1000, 200)
    for deterministic in modes:
        with tempfile.TemporaryDirectory() as tmp:
            base = {"data_dir": "synthetic", "max_train_samples": 200, "val_size": 100, "batch_size": 100,
                    "eval_batch_size": 100, "epochs": 2, "device": ctx["device_name"], "evaluate_test": False,
                    "deterministic": deterministic}
            a = fit(TrainConfig.from_dict({**base, "out_folder": f"{tmp}/a"}), data=data, progress=False)
            config = TrainConfig.from_dict({**base, "out_folder": f"{tmp}/b"})
            original = DeviceLoader.epoch

            def interrupted(self, epoch, original=original):
                stream = original(self, epoch)
                if self.train and epoch == 1:
                    return itertools.chain(itertools.islice(stream, 1), _interrupt())
                return stream

            DeviceLoader.epoch = interrupted
            try:
                fit(config, data=data, progress=False)
            except KeyboardInterrupt:
                pass
            finally:
                DeviceLoader.epoch = original
            b = fit(config, resume=True, data=data, progress=False)
            records = [{k: v for k, v in r.items() if k not in TIMING} for r in a["history"]]
            resumed = [{k: v for k, v in r.items() if k not in TIMING} for r in b["history"]]
            wa = torch.load(f"{tmp}/a/final_model.pth", weights_only=True)
            wb = torch.load(f"{tmp}/b/final_model.pth", weights_only=True)
            out[f"deterministic_{str(deterministic).lower()}"] = {
                "records_equal": records == resumed,
                "weights_equal": all(torch.equal(wa[k], wb[k]) for k in wa),
            }
    return out


def _interrupt():
    raise KeyboardInterrupt
    yield  # pragma: no cover


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"


# ------------------------------------------------------------------------------------------- main
TARGETS = (  # the goals on an H200 (full mode): (name, how it is measured, at least)
    ("resnet18_compiled_b512_fraction_of_peak", "ResNet-18 compiled, batch 512: achieved / matmul peak",
     0.35),
    ("packing_4_vs_1", "4 packed ResNet-18 trials (batch 128, eager): aggregate images/s / one's", 1.6),
    ("speednet_trials_per_gpu_hour_4_epochs",
     "4 packed speednet trials (speedrun recipe, batch 512, eager): projected trials per GPU-hour at 4 "
     "epochs on the speedrun space's training images, validation (flip TTA) included, start-up not", 1000.0),
)


def targets(report: dict) -> dict[str, dict[str, Any]]:
    """Each of :data:`TARGETS` with its measured figure and ``met`` (None when it was not measured: the
    quick mode, or a section skipped or failed)."""
    measured: dict[str, float | None] = {name: None for name, _, _ in TARGETS}
    for entry in report.get("throughput") or []:
        if (entry.get("architecture"), entry.get("compiled"), entry.get("batch")) == ("resnet18", True, 512):
            measured["resnet18_compiled_b512_fraction_of_peak"] = entry.get("fraction_of_peak")
    packing = report.get("packing") or {}
    if packing.get("architecture") == "resnet18" and "processes_4" in packing:
        measured["packing_4_vs_1"] = packing.get("ratio")
    speednet = report.get("speednet_packing") or {}
    projection = speednet.get("projection") or {}
    if projection.get("processes") == 4 and "processes_4" in speednet:
        at_target = projection.get(f"at_{TARGET_EPOCHS}_epochs") or {}
        measured["speednet_trials_per_gpu_hour_4_epochs"] = at_target.get("trials_per_gpu_hour_with_eval")
    return {name: {"what": what, "target": goal, "measured": measured[name],
                   "met": None if measured[name] is None else bool(measured[name] >= goal)}
            for name, what, goal in TARGETS}


def _rows(report: dict) -> list[tuple[str, str, str]]:
    rows = []

    def walk(section: str, value: Any, key: str) -> None:
        if isinstance(value, dict) and not (key.endswith("refused_ops") or key == "warnings"):
            for k, v in value.items():
                walk(section, v, f"{key}.{k}" if key else k)
        elif isinstance(value, float):
            rows.append((section, key, f"{value:.4g}"))
        else:
            rows.append((section, key, json.dumps(value) if not isinstance(value, str) else value))

    for section, value in report.items():
        if section == "throughput" and isinstance(value, list):
            for e in value:
                name = f"{e['architecture']} {'compiled' if e['compiled'] else 'eager'} b{e['batch']}"
                walk(section, {k: v for k, v in e.items() if k not in ("architecture", "compiled", "batch")},
                     name)
        else:
            walk(section, value, "")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true",
                        help="plainnet and a narrow speednet, eager, 2 steps per section")
    parser.add_argument("--report", default="gpu_check_report.json", help="JSON report path")
    parser.add_argument("--budget-seconds", type=float, default=220.0,
                        help="start no section after this many seconds")
    parser.add_argument("--data-dir", help="real CIFAR-100 instead of synthetic images")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        packing_worker(json.loads(args.worker))
        return 0
    if args.device != "auto" and not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device {args.device!r} is unknown; valid: auto, cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r}: CUDA is not available here; use --device cpu")
    if not args.quick and not torch.cuda.is_available():
        parser.error("the full check needs a CUDA device (none is available here); on the CPU run --quick "
                     "--device cpu")
    if args.budget_seconds <= 0:
        parser.error(f"--budget-seconds {args.budget_seconds!r} must be positive")
    started = time.perf_counter()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if args.quick:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = (load_cifar100(args.data_dir, download=False) if args.data_dir
            else synthetic_cifar(1000 if args.quick else 50000, 1000 if args.quick else 10000))
    ctx = {"device": device, "device_name": str(device), "quick": args.quick, "data": data, "flops": {}}
    deadline = started + args.budget_seconds
    first = [("plainnet", False, 32), ("speednet", False, 32)] if args.quick else FIRST
    later = [] if args.quick else LATER
    sections = [
        ("environment", lambda: section_environment(ctx)),
        ("matmul_peak", lambda: section_matmul_peak(ctx)),
        ("throughput", lambda: section_throughput(ctx, first, deadline)),
        ("packing", lambda: section_packing(ctx)),
        ("speednet_packing", lambda: section_speednet_packing(ctx)),
        ("bf16_vs_fp32", lambda: section_bf16_vs_fp32(ctx)),
        ("determinism", lambda: section_determinism(ctx)),
        ("resume", lambda: section_resume(ctx)),
    ]
    report: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    report_path = Path(args.report)
    for name, run_section in sections:
        t0 = time.perf_counter()
        if t0 > deadline:
            report[name] = {"skipped": "time budget"}
        else:
            try:
                report[name] = run_section()
            except Exception as err:  # noqa: BLE001 - recorded; the next section runs
                report[name] = {"error": _describe(err), "where": traceback.format_exc(limit=-2)[-600:]}
        if isinstance(report[name], dict):
            report[name]["seconds"] = time.perf_counter() - t0
        report_path.write_text(json.dumps(report, indent=2, default=str))
    if later:
        report["throughput"] += section_throughput(ctx, later, deadline)
    report["targets"] = targets(report)
    report["total_seconds"] = time.perf_counter() - started
    report_path.write_text(json.dumps(report, indent=2, default=str))
    rows = _rows(report)
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    for section, key, value in rows:
        print(f"{section:<{width[0]}}  {key:<{width[1]}}  {value}")
    print(f"report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
