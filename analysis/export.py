"""Export a search's chosen trial as a plain training config: ``python -m analysis.export``.

::

    python -m analysis.export runs/tune/joint --out best.yaml            # lowest search objective
    python -m hiercls.train --config best.yaml                          # runs it as it is
    python -m analysis.export runs/tune/joint --out best.yaml --rank-by pareto:1 --seeds 0 1 2
    python -m analysis.export runs/tune/joint --out final.yaml --retrain-full
    python -m analysis.export runs/tune/joint --out t.yaml --trial 83333b8c   # any trial, by id

The file holds the chosen trial's full resolved training config (the trial's ``config.yaml``: its
configured ``epochs``, its ``seed``, ``num_threads``, ``data_dir``, every loss and schedule value) with
two changes: ``out_folder`` is ``runs/<experiment>-<trial_id>`` (``-full`` with ``--retrain-full``,
``-seed<N>`` with ``--seeds``), since the trial's own folder already holds results, and
``evaluate_test`` is true (search trials never score the test set; the exported run is the one to
report). A ``source:`` block records where it came from (``experiment``, ``trial_id``, ``metric``,
``scope``, ``epoch``: the epoch whose value was selected, ``value``: the metric's value there; for
``pareto:INDEX`` a mapping of the two front coordinates; plus ``trial_seed``); ``hiercls.train``
ignores it. The same seed, code and thread count reproduce the trial's val metrics at ``source.epoch``
on the CPU, and on CUDA when the trial ran with ``deterministic: true`` (docs/training.md, "Reproducibility").

Candidates are the trials that ran their full length (status ``complete``); NaN, errored, stopped-early
and unfinished trials are exported only when named with ``--trial``. A trial whose searched values no
file could give (its ``params.json`` empty or torn, and no valid ``config.yaml`` or Ray copy: see
:mod:`analysis.experiment`) is never exported, also not by ``--trial``: the command stops with a
one-line error (exit 2) naming the damaged files, since the training defaults would stand in for the
lost values. The exported trial's other problems (damaged files it could do without) are printed as
notes.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.experiment import AnalysisError, Experiment, load_experiment, run_cli
from analysis.pareto import pareto_front
from analysis.rank import METRIC_COLUMNS, SCOPES, build_table
from hiercls.config import ConfigError, TrainConfig
from hiercls.value_schedule import value_schedule_from_history

__all__ = ["RANK_BY", "choose", "export", "exported_config", "main", "pareto_index"]

RANK_BY = ("objective", *METRIC_COLUMNS)
PARETO = "pareto:"


def _valid_rank_by() -> str:
    return ", ".join([*RANK_BY, "pareto:INDEX"])


def pareto_index(rank_by: str) -> int | None:
    """The INDEX of ``pareto:INDEX``, None for a metric name.

    Raises:
        AnalysisError: an unknown metric (the valid ones listed) or an INDEX that is not a whole number.
    """
    if not str(rank_by).startswith(PARETO):
        if rank_by not in RANK_BY:
            raise AnalysisError(f"--rank-by {rank_by!r} is unknown; valid: {_valid_rank_by()}")
        return None
    try:
        return int(rank_by[len(PARETO):])
    except ValueError:
        raise AnalysisError(
            f"--rank-by {rank_by!r}: INDEX must be a whole number (pareto:0 is the front's lowest top-1 "
            "error)"
        ) from None


def choose(experiment: Experiment, table: pd.DataFrame, rank_by: str = "objective",
           trial_id: str | None = None) -> tuple[pd.Series, str, Any]:
    """The row to export and the ``source`` block's ``metric`` and ``value``.

    In a constrained search (a ``feasible`` column), only the trials that meet every bound are candidates.
    ``rank_by``: a column of :data:`RANK_BY` (the lowest value among complete trials; ties go to the
    lower top-1 error, then severity, then trial id; ``objective``, the default, is the search's own
    objective, so the exported trial is the one the search ranked first), or ``pareto:INDEX`` (the
    INDEX-th trial, from 0, of the (top-1 error, mistake severity) front of the complete trials sorted by
    top-1 error). ``trial_id`` picks that trial whatever its status.

    Raises:
        AnalysisError: unknown metric (the valid ones listed), a Pareto index out of range (the valid
            range given), no complete trial, no trial with a finite value, an unknown trial id.
    """
    index = pareto_index(rank_by)
    if trial_id is not None:
        trial = experiment.trial(trial_id)
        row = table[table["trial_id"] == trial.trial_id].iloc[0]
        if index is not None:
            return row, rank_by, _front_value(row)
        return row, rank_by, _number(row[rank_by])
    complete = table[table["status"] == "complete"]
    if complete.empty:
        counts = ", ".join(f"{n} {s}" for s, n in experiment.counts().items() if n)
        raise AnalysisError(
            f"no trial of {str(experiment.path)!r} ran its full length ({counts}); NaN, errored and "
            "stopped-early trials are exported only when named with --trial ID"
        )
    if "feasible" in complete.columns:  # a constrained search: a trial that breaks a bound is never chosen
        feasible = complete[complete["feasible"].fillna(True).astype(bool)]
        if feasible.empty:
            limits = ", ".join(f"{m} <= {b:.6g}" for m, b in table.attrs.get("constraint_bounds", {}).items())
            raise AnalysisError(f"no complete trial of {str(experiment.path)!r} meets the constraints "
                                f"({limits}); export one anyway with --trial ID")
        complete = feasible
    if index is not None:
        front = pareto_front(complete.assign(compared=True), "pareto_error_severity")
        if not 0 <= index < len(front):
            raise AnalysisError(
                f"--rank-by {rank_by!r}: Pareto index {index} is out of range; the (val_top1_error, "
                f"val_mistake_severity) front of the complete trials has {len(front)} trial(s): valid "
                f"pareto:0 .. pareto:{len(front) - 1}"
            )
        row = front.iloc[index]
        return row, rank_by, _front_value(row)
    finite = complete[complete[rank_by].astype(float).notna()]
    if finite.empty:
        raise AnalysisError(f"no complete trial of {str(experiment.path)!r} has a finite {rank_by}")
    row = finite.sort_values([rank_by, "val_top1_error", "val_mistake_severity", "trial_id"],
                             kind="stable").iloc[0]
    return row, rank_by, _number(row[rank_by])


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if not math.isnan(value) else None


def _front_value(row: pd.Series) -> dict[str, float | None]:
    return {k: _number(row[k]) for k in ("val_top1_error", "val_mistake_severity")}


def exported_config(
    experiment: Experiment, trial_id: str, *, seed: int | None = None, retrain_full: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """The trial's full training config as exported (see the module docstring), and notes to print.

    Raises:
        AnalysisError: the trial's searched values are unknown (damaged ``params.json`` and no other
            source: the message names the damaged files), the trial has no config (no valid
            ``config.yaml`` and none could be rebuilt), or an invalid one.
    """
    trial = experiment.trial(trial_id)
    notes = []
    damage = ", ".join(p.split("; ")[0] for p in trial.problems  # the damaged files, what is wrong
                       if not p.startswith(("searched values", "status ")))
    if trial.unknown_params:
        raise AnalysisError(
            f"trial {trial.trial_id} cannot be exported: its searched values "
            f"({', '.join(trial.unknown_params)}) are lost ({damage or 'no params.json'}; no other file "
            "holds them), and the training defaults would stand in for them"
        )
    if trial.config is None:
        raise AnalysisError(
            f"trial {trial.trial_id} cannot be exported: its config could be neither read"
            + (f" ({damage})" if damage else "") + " nor rebuilt from "
            f"{experiment.path / 'search_spec.yaml'} and its searched values"
        )
    config_noted = any(p.startswith("config.yaml:") for p in trial.problems)  # printed as a problem
    if trial.config_source == "rebuilt" and not config_noted:
        notes.append(f"trial {trial.trial_id} has no usable config.yaml: its config was rebuilt from the "
                     "spec and its searched values as the search builds it")
    try:
        config = TrainConfig.from_dict(trial.config)
    except ConfigError as err:
        raise AnalysisError(f"trial {trial.trial_id}: its config is not valid here: {err}") from err
    name = f"{experiment.name}-{trial.trial_id}"
    changes: dict[str, Any] = {"evaluate_test": True}
    if retrain_full:
        changes["val_size"] = 0
        changes["val_split_sha256"] = None  # no validation split left to identify
        name += "-full"
        if config.max_train_samples is not None:
            notes.append(f"--retrain-full: the search's max_train_samples {config.max_train_samples} is "
                         "dropped (the run trains on all 50,000 training images)")
            changes["max_train_samples"] = None
    if seed is not None:
        changes["seed"] = int(seed)
        name += f"-seed{int(seed)}"
    changes["out_folder"] = str(Path("runs") / name)
    if experiment.spec.get("scheduler") == "pb2":
        # the values PB2 gave this model epoch by epoch (its history includes its donors'), replayed
        try:
            changes["value_schedule"] = value_schedule_from_history(trial.records, config.loss)
        except (KeyError, ValueError) as err:
            raise AnalysisError(f"trial {trial.trial_id}: its per-epoch values cannot be read back as a "
                                f"value schedule ({err})") from err
        notes.append(f"trial {trial.trial_id} is a PB2 population member: value_schedule replays the lr and "
                     "loss values of each of its epochs")
    return config.replace(**changes).to_dict(), notes


def _seed_path(out: Path, seed: int) -> Path:
    return out.with_name(f"{out.stem}.seed{seed}{out.suffix or '.yaml'}")


def export(
    experiment_dir: str | Path,
    out: str | Path,
    *,
    rank_by: str = "objective",
    scope: str = "best",
    seeds: Sequence[int] | None = None,
    retrain_full: bool = False,
    trial_id: str | None = None,
    force: bool = False,
) -> tuple[list[Path], dict[str, Any], list[str]]:
    """Write the chosen trial's config(s); returns (files written, the source block, notes).

    The notes start with the chosen trial's problems (``trial ID: FILE: WHAT; CONSEQUENCE``, see
    :mod:`analysis.experiment`), then say why a trial that is not complete was exported, and whether its
    config was rebuilt.

    Raises:
        AnalysisError: bad input (see :func:`choose`), an existing output file without ``force``,
            repeated or negative seeds, an unknown scope; the chosen trial's searched values are unknown
            (damaged ``params.json`` and no other source; also when it was chosen by ``rank_by``: the
            message says to name another with ``--trial``), see :func:`exported_config`.
    """
    if scope not in SCOPES:
        raise AnalysisError(f"scope {scope!r} is unknown; valid: {', '.join(SCOPES)}")
    pareto_index(rank_by)  # a bad --rank-by fails before any work
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise AnalysisError(f"--out {str(out)!r}: give a .yaml file to write (e.g. best.yaml)")
    if out.is_dir():
        raise AnalysisError(f"--out {str(out)!r} is a folder: give a .yaml file to write (e.g. best.yaml)")
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise AnalysisError(f"--seeds {' '.join(map(str, seeds))}: give distinct seeds >= 0")
    targets = [out] if seeds is None else [_seed_path(out, s) for s in seeds]
    experiment = load_experiment(experiment_dir)
    if trial_id is not None:
        experiment.trial(trial_id)  # an unknown id fails here, listing the trials
    table = build_table(experiment, scope, require_finished=trial_id is None)
    row, metric, value = choose(experiment, table, rank_by, trial_id)
    trial = experiment.trial(row["trial_id"])
    if trial_id is None and trial.unknown_params:
        try:
            exported_config(experiment, trial.trial_id)
        except AnalysisError as err:
            raise AnalysisError(f"{err}; it is the best trial by {rank_by}: export another one with "
                                "--trial ID") from None
    notes = [f"trial {trial.trial_id}: {problem}" for problem in trial.problems]
    if trial.status != "complete":
        notes.append(f"trial {trial.trial_id} is {trial.status} ({trial.epochs_run}/{trial.epochs} epochs"
                     + (f"; {trial.error}" if trial.error else "") + "): exported because it was named")
    source = {
        "experiment": str(experiment.path.resolve()),
        "trial_id": trial.trial_id,
        "metric": metric,
        "scope": scope,
        "epoch": None if pd.isna(row["epoch"]) else int(row["epoch"]),
        "value": value,
        "trial_seed": trial.seed,
    }
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise AnalysisError(
            f"refusing to overwrite {', '.join(existing)}: pass --force, or choose another --out"
        )
    written = []
    for target, seed in zip(targets, [None] if seeds is None else seeds):
        config, config_notes = exported_config(
            experiment, trial.trial_id, seed=seed, retrain_full=retrain_full
        )
        for note in config_notes:
            if note not in notes:
                notes.append(note)
        header = (f"# exported by analysis.export from {source['experiment']} (trial {trial.trial_id});\n"
                  f"# run it with: python -m hiercls.train --config {target}\n")
        body = yaml.safe_dump({"source": source}, sort_keys=False) + yaml.safe_dump(config, sort_keys=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(header + body, encoding="utf-8")
        written.append(target)
    return written, source, notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.export",
        description="Write a search trial's full training config (plus a source: block) for "
        "python -m hiercls.train --config FILE.",
    )
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR", help="the search's STORAGE_PATH/NAME folder")
    parser.add_argument("--out", required=True, metavar="FILE.yaml", help="the config file to write")
    parser.add_argument("--rank-by", default="objective", metavar="METRIC",
                        help=f"choose the complete trial with the lowest METRIC at its scope epoch; one of "
                        f"{_valid_rank_by()} (objective = the search's own objective, as tune_main.py "
                        "ranks; pareto:0 = the (error, severity) front's lowest error; default: objective)")
    parser.add_argument("--scope", choices=SCOPES, default="best",
                        help="which epoch of each trial: best (lowest search objective) or last "
                        "(default: best)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="write one config per seed: OUT.seed0.yaml, ... (default: the trial's seed)")
    parser.add_argument("--retrain-full", action="store_true",
                        help="val_size 0 (and no max_train_samples), same epochs: the final run on all "
                        "50,000 training images")
    parser.add_argument("--trial", metavar="ID", default=None,
                        help="export this trial whatever its status (also NaN, errored, stopped early)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--search-best", action="store_true",
                        help="in a confirmed experiment (hiercls-confirm), export the search's own choice "
                        "instead of the confirmed winner")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 2 on bad input (the error on stderr)."""
    return run_cli(build_parser(), argv, _export)


def confirmed_winner(experiment: str | Path) -> str | None:
    """The source trial of the winner of ``EXPERIMENT/confirm/table.csv`` (``hiercls-confirm``: the
    configuration with the lowest mean validation objective over its seeds), or None when the experiment
    was not confirmed (or the table names no winner).

    Raises:
        AnalysisError: the table is unreadable.
    """
    path = Path(experiment) / "confirm" / "table.csv"
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"source_trial": str})
        winners = table[table["winner"].astype(bool)]
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
        raise AnalysisError(f"{str(path)!r} is not a readable confirmation table ({err}); pass --search-best "
                            "to export the search's own choice") from err
    return str(winners["source_trial"].iloc[0]) if len(winners) else None


def _export(args: argparse.Namespace) -> int:
    trial_id = args.trial
    if trial_id is None and args.rank_by == "objective" and not args.search_best:
        trial_id = confirmed_winner(args.experiment)
        if trial_id is not None:
            print(f"note: exporting the confirmed winner, trial {trial_id} (confirm/table.csv: the lowest "
                  "mean validation objective over its seeds; --search-best exports the search's own choice)")
    written, source, notes = export(
        args.experiment, args.out, rank_by=args.rank_by, scope=args.scope, seeds=args.seeds,
        retrain_full=args.retrain_full, trial_id=trial_id, force=args.force,
    )
    for note in notes:
        print(f"note: {note}")
    value = source["value"]
    shown = (", ".join(f"{k} {v:.4f}" for k, v in value.items() if v is not None) if isinstance(value, dict)
             else "nan" if value is None else f"{value:.6g}")
    if source["epoch"] is None:
        print(f"trial {source['trial_id']}: no epoch reported (its config is exported as it was searched)")
    else:
        print(f"trial {source['trial_id']}: {source['metric']} {shown} at epoch {source['epoch']} "
              f"(scope {source['scope']})")
    for path in written:
        print(f"wrote {path}: python -m hiercls.train --config {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
