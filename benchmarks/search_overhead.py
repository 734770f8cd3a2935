"""Ray Tune's overhead per trial, and the time from launch to a real smoke trial's first epoch.

``python benchmarks/search_overhead.py --data-dir .data/cifar-100 [--trials 24] [--cpus 2]``

1. ``ray.init`` on a fresh local instance (seconds).
2. Overhead per trial: the wall time of a search of trivial trials (the toy trainable: one epoch,
   no sleep, no data) divided by their number, with ``cpus 0.5`` per trial (4 at once on 2 CPUs).
   This is what Tune + OptunaSearch + ASHA + one checkpoint per trial cost, whatever the training.
3. Launch to first epoch: a real smoke trial (``search_spaces/smoke.yaml``, one trial, 1 epoch):
   the seconds from calling the runner (Ray already up) to the first reported epoch arriving at the
   driver, and that epoch's own training + validation time from the report (the difference is the
   start-up: actor, imports, the data from the decode cache, model build).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT / ".data" / "cifar-100"))
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--skip-real", action="store_true", help="only the trivial-trial overhead")
    args = parser.parse_args()

    import ray
    from ray import tune

    from hiercls.tune.runner import run_search
    from hiercls.tune.spec import SMOKE_SPACE, SearchSpec

    storage = Path(tempfile.mkdtemp(prefix="hiercls-bench-"))
    try:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
        init_s = time.perf_counter() - t0
        print(f"ray.init (local, {args.cpus} CPUs): {init_s:.1f} s")

        spec = SearchSpec.from_dict({
            "name": "trivial", "storage_path": str(storage), "num_samples": args.trials, "epochs": 1,
            "grace_period": 1, "max_concurrent": 2 * args.cpus, "cpus_per_trial": 0.5, "startup_trials": 5,
            "train": {"architecture": "plainnet"},
            "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
        })
        t0 = time.perf_counter()
        outcome = run_search(spec, trainable="toy", echo=lambda line: None)
        wall = time.perf_counter() - t0
        print(f"trivial search: {outcome.num_trials} trials in {wall:.1f} s -> "
              f"{wall / outcome.num_trials:.2f} s overhead per trial (wall / trials, "
              f"{spec.max_concurrent} at once)")

        if not args.skip_real:

            class FirstResult(tune.Callback):
                def __init__(self) -> None:
                    self.at: float | None = None
                    self.result: dict | None = None

                def on_trial_result(self, iteration, trials, trial, result, **info):
                    if self.at is None:
                        self.at, self.result = time.perf_counter(), dict(result)

            spec = SearchSpec.load(SMOKE_SPACE, {
                "name": "first-epoch", "storage_path": str(storage), "num_samples": 1, "epochs": 1,
                "grace_period": 1, "data_dir": args.data_dir, "points_to_evaluate": [],
            })
            first = FirstResult()
            t0 = time.perf_counter()
            run_search(spec, echo=lambda line: None, callbacks=[first])
            assert first.at is not None and first.result is not None
            to_first = first.at - t0
            epoch_s = float(first.result["epoch_seconds"])
            print(f"launch -> first reported epoch of a real smoke trial: {to_first:.1f} s "
                  f"(the epoch itself: {epoch_s:.1f} s at {first.result['images_per_second']:.0f} img/s; "
                  f"start-up {to_first - epoch_s:.1f} s, includes validation and the driver's data check)")
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
