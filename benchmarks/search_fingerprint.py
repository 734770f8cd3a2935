"""Fingerprints of real searches, to show that a change to the search package leaves their trials alone.

Runs five small searches on the real CIFAR-100 through the command line (``tune_main.main``, in this
process, one trial at a time where the order of results would matter) and writes, for each, every trial's
searched values, status, epochs run and per-epoch validation metrics and values, and the rows of
``summary.csv`` (trial ids, folders and times left out: Ray draws the ids at random). Run it on two
checkouts and compare the JSON files::

    python benchmarks/search_fingerprint.py --out /tmp/after.json
    (cd /tmp/before && PYTHONPATH=. python benchmarks/search_fingerprint.py --out /tmp/before.json)
    python benchmarks/search_fingerprint.py --compare /tmp/before.json /tmp/after.json

The searches (each from the shipped ``smoke`` space: plainnet, 2,000 training / 500 validation images,
2 epochs, ``max_concurrent: 1``):

* ``smoke``: the smoke search as shipped (8 trials, TPE + ASHA);
* ``resume``: 4 trials with ``--scheduler none``, interrupted with SIGINT once two trials have finished,
  then ``--resume`` (a resumed CPU trial continues bit-exactly, so the outcome does not depend on when the
  interrupt came);
* ``growth``: 3 trials, then ``--resume --num-samples 5``;
* ``constrained``: 4 trials minimising mistake severity with ``val_top1_error <= baseline + 0.01``;
* ``pb2``: PB2 over simple-hierarchy's ``lambda_coarse`` and ``lr`` (uniform ranges: PB2 moves a loguniform
  one in log space since issue 21; 3 members, 2 at once, 4 epochs of 200 images, perturbed every epoch).
  Ray draws PB2's first values and its proposals from Python's and NumPy's global random generators, which
  this script seeds before each search. PB2 is not reproducible even so: a PB2 trial's seed comes from
  Ray's random trial id (docs/results/search_equivalence.md).

Takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DROPPED = ("trial_id", "path")
VALUES = ("lr", "base_lr", "scheduled_lr", "alpha", "beta", "lambda_fine", "lambda_coarse")


def _seed_globals(seed: int = 0) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)


def _main(argv: list[str]) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import tune_main

    _seed_globals()
    return tune_main.main(argv)


def _records(folder: Path) -> list[dict[str, Any]]:
    path = folder / "all_epoch_results.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    records = data if isinstance(data, list) else data.get("records", data.get("history", []))
    keep = []
    for r in records:
        keep.append({k: v for k, v in sorted(r.items())
                     if k == "epoch" or k.startswith("val_") or k in VALUES})
    return keep


def _trial_folders(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.rglob("trial_*") if p.is_dir())


def fingerprint(experiment: Path) -> dict[str, Any]:
    """The trials of the search in ``experiment`` without ids, folders or times, in a stable order."""
    with open(experiment / "summary.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in DROPPED} for r in csv.DictReader(f)]
    trials = []
    for folder in _trial_folders(experiment):
        path = folder / "params.json"
        params = json.loads(path.read_text()) if path.is_file() else {}
        trials.append({"params": params, "records": _records(folder)})
    trials.sort(key=lambda t: json.dumps(t["params"], sort_keys=True))
    return {"summary": rows, "trials": trials}


def _interrupt_after(experiment: Path, finished: int, epochs: int) -> threading.Thread:
    """A thread that sends this process SIGINT once ``finished`` trials have all ``epochs`` records."""

    def done() -> int:
        count = 0
        for folder in _trial_folders(experiment):
            if len(_records(folder)) >= epochs:
                count += 1
        return count

    def watch() -> None:
        deadline = time.time() + 1800
        while time.time() < deadline:
            if done() >= finished:
                time.sleep(2.0)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


PB2_SPACE = """\
num_samples: 3
epochs: 4
scheduler: pb2
perturbation_interval: 1
max_concurrent: 3
cpus_per_trial: 0.5
train:
  architecture: plainnet
  loss: simple-hierarchy
  hierarchy: cifar100-l5
  max_train_samples: 200
  val_size: 100
  batch_size: 50
  eval_batch_size: 100
  lr_schedule: constant
  amp: false
search:
  lambda_coarse: {type: uniform, low: 0.0, high: 2.0}
  lr: {type: uniform, low: 0.01, high: 0.1}
"""


def run_all(storage: Path, data_dir: str, only: list[str] | None) -> dict[str, Any]:
    storage.mkdir(parents=True, exist_ok=True)
    common = ["--storage-path", str(storage), "--data-dir", data_dir]
    smoke = ["--smoke-test", *common]
    out: dict[str, Any] = {}

    def want(name: str) -> bool:
        return not only or name in only

    if want("smoke"):
        assert _main([*smoke, "--name", "smoke"]) == 0
        out["smoke"] = fingerprint(storage / "smoke")
    if want("resume"):
        _interrupt_after(storage / "resume", finished=2, epochs=2)
        first = _main([*smoke, "--name", "resume", "--scheduler", "none", "--num-samples", "4"])
        assert first == 130, f"the interrupted search exited {first}"
        assert _main(["--name", "resume", *common, "--resume"]) == 0
        out["resume"] = fingerprint(storage / "resume")
    if want("growth"):
        assert _main([*smoke, "--name", "growth", "--num-samples", "3"]) == 0
        assert _main(["--name", "growth", *common, "--resume", "--num-samples", "5"]) == 0
        out["growth"] = fingerprint(storage / "growth")
    if want("constrained"):
        assert _main([*smoke, "--name", "constrained", "--num-samples", "4", "--objective",
                      "val_mistake_severity", "--constraint", "val_top1_error <= baseline + 0.01"]) == 0
        out["constrained"] = fingerprint(storage / "constrained")
    if want("pb2"):
        space = storage / "pb2.yaml"
        space.write_text(PB2_SPACE)
        assert _main(["--space", str(space), "--name", "pb2", *common]) == 0
        out["pb2"] = fingerprint(storage / "pb2")
    return out


def _one_spelling(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Records written before ``lr`` had one spelling (``base_lr`` the value, ``lr`` the scheduled rate)
    in today's: ``lr`` the value, ``scheduled_lr`` the rate of the epoch's first step."""
    for trial in fingerprint.get("trials", []):
        for record in trial["records"]:
            if "base_lr" in record:
                record["scheduled_lr"] = record.pop("lr")
                record["lr"] = record.pop("base_lr")
    return fingerprint


def compare(before: dict[str, Any], after: dict[str, Any]) -> int:
    before = {k: _one_spelling(v) for k, v in before.items() if not k.startswith("_")}
    after = {k: _one_spelling(v) for k, v in after.items() if not k.startswith("_")}
    status = 0
    for name in sorted(n for n in set(before) | set(after) if not n.startswith("_")):
        a, b = before.get(name), after.get(name)
        if a == b:
            print(f"{name}: identical ({len(a['trials'])} trials, {len(a['summary'])} summary rows)")
            continue
        status = 1
        if a is None or b is None:
            print(f"{name}: only in {'after' if a is None else 'before'}")
            continue
        print(f"{name}: DIFFERENT")
        for key in ("summary", "trials"):
            for i, (x, y) in enumerate(zip(a[key], b[key])):
                if x != y:
                    print(f"  {key}[{i}] before: {json.dumps(x)[:400]}")
                    print(f"  {key}[{i}] after:  {json.dumps(y)[:400]}")
            if len(a[key]) != len(b[key]):
                print(f"  {key}: {len(a[key])} before, {len(b[key])} after")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints (JSON) here")
    parser.add_argument("--storage", type=Path, default=None, help="experiment folder (default: a new temp)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-100 (default: as hiercls finds it)")
    parser.add_argument("--only", nargs="*", help="smoke, resume, growth, constrained, pb2")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    import tempfile

    from hiercls.data import find_cifar100

    data_dir = args.data_dir or str(find_cifar100(download=False).path)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="hiercls-fingerprint-"))
    started = time.perf_counter()
    result = run_all(storage, data_dir, args.only)
    print(f"{len(result)} searches in {time.perf_counter() - started:.0f} s; experiments in {storage}")
    import hiercls

    result["_code"] = {"hiercls": str(Path(hiercls.__file__).parent)}
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
