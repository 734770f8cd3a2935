"""analysis.report: paper tables (Markdown, LaTeX, CSV) and trade-off plots from a fake confirm/runs.csv."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.report import METRICS, OUTPUTS, _t_halfwidth, main, summarize_runs, tradeoff_figure

BASELINE = "cross-entropy"
CANDIDATE = "hxe_a=0.4 (trial 00003)"  # an underscore for the LaTeX escape


def _run(label, role, seed, top1, sev, h1, h5, h20, coarse=0.2, status="finished"):
    return {"label": label, "role": role, "source_trial": "", "seed": seed, "status": status,
            "test_top1_error": top1, "test_mistake_severity": sev, "test_hdist@1": h1, "test_hdist@5": h5,
            "test_hdist@20": h20, "test_coarse_error": coarse, "path": f"confirm/trial_{label}_{seed}"}


def _runs():
    """Candidates first in the file, so the report must move the baseline up; one failed run."""
    return [
        _run(CANDIDATE, "candidate", 0, 0.28, 1.90, 0.50, 1.40, 2.30, 0.15),
        _run(BASELINE, "baseline", 0, 0.30, 2.00, 0.60, 1.50, 2.50, 0.20),
        _run(CANDIDATE, "candidate", 1, 0.29, 1.95, 0.52, 1.45, 2.30, 0.16),
        _run(BASELINE, "baseline", 1, 0.31, 2.10, 0.62, 1.60, 2.50, 0.21),
        _run(CANDIDATE, "candidate", 2, 0.33, 2.00, 0.54, 1.50, 2.30, 0.17),
        _run(BASELINE, "baseline", 2, 0.32, 2.20, 0.64, 1.70, 2.50, 0.22),
        _run(BASELINE, "baseline", 3, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, "error"),
    ]


def _experiment(tmp_path, rows=None):
    exp = tmp_path / "exp"
    (exp / "confirm").mkdir(parents=True)
    pd.DataFrame(_runs() if rows is None else rows).to_csv(exp / "confirm" / "runs.csv", index=False)
    return exp


def _reference(tmp_path, text=None):
    path = tmp_path / "published.csv"
    path.write_text(text if text is not None else (
        "method,top1_error,top1_error_std,mistake_severity,hdist@1,hdist@5,hdist@20,source\n"
        "Soft labels beta=30,29.41,0.35,1.79,,1.52,2.12,Bertinetto et al. 2020\n"
        "HAF,23.45,,2.10,0.51,,,Garg et al. 2022 & co\n"
        "Short line,25\n"), encoding="utf-8")
    return path


def _md_rows(text):
    """The Markdown table's body rows as lists of cells (header and separator dropped)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def test_tables_hold_mean_and_sample_std_in_report_order(tmp_path, capsys):
    exp = _experiment(tmp_path)
    assert main([str(exp)]) == 0
    out = exp / "confirm" / "report"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    printed = capsys.readouterr().out
    assert "left out 1 run(s)" in printed and "wrote" in printed

    text = (out / "table.md").read_text(encoding="utf-8")
    header = "| Method | Top-1 error (%) | Mistake severity | hdist@1 | hdist@5 | hdist@20 | seeds |"
    assert text.startswith(header + "\n")
    rows = _md_rows(text)
    # baseline first although the file lists a candidate first; the failed seed 3 is left out
    assert rows[0] == [BASELINE, "31.00 ± 1.00", "2.10 ± 0.10", "0.62 ± 0.02", "1.60 ± 0.10", "2.50 ± 0.00",
                       "3"]
    # candidate top-1: 28, 29, 33 % -> mean 30, std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7) = 2.6458
    assert rows[1] == [CANDIDATE, "30.00 ± 2.65", "1.95 ± 0.05", "0.52 ± 0.02", "1.45 ± 0.05", "2.30 ± 0.00",
                       "3"]
    assert "Source" not in text and "one seed" not in text

    table = pd.read_csv(out / "table.csv")
    assert list(table["label"]) == [BASELINE, CANDIDATE]
    assert list(table["source"]) == ["this work", "this work"]
    assert list(table["n"]) == [3, 3] and list(table["role"]) == ["baseline", "candidate"]
    base = table.iloc[0]
    expected = {"top1_error": (0.31, 0.01), "mistake_severity": (2.1, 0.1), "hdist@1": (0.62, 0.02),
                "hdist@5": (1.6, 0.1), "hdist@20": (2.5, 0.0), "coarse_error": (0.21, 0.01)}
    for metric, (mean, std) in expected.items():  # fractions, not percent
        assert base[f"{metric}_mean"] == pytest.approx(mean)
        assert base[f"{metric}_std"] == pytest.approx(std, abs=1e-12)
    assert table.iloc[1]["top1_error_std"] == pytest.approx(math.sqrt(7) / 100)

    tex = (out / "table.tex").read_text(encoding="utf-8")
    for needle in ("\\begin{tabular}{lrrrrrr}", "\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}",
                   "Top-1 error (\\%)", "hxe\\_a=0.4 (trial 00003)", "31.00 $\\pm$ 1.00"):
        assert needle in tex
    assert tex.index("cross-entropy") < tex.index("hxe\\_a")

    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "tradeoff.pdf").read_bytes()[:5] == b"%PDF-"


def test_confirm_folder_digits_and_out(tmp_path):
    exp = _experiment(tmp_path)
    assert main([str(exp / "confirm"), "--out", str(tmp_path / "paper"), "--digits", "3"]) == 0
    assert _md_rows((tmp_path / "paper" / "table.md").read_text(encoding="utf-8"))[0][1] == "31.000 ± 1.000"
    assert not (exp / "confirm" / "report").exists()


def test_interval_half_width_is_student_t(tmp_path):
    rows, _ = summarize_runs(pd.DataFrame(_runs()))
    # t(0.975, 2) = 4.302653 (scipy.stats.t.ppf); s = 0.01, n = 3
    expected = 4.302653 * 0.01 / math.sqrt(3)
    assert rows[0]["hw"]["top1_error"] == pytest.approx(expected, rel=1e-6)
    assert _t_halfwidth(np.array([0.30, 0.31, 0.32])) == pytest.approx(expected, rel=1e-6)  # the fallback
    assert math.isnan(_t_halfwidth(np.array([0.3])))


def test_one_seed_shows_the_mean_alone_with_a_footnote(tmp_path):
    rows = [r for r in _runs() if r["label"] == BASELINE or r["seed"] == 0]
    exp = _experiment(tmp_path, rows)
    assert main([str(exp)]) == 0
    out = exp / "confirm" / "report"
    text = (out / "table.md").read_text(encoding="utf-8")
    candidate = _md_rows(text)[1]
    assert candidate[:2] == [CANDIDATE, "28.00"] and candidate[-1] == "1\\*"
    assert "\\* one seed: no spread." in text
    tex = (out / "table.tex").read_text(encoding="utf-8")
    assert "1$^*$" in tex and "one seed: no spread" in tex
    table = pd.read_csv(out / "table.csv")
    assert table.iloc[1]["n"] == 1 and math.isnan(table.iloc[1]["top1_error_std"])
    assert (out / "tradeoff.png").is_file()


def test_reference_rows_follow_with_their_source(tmp_path):
    exp = _experiment(tmp_path)
    assert main([str(exp), "--reference", str(_reference(tmp_path))]) == 0
    out = exp / "confirm" / "report"
    text = (out / "table.md").read_text(encoding="utf-8")
    rows = _md_rows(text)
    assert [r[0] for r in rows] == [BASELINE, CANDIDATE, "Soft labels beta=30", "HAF", "Short line"]
    assert rows[0][-1] == "this work"
    assert rows[2] == ["Soft labels beta=30", "29.41 ± 0.35", "1.79", "–", "1.52", "2.12", "–",
                       "Bertinetto et al. 2020"]
    assert rows[3][1] == "23.45" and rows[3][-1] == "Garg et al. 2022 & co"
    assert rows[4] == ["Short line", "25.00", "–", "–", "–", "–", "–", ""]

    tex = (out / "table.tex").read_text(encoding="utf-8")
    assert tex.count("\\midrule") == 2 and "Garg et al. 2022 \\& co" in tex
    assert tex.index("\\midrule", tex.index("hxe\\_a")) < tex.index("Soft labels")
    assert "\\begin{tabular}{lrrrrrrl}" in tex

    table = pd.read_csv(out / "table.csv")
    ref = table.iloc[2]
    assert ref["role"] == "reference" and ref["source"] == "Bertinetto et al. 2020" and pd.isna(ref["n"])
    assert ref["top1_error_mean"] == pytest.approx(0.2941) and ref["top1_error_std"] == pytest.approx(0.0035)
    assert ref["mistake_severity_mean"] == pytest.approx(1.79) and math.isnan(ref["hdist@1_mean"])
    assert (out / "tradeoff.pdf").is_file()


def test_a_reference_written_in_fractions_gets_a_note(tmp_path, capsys):
    exp = _experiment(tmp_path)
    assert main([str(exp), "--reference", str(_reference(tmp_path, "method,top1_error\nA,0.35\nB,\n"))]) == 0
    out = capsys.readouterr().out
    assert "note: every top1_error in --reference" in out and "35.2 means 35.2 %" in out
    rows = _md_rows((exp / "confirm" / "report" / "table.md").read_text(encoding="utf-8"))
    assert rows[2][:2] == ["A", "0.35"]
    # percent as documented: no note
    assert main([str(exp), "--reference", str(_reference(tmp_path)), "--overwrite"]) == 0
    assert "note: every top1_error" not in capsys.readouterr().out


def test_the_plot_title_mentions_published_rows_only_when_there_are_some():
    own = [{"label": "ce", "role": "baseline", "n": 3, "mean": {m: 0.5 for m in METRICS},
            "std": {m: 0.1 for m in METRICS}, "hw": {m: 0.2 for m in METRICS}}]
    ref = {**own[0], "label": "HAF", "role": "reference", "n": None}
    assert "published" not in tradeoff_figure(own, [])._suptitle.get_text()
    assert "(hollow: published)" in tradeoff_figure(own, [ref])._suptitle.get_text()


def _bad_reference(tmp_path, text):
    return ["--reference", str(_reference(tmp_path, text))]


REFUSALS = {
    "missing confirm": (lambda tmp: [str(tmp / "exp" / "nothing")], "run hiercls-confirm first"),
    "no finished run": (lambda tmp: [], "no finished run"),
    "missing metric": (lambda tmp: [], "have no test_hdist@5 (seed 1)"),
    "reference column": (lambda tmp: _bad_reference(tmp, "method,top1,source\nA,20,x\n"),
                         "unknown column(s) top1; valid: method, source, top1_error"),
    "reference number": (lambda tmp: _bad_reference(tmp, "method,top1_error\nA,twenty\n"),
                         "line 2: top1_error 'twenty' is not a number"),
    "reference percent": (lambda tmp: _bad_reference(tmp, "method,top1_error\nA,120\n"),
                          "in 0..100 (percent)"),
    "reference missing": (lambda tmp: ["--reference", str(tmp / "absent.csv")], "does not exist"),
    "digits": (lambda tmp: ["--digits", "-1"], "--digits -1 is out of range"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case):
    rows = _runs()
    if case == "no finished run":
        rows = [{**r, "test_top1_error": math.nan} for r in rows]
    if case == "missing metric":
        rows[3]["test_hdist@5"] = math.nan
    exp = _experiment(tmp_path, rows)
    (tmp_path / "exp" / "nothing").mkdir()
    extra, message = REFUSALS[case]
    args = extra(tmp_path)
    argv = args if case == "missing confirm" else [str(exp), *args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m analysis.report: error: ")
    assert message in lines[0]
    assert not (exp / "confirm" / "report").exists()


def test_an_earlier_report_is_kept_without_overwrite(tmp_path, capsys):
    exp = _experiment(tmp_path)
    assert main([str(exp)]) == 0
    out = exp / "confirm" / "report"
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    pd.DataFrame(_runs()[:2]).to_csv(exp / "confirm" / "runs.csv", index=False)  # different numbers now
    capsys.readouterr()
    assert main([str(exp)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "refusing to overwrite the report" in err[0] and "--overwrite" in err[0]
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary file left behind
    # a bad --reference is named first: not hidden behind the refusal to overwrite
    assert main([str(exp), "--reference", str(tmp_path / "absent.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "absent.csv' does not exist" in err[0]
    assert main([str(exp), "--overwrite"]) == 0
    assert (out / "table.md").read_bytes() != before["table.md"]


def test_an_os_error_while_writing_exits_3(tmp_path, capsys):
    exp = _experiment(tmp_path)
    (tmp_path / "plain-file").write_text("not a folder", encoding="utf-8")
    assert main([str(exp), "--out", str(tmp_path / "plain-file" / "report")]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("python -m analysis.report: error: cannot write")
