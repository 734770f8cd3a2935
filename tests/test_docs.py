"""The docs are current and every command they give works: a doc command that no longer works fails CI.

Pages: ``README.md`` and every ``docs/**/*.md`` but ``docs/results/``. The generated pages
(``docs/reference/``) must equal what ``docs/generate.py`` writes from the code. ``docs/results/*.md``
record commands that were run (with their dates and figures): they are records, not instructions, so they
hold no ``bash`` fence (their commands are inline or in ``text`` fences) and are not run; a test checks
that they hold none.

Commands: every line of a ```` ```bash ```` fence (lines joined at a trailing backslash, ``# comments``
dropped, ``A && B`` two commands, leading ``VAR=value`` assignments dropped). A fence whose first line is
``#!`` is a script (the SLURM job in docs/operations.md): ``bash -n`` checks its syntax, and each of its
hiercls commands is checked like any other, its shell variables replaced by sample values
(:data:`SCRIPT_VARIABLES`); its other lines (``srun``, ``scontrol``, ...) are shell, run only under SLURM.

Each command has a kind (:func:`classify`); one of no known kind fails
``test_every_doc_command_has_a_check``, so a new kind of doc command needs a check here. The commands of
one fence run in order, in a fresh working folder (``search_spaces/`` linked in), with
``$HIERCLS_DATA_DIR`` at a folder that has CIFAR-100's layout (so "found" never depends on this machine):

* ``python tune_main.py`` / ``hiercls-tune``: ``main(argv + ["--check"])`` returns 0, with
  ``--storage-path`` in the working folder. A ``--resume`` command checks against a real toy search of
  that name (``--trainable toy``, made once per module: the slow lane); ``--help`` runs as it is.
* ``python -m hiercls.train`` / ``hiercls-train``: the training CLI's ``--check`` returns 0 and prints the
  resolved config (YAML). A relative data folder the command names is created empty (a run would have
  torchvision download into it). A ``--config FILE`` that no earlier command of the fence wrote is written
  first by a real ``analysis.export`` of the toy search (slow lane); a shipped recipe's name (``--config
  speedrun``) is checked as it is (fast lane).
* ``python -m analysis.rank`` / ``analysis.export``: run for real against the toy search; every
  ``runs/tune/NAME`` experiment path is rewritten to it (the docs' PB2 and constrained experiments
  included: the toy search is a constrained TPE search, with a loose bound). ``analysis.confirm`` and
  ``analysis.report``: run for real on a copy of the toy search made once per fence (toy runs, the toy
  search's trainable). ``analysis.compare``: its run
  folders are trained for real first from the fence's exported ``*.seedN.yaml`` (tiny runs on the real
  data: the realdata lane), then it runs for real.
* ``python -m hiercls.evaluate``: a tiny real training run is made in the folder it names (realdata),
  then it runs for real.
* ``python -m hiercls.data locate``, ``python -m hiercls.hierarchy show``, ``python -m hiercls.schedules
  plot``: run for real. ``python docs/generate.py`` (with or without ``--check``): its ``--check`` returns
  0 (the write form is not run: it would rewrite the pages).
* ``pip install -e ".[EXTRAS]"``: the extras exist in pyproject.toml; ``pip install NAME``: NAME is in
  :data:`EXTERNAL_PACKAGES` with the reason it is not installed here.
* ``python -m pytest ...``: the README's equals ``.ci/run``'s; any other names test files that exist.
* External programs: :data:`EXTERNAL`, each with the reason it cannot run here; their hiercls arguments
  are still checked: ``optuna-dashboard``'s journal is the toy search's, loaded with hiercls and with
  Optuna alone as docs/search.md says, a ``sqlite:///`` URL opens; ``tensorboard --logdir`` is an
  experiment folder holding event files.

Lanes: a fence of fast checks only runs in the fast lane; a fence that needs the toy search is ``slow``
(Ray); one that trains on the real data is ``slow`` and ``realdata``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml
from docpages import generator
from inprocess import run_main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 220
INSTALL_COMMAND = 'pip install -e ".[dev,embeddings]" && python tune_main.py --space search_spaces/smoke.yaml'

EXTERNAL = {
    "ray": "starts, stops or authenticates a Ray cluster node (tests/test_tune.py runs a two-node cluster on "
           "127.0.0.1 with a token itself); it would leave Ray processes on the test machine",
    "optuna-dashboard": "a web server that runs until stopped; its argument (the study) is checked",
    "tensorboard": "not a hiercls dependency, and a web server that runs until stopped; its --logdir is "
                   "checked",
}
"""Programs a doc command may run that the tests do not, with the reason."""
EXTERNAL_PACKAGES = {
    "tensorboard": "not a hiercls dependency (docs/search.md installs it to read Ray's event files); the "
                   "tests install nothing",
}
"""Packages a doc's ``pip install NAME`` may name, with the reason it is not installed here."""
SCRIPT_VARIABLES = {"head_ip": "10.0.0.1", "port": "6379", "SLURM_JOB_ID": "4242",
                    "SLURM_CPUS_PER_TASK": "16", "head": "node1", "node": "node2",
                    "SLURM_JOB_NODELIST": "node[1-4]"}
"""Sample values of the shell variables in a script fence's hiercls commands."""

MODULES = {
    "hiercls.train": "train", "hiercls.evaluate": "evaluate", "analysis.rank": "rank",
    "analysis.export": "export", "analysis.compare": "compare", "hiercls.data": "data",
    "hiercls.hierarchy": "hierarchy", "hiercls.schedules": "schedules", "pytest": "pytest", "pip": "pip",
    "analysis.confirm": "confirm", "analysis.report": "report",
}
SCRIPTS = {"tune_main.py": "tune", "docs/generate.py": "generate"}
CONSOLE_SCRIPTS = {"hiercls-tune": "tune", "hiercls-train": "train", "hiercls-evaluate": "evaluate",
                   "hiercls-rank": "rank", "hiercls-export": "export", "hiercls-compare": "compare",
                   "hiercls-confirm": "confirm", "hiercls-report": "report"}
ENTRY = {"tune": "tune_main", "train": "hiercls.train", "evaluate": "hiercls.evaluate",
         "rank": "analysis.rank", "export": "analysis.export", "compare": "analysis.compare",
         "data": "hiercls.data.__main__", "hierarchy": "hiercls.hierarchy",
         "schedules": "hiercls.schedules.plot", "confirm": "analysis.confirm", "report": "analysis.report"}
"""The module whose ``main(argv)`` each runnable kind calls (tests/inprocess.py)."""

FAST, TOY, REAL = 0, 1, 2
"""What a command needs: nothing slow; the toy search (Ray); the real data (a real training run)."""
EXPERIMENT = re.compile(r"^runs/tune/[\w.-]+(/.*)?$")
"""An experiment path in a doc command (rewritten to the toy search)."""
TOY_NAME = "joint"
"""The toy search's experiment name: the docs' example experiment, resumed and analysed."""
TOY_SPACE = {
    "num_samples": 6, "epochs": 2, "scheduler": "none", "max_concurrent": 2, "cpus_per_trial": 1,
    "startup_trials": 3, "objective": "val_top1_error",
    "constraints": ["val_top1_error <= baseline + 0.5"],  # loose: all trials feasible, a baseline recorded
    "train": {"architecture": "plainnet", "hierarchy": "cifar100-l5", "max_train_samples": 200,
              "val_size": 100, "batch_size": 50, "eval_batch_size": 500, "lr_schedule": "cosine",
              "amp": False, "device": "cpu"},
    "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
               "loss": {"type": "choice", "values": {
                   "cross-entropy": {},
                   "hierarchical-cross-entropy": {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9}}}}},
    # the baseline, then two points on the toy's (error, severity) front, so pareto:1 exists
    "points_to_evaluate": [{"loss": "cross-entropy", "lr": 0.05},
                           {"loss": "hierarchical-cross-entropy", "lr": 0.05, "alpha": 0.2},
                           {"loss": "hierarchical-cross-entropy", "lr": 0.05, "alpha": 0.8}],
}


# ---------------------------------------------------------------------------------------------- parsing
@dataclasses.dataclass(frozen=True)
class Fence:
    """One ```bash fence: its page, its first line's number, its text (dedented)."""

    page: Path
    line: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def script(self) -> bool:
        return self.text.startswith("#!")


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a fence: the text as written (one logical line) and its words."""

    fence: Fence
    text: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.fence.name}: {self.text}"


def doc_pages() -> list[Path]:
    """README.md and every docs page (docs/results/ is records: see the module docstring)."""
    return [README, *sorted(p for p in DOCS.rglob("*.md") if "results" not in p.relative_to(DOCS).parts)]


def fences(page: Path, language: str = "bash") -> list[Fence]:
    """The fences of ``language`` in ``page`` (also indented ones, in list items)."""
    out, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        opened = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not opened:
            i += 1
            continue
        indent, lang, start = len(opened.group(1)), opened.group(2), i + 1
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            i += 1
        if lang == language:
            out.append(Fence(page, start, "\n".join(line[indent:] for line in lines[start:i])))
        i += 1
    return out


def logical_lines(text: str) -> list[str]:
    """Lines joined at a trailing backslash; blank and comment lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            out.append(" ".join(current.split()))
        current = ""
    return out


def _script_variables(line: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: SCRIPT_VARIABLES[m.group(1)], line)


def commands(fence: Fence) -> list[Command]:
    """The commands of ``fence`` (a script's hiercls commands only, its variables replaced)."""
    lines = logical_lines(fence.text)
    if fence.script:
        lines = [_script_variables(line) for line in lines
                 if re.match(r"^(python (tune_main\.py|-m (hiercls|analysis)\.)|hiercls-)", line)]
    out = []
    for line in lines:
        words = shlex.split(line, comments=True)
        while words:
            part = words[:words.index("&&")] if "&&" in words else words
            words = words[len(part) + 1:]
            while part and re.match(r"^\w+=", part[0]):
                part = part[1:]
            out.append(Command(fence, line, tuple(part)))
    return out


def all_fences() -> list[Fence]:
    return [f for page in doc_pages() for f in fences(page)]


def classify(command: Command) -> tuple[str, list[str]] | None:
    """``(kind, arguments)`` of a command, or None for a command of no known kind."""
    words = list(command.words)
    if not words:
        return None
    if words[0] in ("python", "python3") and len(words) >= 2:
        if words[1] == "-m" and len(words) >= 3:
            module = words[2]
            if module in MODULES:
                return MODULES[module], words[3:]
            return None
        if words[1] in SCRIPTS:
            return SCRIPTS[words[1]], words[2:]
        return None
    if words[0] == "pip":
        return "pip", words[1:]
    if words[0] in CONSOLE_SCRIPTS:
        return CONSOLE_SCRIPTS[words[0]], words[1:]
    if words[0] in EXTERNAL:
        return "external", words
    return None


def needs(command: Command) -> int:
    """:data:`FAST`, :data:`TOY` or :data:`REAL` (see the module docstring)."""
    kind, args = classify(command)
    if kind in ("compare", "evaluate"):
        return REAL
    if kind in ("rank", "export", "confirm", "report") or (kind == "tune" and "--resume" in args) \
            or (kind == "train" and "--config" in args and not _recipe(_value(args, "--config"))):
        return TOY
    if kind == "external" and args[0] in ("optuna-dashboard", "tensorboard"):
        return TOY
    return FAST


def fence_params() -> list:
    out = []
    for fence in all_fences():
        cmds = [c for c in commands(fence) if classify(c) is not None]
        lane = max((needs(c) for c in cmds), default=FAST)
        marks = {FAST: (), TOY: (pytest.mark.slow,), REAL: (pytest.mark.slow, pytest.mark.realdata)}[lane]
        out.append(pytest.param(fence, lane, id=fence.name, marks=marks))
    return out


def ci_test_command() -> str:
    """The test command ``.ci/run`` runs (its one ``python -m pytest`` line)."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip().startswith("python -m pytest")]
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------------------------------------- the pages
def test_generated_pages_are_current():
    assert generator().stale_pages() == [], "run: python docs/generate.py"


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    first, second, *rest = fences(README)
    assert first.text.strip() == INSTALL_COMMAND
    assert second.text.strip() == ci_test_command()
    assert rest, "the README gives examples after the set-up commands"
    assert first.line < 25, "the set-up commands come first"
    assert "## " not in "\n".join(text.splitlines()[first.line:second.line]).replace("## Set up", "")


def test_the_readme_test_command_is_the_ci_test_command():
    assert "README's test command" in (ROOT / ".ci" / "run").read_text()
    assert fences(README)[1].text.strip() == ci_test_command()


def test_results_are_records_without_instructions():
    pages = sorted((DOCS / "results").rglob("*.md"))
    assert pages
    for page in pages:
        assert not fences(page), f"{page}: a record of commands that ran has no bash fence (use text)"


def test_readme_links_every_docs_page_and_every_link_resolves():
    readme = README.read_text(encoding="utf-8")
    for page in [*sorted(DOCS.glob("*.md")), *sorted((DOCS / "reference").glob("*.md"))]:
        assert f"]({page.relative_to(ROOT)}" in readme, f"README does not link {page.relative_to(ROOT)}"
    assert "](docs/results/" in readme
    for page in doc_pages():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.relative_to(ROOT)}: link to {target} (missing)"
            if anchor and path.suffix == ".md":
                assert anchor[1:] in _anchors(path), \
                    f"{page.relative_to(ROOT)}: {target}{anchor} (no such heading)"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_shipped_space_is_in_the_table_of_spaces():
    from hiercls.tune.spec import shipped_spaces

    text = (DOCS / "search.md").read_text(encoding="utf-8")
    for name in shipped_spaces():
        assert f"| `{name}.yaml` |" in text, name


def test_every_doc_command_has_a_check():
    found = [c for f in all_fences() for c in commands(f)]
    unknown = [str(c) for c in found if classify(c) is None]
    assert not unknown, \
        "doc commands of no known kind (add a check in tests/test_docs.py):\n" + "\n".join(unknown)
    kinds = {classify(c)[0] for c in found}
    # the README's examples and the pages' commands cover every kind of check
    assert {"tune", "train", "rank", "export", "compare", "evaluate", "pip", "pytest", "external"} <= kinds
    for c in found:
        if classify(c)[0] == "external":
            assert c.words[0] in EXTERNAL


def test_script_fences_are_valid_bash():
    scripts = [f for f in all_fences() if f.script]
    assert scripts, "docs/operations.md has the SLURM script"
    for fence in scripts:
        done = subprocess.run(["bash", "-n"], input=fence.text, text=True, capture_output=True, timeout=30)
        assert done.returncode == 0, f"{fence.name}: {done.stderr}"
        assert commands(fence), f"{fence.name}: no hiercls command found in the script"


# ---------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Context:
    """Where one fence's commands run, and what the lane provides."""

    cwd: Path
    toy: ToySearch | None = None
    cifar_dir: Path | None = None


@dataclasses.dataclass(frozen=True)
class ToySearch:
    storage: Path

    @property
    def experiment(self) -> Path:
        return self.storage / TOY_NAME


@pytest.fixture(scope="module")
def toy_search(ray_session, tmp_path_factory) -> ToySearch:
    """A real toy search (``tune_main.py --trainable toy``) named like the docs' example experiment."""
    root = tmp_path_factory.mktemp("toy")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(TOY_SPACE, sort_keys=False))
    storage = root / "runs" / "tune"
    done = run_main(["--space", space, "--name", TOY_NAME, "--storage-path", storage, "--trainable", "toy"],
                    "tune_main")
    assert done.returncode == 0, done.stderr
    assert (storage / TOY_NAME / "summary.csv").is_file()
    return ToySearch(storage)


def _run(command: Command, module: str, args: list) -> subprocess.CompletedProcess:
    done = run_main(args, module)
    assert done.returncode == 0, f"{command}\n-> {' '.join(map(str, args))}\n{done.stderr[-3000:]}"
    return done


def _value(args: list[str], *flags: str) -> str | None:
    for i, word in enumerate(args):
        if word in flags and i + 1 < len(args):
            return args[i + 1]
    return None


def _replace(args: list[str], flags: tuple[str, ...], value: str) -> list[str]:
    """``args`` with the value of the first of ``flags`` replaced by ``value`` (appended when absent)."""
    for i, word in enumerate(args):
        if word in flags:
            return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, flags[0], value]


def _toy_path(ctx: Context, arg: str) -> str:
    match = EXPERIMENT.match(arg)
    if match is None:
        return arg
    return str(ctx.toy.experiment) + (match.group(1) or "")


def check_tune(ctx: Context, command: Command, args: list[str]) -> None:
    if "--help" in args or "-h" in args:
        _run(command, ENTRY["tune"], args)
        return
    if "--resume" in args:
        name = _value(args, "--name")
        assert name == TOY_NAME, f"{command}: the docs' resume commands resume {TOY_NAME!r} (the toy search)"
        args = _replace(args, ("--storage-path",), str(ctx.toy.storage))
    else:
        args = _replace(args, ("--storage-path",), str(ctx.cwd / "storage"))
    done = _run(command, ENTRY["tune"], [*args, "--check"])
    assert done.stdout.startswith("experiment: ")
    assert ("(resume:" in done.stdout) == ("--resume" in args), done.stdout


def _export_toy(ctx: Context, out: Path) -> None:
    done = run_main([ctx.toy.experiment, "--out", out], ENTRY["export"])
    assert done.returncode == 0, done.stderr


def _recipe(config: str | None) -> bool:
    """Whether a ``--config`` value names a shipped recipe (``speedrun``): checked as it is, no export."""
    from hiercls.config import shipped_recipes

    return config is not None and config.removesuffix(".yaml") in shipped_recipes()


def check_train(ctx: Context, command: Command, args: list[str]) -> None:
    data = _value(args, "--data-dir", "--data_dir", "--data_path", "--data-path")
    if data is not None and not Path(data).is_absolute():
        (ctx.cwd / data).mkdir(parents=True, exist_ok=True)  # empty: a run would download into it
    config = _value(args, "--config")
    if config is not None and not (ctx.cwd / config).exists() and not _recipe(config):
        assert ctx.toy is not None, f"{command}: --config {config} needs the toy search"
        _export_toy(ctx, ctx.cwd / config)
    done = _run(command, ENTRY["train"], [*args, "--check"])
    resolved = yaml.safe_load(done.stdout)
    assert isinstance(resolved, dict) and resolved["loss"] and resolved["out_folder"], done.stdout


def check_analysis(ctx: Context, command: Command, kind: str, args: list[str]) -> None:
    _run(command, ENTRY[kind], [_toy_path(ctx, a) for a in args])


def check_confirmed(ctx: Context, command: Command, kind: str, args: list[str]) -> None:
    """``analysis.confirm`` and ``analysis.report`` run for real on a copy of the toy search made once per
    fence (the confirmation writes into the experiment, and runs toy trials: the toy search's trainable),
    so a fence's report reads its confirmation."""
    import shutil

    copy = ctx.cwd / "confirmed" / TOY_NAME
    if not copy.exists():
        shutil.copytree(ctx.toy.experiment, copy)
    done = _run(command, ENTRY[kind], [str(copy) if EXPERIMENT.match(a) else a for a in args])
    made = copy / "confirm" / ("table.csv" if kind == "confirm" else "report/table.md")
    assert made.is_file(), done.stdout[-2000:]


def _train_for_real(ctx: Context, argv: list) -> None:
    done = run_main([*argv, "--data-dir", ctx.cifar_dir, "--num_threads", "2"], ENTRY["train"])
    assert done.returncode == 0, done.stderr


def check_compare(ctx: Context, command: Command, args: list[str]) -> None:
    runs = []
    for arg in args:
        seed = re.search(r"seed(\d+)$", arg)
        if arg.startswith("-") or (ctx.cwd / arg).exists() or seed is None:
            runs.append(arg)
            continue
        configs = sorted(ctx.cwd.glob(f"*.seed{seed.group(1)}.yaml"))
        assert len(configs) == 1, \
            f"{command}: {arg} needs one exported *.seed{seed.group(1)}.yaml, found {configs}"
        _train_for_real(ctx, ["--config", configs[0]])
        runs.append(yaml.safe_load(configs[0].read_text())["out_folder"])
    done = _run(command, ENTRY["compare"], runs)
    seeds = [re.search(r"seed(\d+)$", a).group(1) for a in args if re.search(r"seed(\d+)$", a)]
    assert " ".join(seeds) in done.stdout, done.stdout


def check_evaluate(ctx: Context, command: Command, args: list[str]) -> None:
    target = args[0]
    if not (ctx.cwd / target).exists():
        _train_for_real(ctx, ["--out_folder", target, "--max-train-samples", "200", "--val-size", "100",
                              "--epochs", "1", "--batch_size", "50", "--no-test", "--device", "cpu"])
    done = _run(command, ENTRY["evaluate"], args)
    assert 0.0 <= json.loads(done.stdout)["top1_error"] <= 1.0


def check_pip(command: Command, args: list[str]) -> None:
    assert args and args[0] == "install", f"{command}: only pip install is known"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rest = args[1:]
    while rest:
        word, rest = rest[0], rest[1:]
        if word == "-e":
            target, rest = rest[0], rest[1:]
            match = re.fullmatch(r"\.(\[([\w,-]+)\])?", target)
            assert match, f"{command}: installs {target}, not this project"
            wanted = match.group(2).split(",") if match.group(2) else []
            assert set(wanted) <= set(extras), f"{command}: unknown extras {set(wanted) - set(extras)}"
        else:
            assert word in EXTERNAL_PACKAGES, f"{command}: {word} is not in EXTERNAL_PACKAGES"


def check_pytest(command: Command, args: list[str]) -> None:
    if command.text == ci_test_command():
        return
    paths = [a for a in args if not a.startswith("-") and "/" in a]
    assert paths, f"{command}: a pytest command other than .ci/run's names its test files"
    for path in paths:
        assert (ROOT / path.split("::")[0]).is_file(), f"{command}: {path} does not exist"


def check_external(ctx: Context, command: Command, args: list[str]) -> None:
    program, rest = args[0], args[1:]
    assert program in EXTERNAL
    if program == "optuna-dashboard":
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        from hiercls.experiment.study import STUDY_FILE, load_study, open_storage

        for arg in rest:
            if arg.startswith("sqlite:///"):
                open_storage(ctx.cwd, arg)  # the URL form --optuna-storage takes, opened as Optuna does
                continue
            path = Path(_toy_path(ctx, arg))
            assert path.name == STUDY_FILE and path.is_file(), f"{command}: {arg} is no study journal"
            assert load_study(path.parent).trials
            alone = optuna.load_study(study_name=path.parent.name,
                                      storage=JournalStorage(JournalFileBackend(str(path))))
            assert len(alone.trials) == TOY_SPACE["num_samples"]
    elif program == "tensorboard":
        logdir = Path(_toy_path(ctx, _value(rest, "--logdir")))
        assert logdir.is_dir() and any(logdir.rglob("events.out.tfevents*")), \
            f"{command}: no event files in {logdir}"


def check(ctx: Context, command: Command) -> None:
    kind, args = classify(command)
    if kind == "tune":
        check_tune(ctx, command, args)
    elif kind == "train":
        check_train(ctx, command, args)
    elif kind in ("rank", "export"):
        check_analysis(ctx, command, kind, args)
    elif kind in ("confirm", "report"):
        check_confirmed(ctx, command, kind, args)
    elif kind == "compare":
        check_compare(ctx, command, args)
    elif kind == "evaluate":
        check_evaluate(ctx, command, args)
    elif kind == "data":
        done = _run(command, ENTRY["data"], args)
        assert Path(done.stdout.strip()) == (ctx.cwd.parent / "cifar-layout").resolve()
    elif kind in ("hierarchy", "schedules"):
        _run(command, ENTRY[kind], args)
        if kind == "schedules":
            assert (ctx.cwd / _value(args, "--out")).is_file()
    elif kind == "generate":
        assert generator().main(["--check"]) == 0, f"{command}: stale pages"
    elif kind == "pip":
        check_pip(command, args)
    elif kind == "pytest":
        check_pytest(command, args)
    elif kind == "external":
        check_external(ctx, command, args)
    else:
        pytest.fail(f"{command}: kind {kind} has no check")


@pytest.mark.parametrize(("fence", "lane"), fence_params())
def test_doc_commands_work(fence, lane, request, tmp_path, monkeypatch):
    """Every command of one fence, in order, each run or checked (see the module docstring)."""
    toy = request.getfixturevalue("toy_search") if lane >= TOY else None
    cifar_dir = request.getfixturevalue("cifar_dir") if lane >= REAL else None  # before the fake layout
    layout = tmp_path / "cifar-layout"  # CIFAR-100's ImageFolder layout: what "found" looks for
    for split in ("train", "val"):
        (layout / split).mkdir(parents=True)
    monkeypatch.setenv("HIERCLS_DATA_DIR", str(layout))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "search_spaces").symlink_to(ROOT / "search_spaces")
    monkeypatch.chdir(cwd)
    ctx = Context(cwd, toy, cifar_dir)
    cmds = commands(fence)
    assert cmds, f"{fence.name}: an empty bash fence"
    for command in cmds:
        assert classify(command) is not None, f"{command}: no known kind"
        check(ctx, command)
