"""Paper tables and trade-off plots of a confirmed experiment: ``python -m analysis.report``.

::

    python -m analysis.report runs/tune/joint                  # writes runs/tune/joint/confirm/report/
    python -m analysis.report runs/tune/joint/confirm --reference published.csv --out paper/ --overwrite

Reads ``confirm/runs.csv`` (``hiercls-confirm``'s runs: errors as fractions, mistake severity and hdist@k
in LCA heights) and writes at once, atomically, into ``--out`` (default ``EXPERIMENT/confirm/report/``):

* ``table.md`` / ``table.tex`` (booktabs): Method | Top-1 error (%) | Mistake severity | hdist@1 | hdist@5
  | hdist@20 | seeds, one row per label (baseline first, then the candidates in file order), "mean ± std"
  over seeds (sample std, ddof 1; one seed: the mean alone, footnoted); top-1 error in percent as in the
  field's tables (Bertinetto et al. CVPR 2020, BiLT, HAFrame), distances as plain numbers;
* ``table.csv``: label, role, n, ``<metric>_mean``/``<metric>_std`` of :data:`METRICS` as fractions (not
  percent; coarse error too), source (``this work`` or the reference's citation);
* ``tradeoff.png`` / ``tradeoff.pdf``: top-1 error (%) against mistake severity and against hdist@5, each
  label at its mean with bars of ± the 95 % Student-t half-width t(0.975, n-1) * s / sqrt(n) (none for one
  seed); published rows hollow, without bars.

``--reference FILE`` appends published rows (after a rule, with a Source column): a CSV with columns of
:data:`REFERENCE_COLUMNS` (``method`` required; empty cells allowed), ``top1_error`` in percent as printed
in papers, ``<metric>_std`` an optional spread in the same unit.

Runs without a finite test top-1 error (failed, unfinished) are left out and counted on stdout. Bad input:
one line on stderr, exit status 2, nothing written; an OS error while writing: exit status 3
(:mod:`hiercls.storage`), an earlier report left intact.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.experiment import AnalysisError, run_cli
from analysis.rank import markdown_table
from hiercls.storage import EXIT_WRITE, StorageError, atomic_write_files

__all__ = ["METRICS", "OUTPUTS", "REFERENCE_COLUMNS", "find_confirm", "main", "read_reference",
           "summarize_runs"]

RUNS_FILE = "runs.csv"
METRICS = ("top1_error", "mistake_severity", "hdist@1", "hdist@5", "hdist@20", "coarse_error")
TABLE_METRICS = METRICS[:5]  # the table's columns; coarse error is in table.csv only (optional in runs.csv)
HEADERS = ("Top-1 error (%)", "Mistake severity", "hdist@1", "hdist@5", "hdist@20")
PERCENT = ("top1_error", "coarse_error")  # fractions in runs.csv and table.csv, percent in the tables
REFERENCE_COLUMNS = ("method", "source", *TABLE_METRICS, *(f"{m}_std" for m in TABLE_METRICS))
OUTPUTS = ("table.md", "table.tex", "table.csv", "tradeoff.png", "tradeoff.pdf")
OWN = "this work"
ONE_SEED = "one seed: no spread"


def find_confirm(path: str | Path) -> Path:
    """The confirm folder of ``path`` (an experiment folder, or its ``confirm/`` folder).

    Raises:
        AnalysisError: ``path`` is not a folder, or holds no ``confirm/runs.csv``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AnalysisError(f"experiment folder {str(folder)!r} does not exist")
    for confirm in (folder / "confirm", folder):
        if (confirm / RUNS_FILE).is_file():
            return confirm
    raise AnalysisError(f"{str(folder)!r} has no confirm/{RUNS_FILE}: run hiercls-confirm first")


def _t_halfwidth(x: np.ndarray) -> float:
    """Half-width of the 95 % Student-t interval of the mean, t(0.975, n-1) * s / sqrt(n) (s: ddof 1);
    NaN for n < 2. The fallback of :func:`analysis.stats.t_interval` (the same formula)."""
    from scipy import stats

    if len(x) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))


def _halfwidth(x: np.ndarray) -> float:
    try:
        from analysis.stats import t_interval
    except ImportError:
        return _t_halfwidth(x)
    _, _, low, high = t_interval(x, 0.95)
    return (high - low) / 2.0


def summarize_runs(runs: pd.DataFrame, where: str = RUNS_FILE) -> tuple[list[dict[str, Any]], list[str]]:
    """One summary per label of the finished runs (finite ``test_top1_error``) of a ``runs.csv`` table.

    Returns ``(rows, notes)``: rows in report order (baseline first), dicts of ``label``, ``role``, ``n``,
    ``source`` and ``mean``/``std`` (ddof 1)/``hw`` (95 % t half-width; both NaN for one seed) keyed by
    :data:`METRICS` in runs.csv's units (``coarse_error`` may be NaN: optional); notes on runs left out.

    Raises:
        AnalysisError: a column of :data:`TABLE_METRICS` or ``label`` is missing, a metric cell is not a
            number, no run is finished, or a finished run of a label lacks a metric the others have.
    """
    needed = ["label", *(f"test_{m}" for m in TABLE_METRICS)]
    missing = [c for c in needed if c not in runs.columns]
    if missing:
        raise AnalysisError(f"{where} lacks the column(s) {', '.join(missing)}; is it hiercls-confirm's?")
    values = {}
    for m in METRICS:
        column = f"test_{m}"
        try:
            values[m] = (pd.to_numeric(runs[column]).to_numpy(dtype=float) if column in runs.columns
                         else np.full(len(runs), np.nan))
        except (ValueError, TypeError) as err:
            raise AnalysisError(f"{where}: column {column} holds a non-number ({err})") from err
    finished = np.isfinite(values["top1_error"])
    if not finished.any():
        raise AnalysisError(f"{where} has no finished run (none has a finite test_top1_error): let "
                            "hiercls-confirm finish, or rerun it")
    labels = runs["label"].fillna("").astype(str).to_numpy()
    roles = runs["role"].fillna("").astype(str).to_numpy() if "role" in runs.columns else [""] * len(runs)
    seeds = (runs["seed"] if "seed" in runs.columns else pd.Series(range(len(runs)))).astype(str).to_numpy()
    role_of: dict[str, str] = {}
    for label, role in zip(labels, roles):
        role_of.setdefault(label, role)
    order = sorted(dict.fromkeys(labels[finished]), key=lambda lab: role_of[lab] != "baseline")
    notes = []
    if (~finished).sum():
        notes.append(f"left out {int((~finished).sum())} run(s) without a finite test_top1_error "
                     "(failed or unfinished)")
    dropped = [lab for lab in dict.fromkeys(labels) if lab not in order]
    if dropped:
        notes.append(f"no finished run, not reported: {', '.join(dropped)}")
    rows = []
    for label in order:
        pick = finished & (labels == label)
        row: dict[str, Any] = {"label": label, "role": role_of[label] or "candidate", "n": int(pick.sum()),
                               "source": OWN, "mean": {}, "std": {}, "hw": {}}
        for m in METRICS:
            x = values[m][pick]
            ok = np.isfinite(x)
            if not ok.all() and (m != "coarse_error" or ok.any()):
                raise AnalysisError(f"{where}: label {label!r}: {int((~ok).sum())} of {len(x)} finished runs "
                                    f"have no test_{m} (seed {', '.join(seeds[pick][~ok])})")
            row["mean"][m] = float(x.mean()) if ok.all() else math.nan
            row["std"][m] = float(x.std(ddof=1)) if len(x) > 1 and ok.all() else math.nan
            row["hw"][m] = _halfwidth(x) if ok.all() else math.nan
        rows.append(row)
    return rows, notes


def read_reference(path: str | Path) -> list[dict[str, Any]]:
    """Published rows from a reference CSV (:data:`REFERENCE_COLUMNS`), as summaries like those of
    :func:`summarize_runs` (``n`` None, ``role`` ``reference``, no half-widths) in runs.csv's units:
    ``top1_error`` and its std are read in percent and returned as fractions. Empty cells are NaN.

    Raises:
        AnalysisError: the file is missing or unreadable, a column is unknown or ``method`` is missing, a
            method is empty, a value is not a finite number >= 0 (top-1 error at most 100), or a std is
            given without its value.
    """
    file = Path(path)
    if not file.is_file():
        raise AnalysisError(f"--reference {str(file)!r} does not exist")
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnalysisError(f"--reference {str(file)!r} cannot be read: {reason}") from err
    table = table.fillna("")  # a short line leaves its last cells NaN
    table.columns = [str(c).strip() for c in table.columns]
    unknown = [c for c in table.columns if c not in REFERENCE_COLUMNS]
    if unknown or "method" not in table.columns:
        what = f"unknown column(s) {', '.join(unknown)}" if unknown else "no method column"
        raise AnalysisError(f"--reference {str(file)!r}: {what}; valid: {', '.join(REFERENCE_COLUMNS)}")
    rows = []
    for i, record in enumerate(table.to_dict("records")):
        line = f"--reference {str(file)!r} line {i + 2}"
        method = record["method"].strip()
        if not method:
            raise AnalysisError(f"{line}: the method is empty")
        row: dict[str, Any] = {"label": method, "role": "reference", "n": None,
                               "source": record.get("source", "").strip(), "mean": {}, "std": {}, "hw": {}}
        for m in METRICS:
            for kind, column in (("mean", m), ("std", f"{m}_std")):
                text = record.get(column, "").strip()
                try:
                    value = float(text) if text else math.nan
                except ValueError:
                    raise AnalysisError(f"{line}: {column} {text!r} is not a number") from None
                limit = 100.0 if m == "top1_error" else math.inf
                if text and not (math.isfinite(value) and 0.0 <= value <= limit):
                    valid = "in 0..100 (percent)" if m == "top1_error" else ">= 0"
                    raise AnalysisError(f"{line}: {column} {text!r} is not a finite number {valid}")
                row[kind][m] = value / 100.0 if m in PERCENT else value
            row["hw"][m] = math.nan
            if math.isfinite(row["std"][m]) and not math.isfinite(row["mean"][m]):
                raise AnalysisError(f"{line}: {m}_std is given without {m}")
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], m: str, digits: int, latex: bool) -> str:
    scale = 100.0 if m in PERCENT else 1.0
    mean, std = row["mean"][m] * scale, row["std"][m] * scale
    if not math.isfinite(mean):
        return "--" if latex else "–"
    pm = " $\\pm$ " if latex else " ± "
    return f"{mean:.{digits}f}" + (f"{pm}{std:.{digits}f}" if math.isfinite(std) else "")


def _seeds(row: dict[str, Any], latex: bool) -> str:
    if row["n"] is None:
        return "--" if latex else "–"
    return f"{row['n']}" + (("$^*$" if latex else "\\*") if row["n"] == 1 else "")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``_`` -> ``\\_``, ``%`` -> ``\\%``, ...)."""
    return "".join(_TEX.get(c, c) for c in text)


def _cells(rows: Sequence[dict[str, Any]], digits: int, latex: bool, sources: bool) -> list[list[str]]:
    name = tex_escape if latex else str
    return [[name(r["label"]), *(_cell(r, m, digits, latex) for m in TABLE_METRICS), _seeds(r, latex)]
            + ([name(r["source"])] if sources else []) for r in rows]


def markdown_report(own: Sequence[dict], refs: Sequence[dict], digits: int) -> str:
    """``table.md``: the table (the published rows after the own ones, with a Source column) and notes."""
    header = ["Method", *HEADERS, "seeds", *(["Source"] if refs else [])]
    text = markdown_table(header, _cells([*own, *refs], digits, False, bool(refs)))
    notes = ["Mean ± sample standard deviation over seeds (ddof 1); top-1 error in percent; mistake severity "
             "and hdist@k in LCA heights of the class hierarchy."]
    if any(r["n"] == 1 for r in own):
        notes.append(f"\\* {ONE_SEED}.")
    if refs:
        notes.append("Published rows as reported by their source (– : not reported).")
    return text + "\n\n" + "\n\n".join(notes) + "\n"


def latex_report(own: Sequence[dict], refs: Sequence[dict], digits: int) -> str:
    """``table.tex``: a booktabs ``tabular``; published rows after a second ``\\midrule``."""
    width = 7 + bool(refs)
    header = ["Method", *(tex_escape(h) for h in HEADERS), "Seeds", *(["Source"] if refs else [])]
    lines = ["% python -m analysis.report: mean $\\pm$ sample std over seeds; top-1 error in percent",
             f"\\begin{{tabular}}{{l{'r' * 6}{'l' if refs else ''}}}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    lines += [" & ".join(c) + " \\\\" for c in _cells(own, digits, True, bool(refs))]
    if refs:
        lines += ["\\midrule", *(" & ".join(c) + " \\\\" for c in _cells(refs, digits, True, True))]
    lines.append("\\bottomrule")
    if any(r["n"] == 1 for r in own):
        lines.append(f"\\multicolumn{{{width}}}{{l}}{{\\footnotesize $^*$ {ONE_SEED}}} \\\\")
    return "\n".join([*lines, "\\end{tabular}"]) + "\n"


def csv_report(rows: Sequence[dict[str, Any]]) -> str:
    """``table.csv``: label, role, n, ``<metric>_mean``/``<metric>_std`` (fractions, LCA heights), source."""
    records = [{"label": r["label"], "role": r["role"], "n": r["n"],
                **{f"{m}_{k}": r[k][m] for m in METRICS for k in ("mean", "std")}, "source": r["source"]}
               for r in rows]
    table = pd.DataFrame(records)
    table["n"] = table["n"].astype("Int64")
    return table.to_csv(index=False)


def tradeoff_figure(own: Sequence[dict], refs: Sequence[dict]):
    """Top-1 error (%) against mistake severity (left) and hdist@5 (right): own labels filled (the
    baseline a square) with ± 95 % t half-width bars, published rows hollow diamonds without bars."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    colours = colormaps["tab10"]
    for ax, m in zip(fig.subplots(1, 2), ("mistake_severity", "hdist@5")):
        for i, row in enumerate([*own, *refs]):
            x, y = row["mean"]["top1_error"] * 100, row["mean"][m]
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            if row["n"] is None:
                ax.plot(x, y, marker="D", markerfacecolor="none", markeredgecolor="0.35", linestyle="none")
            else:
                xerr, yerr = row["hw"]["top1_error"] * 100, row["hw"][m]
                ax.errorbar(x, y, xerr=xerr if math.isfinite(xerr) else None,
                            yerr=yerr if math.isfinite(yerr) else None, capsize=3, color=colours(i % 10),
                            fmt="s" if row["role"] == "baseline" else "o")
            ax.annotate(row["label"], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_xlabel("Top-1 error (%)")
        ax.set_ylabel(f"{HEADERS[TABLE_METRICS.index(m)]} (LCA height)")
        ax.grid(alpha=0.3)
    fig.suptitle("Test metrics: mean ± 95% t-interval over seeds" + (" (hollow: published)" if refs else ""),
                 fontsize=9)
    return fig


def _figure_bytes(fig, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=150, metadata={"Software": None} if fmt == "png" else None)
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Paper tables (Markdown, LaTeX, CSV) and trade-off plots of a confirmed experiment: "
        "mean ± std over seeds per label, optionally beside published rows.",
    )
    parser.add_argument("experiment", metavar="CONFIRMED_EXPERIMENT",
                        help="the experiment folder (or its confirm/ folder) holding confirm/runs.csv")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: CONFIRMED_EXPERIMENT/confirm/report)")
    parser.add_argument("--reference", metavar="FILE", default=None,
                        help="CSV of published rows: " + ",".join(REFERENCE_COLUMNS[:7])
                        + " (top-1 error in percent; optional <metric>_std columns)")
    parser.add_argument("--digits", type=int, default=2, metavar="N",
                        help="decimals in the tables (default: 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 2 on bad input, 3 on an OS error while writing (the error on stderr)."""
    parser = build_parser()

    def command(args: argparse.Namespace) -> int:
        try:
            return _report(args)
        except StorageError as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return EXIT_WRITE

    return run_cli(parser, argv, command)


def _report(args: argparse.Namespace) -> int:
    if not 0 <= args.digits <= 10:
        raise AnalysisError(f"--digits {args.digits} is out of range; valid: 0..10")
    confirm = find_confirm(args.experiment)
    out = Path(args.out) if args.out else confirm / "report"
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {str(out)!r} is a file, not a folder")
    refs = read_reference(args.reference) if args.reference else []  # its errors first
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        raise AnalysisError(f"refusing to overwrite the report in {str(out)!r} ({', '.join(existing)}): pass "
                            "--overwrite, or choose another --out")
    where = str(confirm / RUNS_FILE)
    try:
        runs = pd.read_csv(confirm / RUNS_FILE, dtype={"label": str, "role": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise AnalysisError(f"{where!r} cannot be read: {str(err).strip() or type(err).__name__}") from err
    own, notes = summarize_runs(runs, where)
    tops = [r["mean"]["top1_error"] for r in refs if math.isfinite(r["mean"]["top1_error"])]
    if tops and max(tops) <= 0.01:  # CIFAR-100 errors are tens of percent: fractions written by mistake?
        notes.append(f"every top1_error in --reference {args.reference!r} is at most 1: the column is read "
                     "in percent (35.2 means 35.2 %), so these rows show errors under 1 %")
    figure = tradeoff_figure(own, refs)
    files = {"table.md": markdown_report(own, refs, args.digits).encode(),
             "table.tex": latex_report(own, refs, args.digits).encode(),
             "table.csv": csv_report([*own, *refs]).encode(),
             "tradeoff.png": _figure_bytes(figure, "png"), "tradeoff.pdf": _figure_bytes(figure, "pdf")}
    atomic_write_files([(out / name, data) for name, data in files.items()])
    for note in notes:
        print(f"note: {note}")
    print(files["table.md"].decode(), end="")
    print(f"wrote {', '.join(str(out / name) for name in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
