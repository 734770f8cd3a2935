"""Final test metrics of plain training runs side by side: ``python -m analysis.compare``.

::

    python -m analysis.compare runs/joint-83333b8c-seed0 runs/joint-83333b8c-seed1 \\
        runs/joint-83333b8c-seed2 runs/baseline-seed0 --out compare.md

Each RUN_DIR is an output folder of ``python -m hiercls.train`` (``config.yaml`` and
``final_test_results.json``, written when the run scores the test set). Runs whose configs are equal
except for ``seed``, ``out_folder``, ``data_dir``, ``download`` and ``num_threads`` form one group,
shown as the mean ± the half-width of its 95 % confidence interval, t(0.975, n-1) * s / sqrt(n)
(Student t, s the sample standard deviation): with a handful of seeds, differences in mistake severity
of a few hundredths are within seed noise. A group of one run shows its value without an interval.

Metrics (:data:`METRICS`, of the last model by default, ``--model best`` for the best-val model):
top-1 error, mistake severity, hdist@1/5/20, coarse error (fractions 0..1 for errors; LCA heights for
severity and hdist) and their CRM variants.

The runs must have been validated on the same images (equal ``val_split_sha256`` in their ``config.yaml``,
or all without validation, ``val_size`` 0): runs on different validation splits also trained on different
images (the rest of the training set), so their differences mix what was set with which images each drew.
Such runs, and runs of a hiercls before the split was recorded, are refused in one line (exit 2) unless
``--allow-mixed-splits`` (:func:`split_problem`); train seeds of one comparison with one ``--split_seed``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.experiment import AnalysisError, run_cli
from analysis.rank import markdown_table, text_table

__all__ = ["METRICS", "IGNORED_KEYS", "check_distinct", "ci95", "group_runs", "load_run", "main",
           "split_problem", "summarize"]

METRICS = (
    "top1_error", "mistake_severity", "hdist@1", "hdist@5", "hdist@20", "coarse_error",
    "crm/top1_error", "crm/mistake_severity", "crm/hdist@1", "crm/hdist@5", "crm/hdist@20",
    "crm/coarse_error",
)
# runs differing only in these are seeds of one configuration (where and on how many threads it ran
# does not change what was trained; val_split_sha256 follows from the data and the split's seed)
IGNORED_KEYS = ("seed", "out_folder", "data_dir", "download", "num_threads", "val_split_sha256")
MODELS = ("last", "best")
RESULTS_FILE = "final_test_results.json"


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, half-width)`` of the 95 % Student-t confidence interval of the mean; the half-width is
    NaN for a single value. NaN values make both NaN."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2 or not np.isfinite(x).all():
        return mean, math.nan
    s = float(x.std(ddof=1))
    return mean, float(stats.t.ppf(0.975, len(x) - 1)) * s / math.sqrt(len(x))


def load_run(run_dir: str | Path, model: str = "last") -> dict[str, Any]:
    """``{"path", "config", "metrics", "epoch"}`` of one run (``model``: ``last`` or ``best``).

    Raises:
        AnalysisError: not a run folder, no ``final_test_results.json`` (the run did not finish or did
            not score the test set), no best-val model (a run without validation), unknown model.
    """
    if model not in MODELS:
        raise AnalysisError(f"model {model!r} is unknown; valid: {', '.join(MODELS)}")
    folder = Path(run_dir)
    config_path, results_path = folder / "config.yaml", folder / RESULTS_FILE
    if not folder.is_dir():
        raise AnalysisError(f"run folder {str(folder)!r} does not exist")
    if not config_path.is_file():
        raise AnalysisError(f"{str(folder)!r} is not a training run folder: no config.yaml (expected an "
                            "--out_folder of python -m hiercls.train)")
    if not results_path.is_file():
        trial = (folder / "result.json").is_file() or (folder / "params.json").is_file()
        hint = (" This is a search trial (trials never score the test set): export it with "
                "python -m analysis.export EXPERIMENT_DIR --trial ID and train that config.") if trial else ""
        raise AnalysisError(f"run {str(folder)!r} has no {RESULTS_FILE}: it has not finished, or it ran with "
                            f"evaluate_test false (--no-test).{hint}")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise AnalysisError(f"run {str(folder)!r}: unreadable results: {err}") from err
    if model == "best":
        if "best_val_model" not in results:
            raise AnalysisError(f"run {str(folder)!r} has no best-val model (it ran without validation); "
                                "use --model last")
        results = results["best_val_model"]
    metrics = results.get("metrics") or {}
    return {"path": folder, "config": config, "metrics": metrics, "epoch": results.get("epoch")}


def _key(config: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in IGNORED_KEYS}, sort_keys=True,
                      default=str)


def group_runs(runs: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Runs grouped by their config without :data:`IGNORED_KEYS`, in order of first appearance."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(_key(run["config"]), []).append(run)
    return list(groups.values())


def _labels(groups: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Each group named by the config keys that differ between groups (the loss when none differ)."""
    configs = [g[0]["config"] for g in groups]
    keys = sorted({k for c in configs for k in c} - set(IGNORED_KEYS))
    varying = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    if not varying:
        return [str(c.get("loss", "run")) for c in configs]

    def short(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return [" ".join(f"{k}={short(c.get(k))}" for k in varying) for c in configs]


def check_distinct(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Refuse a run folder given twice; return warnings for groups in which a seed repeats (such runs
    are not independent samples, and the interval would be too narrow).

    Raises:
        AnalysisError: the same folder (after resolving links) given more than once.
    """
    seen: dict[Path, str] = {}
    for run in runs:
        real = Path(run["path"]).resolve()
        if real in seen:
            raise AnalysisError(f"run folder {str(run['path'])!r} is given twice (also as {seen[real]!r}); "
                                "each run counts once")
        seen[real] = str(run["path"])
    warnings = []
    for group in group_runs(runs):
        seeds = [r["config"].get("seed") for r in group]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        if repeated:
            folders = ", ".join(str(r["path"]) for r in group if r["config"].get("seed") in repeated)
            warnings.append(f"seed {', '.join(map(str, repeated))} repeats in one group ({folders}): those "
                            "runs are not independent and narrow the interval")
    return warnings


def split_problem(runs: Sequence[Mapping[str, Any]], advice: bool = True) -> str | None:
    """One line when ``runs`` (:func:`load_run` dicts) were not all validated on the same images, else None
    (also for a single run); with ``advice`` it ends with what to do. A run's split is its config's
    ``val_split_sha256``; a run without validation (``val_size`` 0) trained on the whole training set, the
    same images as any other such run; a run without the hash (a hiercls before it was recorded) was
    validated on the images its own seed drew."""
    if len(runs) < 2:
        return None
    splits: dict[str, list[str]] = {}
    for run in runs:
        config = run["config"]
        key = config.get("val_split_sha256") or ("none (val_size 0)" if config.get("val_size") == 0 else "")
        splits.setdefault(str(key), []).append(str(run["path"]))
    unknown = splits.pop("", [])
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        return (f"{len(unknown)} of {len(runs)} runs record no val_split_sha256 ({shown}): "
                "made before hiercls recorded validation splits, each was validated on the images its own "
                "seed drew and trained on the rest, so differences between them mix what was set with which "
                "images each drew" + ("; pass --allow-mixed-splits to compare them anyway" if advice else ""))
    if len(splits) < 2:
        return None
    listed = "; ".join(f"{key[:12]}: {', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}"
                       for key, paths in splits.items())
    return (f"the runs were validated on {len(splits)} different validation splits ({listed}), and each "
            "trained on the rest of the training set, so differences between them mix what was set with "
            "which images each drew" + ("; train them with one --split_seed, or pass --allow-mixed-splits to "
                                        "compare them anyway" if advice else ""))


def summarize(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per group: ``group`` (the differing config keys), ``n``, ``seeds``, ``runs`` (folders),
    and per metric ``<metric>`` (the mean) and ``<metric>_ci95`` (the half-width; NaN for n = 1)."""
    groups = group_runs(runs)
    rows = []
    for label, group in zip(_labels(groups), groups):
        row: dict[str, Any] = {
            "group": label,
            "n": len(group),
            "seeds": " ".join(str(r["config"].get("seed")) for r in group),
            "runs": " ".join(str(r["path"]) for r in group),
        }
        for m in METRICS:
            values = [float(r["metrics"].get(m, math.nan)) for r in group]
            row[m], row[f"{m}_ci95"] = ci95(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["group", "n", "seeds", *METRICS]
    body = []
    for _, row in table.iterrows():
        cells = [str(row["group"]), str(row["n"]), str(row["seeds"])]
        for m in METRICS:
            mean, hw = row[m], row[f"{m}_ci95"]
            if math.isnan(mean):
                cells.append("")
            elif math.isnan(hw):
                cells.append(f"{mean:.4f}")
            else:
                cells.append(f"{mean:.4f} ± {hw:.4f}")
        body.append(cells)
    return header, body


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Final test metrics of training runs side by side; runs that differ only in their seed "
        "are grouped as mean ± 95% confidence interval (Student t).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="output folders of python -m hiercls.train")
    parser.add_argument("--model", choices=MODELS, default="last",
                        help="the last model's test metrics or the best-val model's (default: last)")
    parser.add_argument("--out", metavar="FILE", default=None, help="also write the table (.csv or .md)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--allow-mixed-splits", action="store_true",
                        help="compare runs validated on different images (different val_split_sha256, or "
                             "none recorded) instead of refusing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 2 on bad input (the error on stderr)."""
    return run_cli(build_parser(), argv, _compare)


def _compare(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".csv", ".md"):
        raise AnalysisError(f"--out {args.out!r}: the file must end in .csv or .md")
    if out is not None and out.is_dir():
        raise AnalysisError(f"--out {args.out!r} is a folder: give a .csv or .md file to write")
    if out is not None and out.exists() and not args.force:
        raise AnalysisError(f"refusing to overwrite {args.out}: pass --force, or choose another --out")
    runs = [load_run(r, args.model) for r in args.runs]
    warnings = check_distinct(runs)
    mixed = split_problem(runs, advice=not args.allow_mixed_splits)
    if mixed and not args.allow_mixed_splits:
        raise AnalysisError(mixed)
    if mixed:
        warnings.append(f"{mixed}; compared anyway (--allow-mixed-splits)")
    table = summarize(runs)
    for warning in warnings:
        print(f"warning: {warning}")
    header, body = _cells(table)
    print(f"test metrics ({args.model} model; mean ± 95% CI half-width over seeds where n > 1):")
    for line in text_table(header, body):
        print(line)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            table.to_csv(out, index=False)
        else:
            out.write_text(markdown_table(header, body) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
