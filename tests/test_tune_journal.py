"""The search's Optuna study on faults (issue 22, items 5 and 7): a torn journal (its last record cut by a
kill or a full disk) is recovered on resume, the original kept; a journal garbled in the middle, empty or
not replayable is refused before Ray starts in one line (exit 3); an ``--optuna-storage`` URL that cannot
be opened or written is refused in one line (exit 2) and leaves nothing behind, for a new search, for
``--resume`` and for ``--check``; a space file that is not UTF-8 is refused in one line (exit 2).

The fast tests build experiment folders without Ray (as tests/test_tune_plan.py does) and run the CLI in
this process with ``ray.init`` replaced by a failure: every refusal must come before Ray starts. The slow
test kills a real toy search, tears its journal and resumes it with the README's command."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hiercls.experiment.study import (
    STUDY_FILE,
    JournalError,
    check_journal,
    load_study,
    open_storage,
    recover_journal,
)
from hiercls.tune.spec import SearchSpec

ROOT = Path(__file__).resolve().parents[1]
PROG = "python tune_main.py: error:"
LR = {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}


# ---------------------------------------------------------------------------------------------- helpers
def _study_journal(folder: Path, trials: int = 3) -> Path:
    """A journal written by Optuna itself: ``trials`` trials with two intermediate values each, all complete
    but the last, which is left running (as a killed driver leaves it)."""
    import optuna

    study = optuna.create_study(storage=open_storage(folder), study_name=folder.name)
    for number in range(trials):
        trial = study.ask()
        trial.suggest_float("lr", 0.01, 0.2, log=True)
        trial.report(0.9, 1)
        trial.report(0.8, 2)
        if number < trials - 1:
            study.tell(trial, 0.5 + number / 10)
    return folder / STUDY_FILE


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _torn_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{STUDY_FILE}.torn-*"))


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _spec(storage: Path, name: str, **values) -> SearchSpec:
    base = {"name": name, "storage_path": str(storage), "epochs": 2, "grace_period": 1, "num_samples": 2,
            "train": {"architecture": "plainnet"}, "search": LR}
    return SearchSpec.from_dict({**base, **values})


def _saved_experiment(storage: Path, name: str, **values) -> Path:
    """A finished two-trial toy experiment as Ray leaves it (``tuner.pkl``, a state file, trial folders),
    without Ray; the study (a journal unless ``optuna_storage`` is given) is the caller's."""
    spec = _spec(storage, name, **values)
    folder = spec.experiment_dir
    folder.mkdir(parents=True)
    (folder / "search_spec.yaml").write_text(spec.resolved().to_yaml() + yaml.safe_dump({"trainable": "toy"}))
    (folder / "tuner.pkl").write_bytes(pickle.dumps(None))
    trial_data = [[json.dumps({"trial_id": f"t{i}", "status": "TERMINATED", "config": {}}), json.dumps({})]
                  for i in range(2)]
    (folder / "experiment_state-2026.json").write_text(json.dumps({"trial_data": trial_data,
                                                                   "runner_data": {}}))
    for i in range(2):
        (folder / f"trial_t{i}").mkdir()
    return folder


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: every refusal here comes before it."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``tune_main.main(argv)`` in this process: (status, stdout, stderr without Ray's forwarded lines)."""
    import tune_main

    capsys.readouterr()
    code = tune_main.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    err = "\n".join(line for line in err.splitlines() if "pid=" not in line and line.strip())
    return code, out, err


def _one_error_line(err: str) -> str:
    """The single line stderr holds, a ``python tune_main.py: error:`` line (no traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG), err
    return lines[0]


# ---------------------------------------------------------------------------------------------- torn
def _cut_mid_record(data: bytes) -> bytes:
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    return data[: last + (len(data) - last) // 2]


TEARS = {
    "cut-mid-record": _cut_mid_record,
    "no-trailing-newline": lambda data: data[:-1],
    "last-line-not-json": lambda data: data + b'{"op_code": 7, "trial_id"\x00\x00\x00\n',
    # what an earlier resume made of a torn journal: the next record appended right after the cut one
    "cut-then-appended": lambda data: _cut_mid_record(data) + _lines_of(data)[-1],
}


def _lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


@pytest.mark.parametrize("tear", list(TEARS))
def test_a_torn_last_record_is_dropped_and_the_original_kept(tmp_path, tear, caplog):
    import optuna

    folder = tmp_path / "exp"
    path = _study_journal(folder)
    whole = path.read_bytes()
    torn = TEARS[tear](whole)
    path.write_bytes(torn)
    complete = b"".join(line for line in _lines_of(torn) if line in _lines_of(whole))
    assert complete != torn

    state = check_journal(path)  # a torn last record is not a refusal, and checking writes nothing
    assert state.torn == len(torn) - len(complete) and state.kept == len(complete)
    assert path.read_bytes() == torn and not _torn_files(folder)

    with caplog.at_level(logging.WARNING, logger="hiercls.experiment"):
        recovered = recover_journal(folder)
    assert recovered is not None and recovered.torn == state.torn
    assert path.read_bytes() == complete  # the complete records, byte for byte
    (original,) = _torn_files(folder)
    assert original.read_bytes() == torn  # nothing the user had is lost
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in warning and str(path) in warning and f"{state.torn} bytes" in warning
    assert str(original) in warning

    study = optuna.load_study(study_name="exp", storage=open_storage(folder))
    assert len(study.trials) == 3
    assert check_journal(path).torn == 0
    assert recover_journal(folder).torn == 0 and len(_torn_files(folder)) == 1  # nothing more to do


def test_a_grown_part_recovers_the_experiments_journal(tmp_path):
    folder = tmp_path / "exp"
    path = _study_journal(folder)
    path.write_bytes(path.read_bytes()[:-5])
    assert recover_journal(folder / "grow-1").torn > 0  # a grow-k part writes into the experiment's journal
    assert _torn_files(folder) and check_journal(path).torn == 0


def test_opening_a_torn_journal_for_a_growth_appends_after_complete_records(tmp_path):
    """A resume that only grows the search opens the journal for a new searcher (open_storage): the torn
    record is dropped first, so Optuna's next record does not land on the cut line."""
    import optuna

    folder = tmp_path / "exp"
    path = _study_journal(folder)
    path.write_bytes(_cut_mid_record(path.read_bytes()))
    study = optuna.create_study(storage=open_storage(folder), study_name="exp", load_if_exists=True)
    study.tell(study.ask(), 0.1)
    assert check_journal(path).torn == 0
    assert len(load_study(folder).trials) == 4


def test_the_searcher_restore_drops_a_torn_record_before_it_appends(tmp_path):
    """SearchAlgorithm.restore (what Tuner.restore calls) with a journal whose last record was torn after
    the searcher's state was saved: the record is dropped, the running trial goes on, and what the resumed
    searcher appends leaves a journal Optuna reads whole (before, it garbled it for good)."""
    from optuna.trial import TrialState

    from hiercls.tune.space import DefineByRun, SearchAlgorithm

    spec = _spec(tmp_path, "exp")
    folder = tmp_path / "exp"

    def searcher() -> SearchAlgorithm:
        return SearchAlgorithm(DefineByRun(spec.params()), "objective", "min", storage=open_storage(folder),
                               study_name="exp", experiment_dir=str(folder))

    first = searcher()
    first.suggest("aaaa")
    first.suggest("bbbb")
    first.on_trial_result("bbbb", {"objective": 0.7, "training_iteration": 1})
    first.on_trial_complete("aaaa", {"objective": 0.5, "epoch": 2, "training_iteration": 2})
    first.save(str(folder / "searcher-state-1.pkl"))
    resumed = searcher()  # as Ray's restored searcher: its storage opened before restore() is called
    first.on_trial_result("bbbb", {"objective": 0.6, "training_iteration": 2})  # then the driver is killed
    path = folder / STUDY_FILE
    path.write_bytes(_cut_mid_record(path.read_bytes()))

    resumed.restore(str(folder / "searcher-state-1.pkl"))
    resumed.on_trial_complete("bbbb", {"objective": 0.4, "epoch": 2, "training_iteration": 2})
    assert resumed.suggest("cccc") is not None
    assert check_journal(path).torn == 0 and len(_torn_files(folder)) == 1
    trials = load_study(folder).trials
    complete = TrialState.COMPLETE
    assert [(t.state, t.value) for t in trials[:2]] == [(complete, 0.5), (complete, 0.4)]
    assert trials[1].intermediate_values == {1: 0.7, 2: 0.4} and len(trials) == 3


# ---------------------------------------------------------------------------------------------- damaged
def _garble_middle(path: Path) -> None:
    lines = _lines(path)
    lines[3] = lines[3][:25] + b"\n"
    path.write_bytes(b"".join(lines))


DAMAGE = {
    "garbled-middle": (_garble_middle, "is garbled: line 4 of"),
    "empty": (lambda path: path.write_bytes(b""), "is empty while the experiment has"),
    "blank-lines": (lambda path: path.write_bytes(b"\n\n\n"), "is garbled: line 1 of 3"),
    "no-study": (lambda path: path.write_bytes(b"".join(_lines(path)[1:])), "holds no study"),
    "unreplayable": (lambda path: path.write_bytes(b"".join(_lines(path)[:2]) + b'{"op_code": 99}\n'
                                                   + b"".join(_lines(path)[2:])),
                     "cannot be replayed by Optuna (AssertionError"),
    "record-without-its-keys": (lambda path: path.write_bytes(path.read_bytes() + b'{"op_code": 4}\n'
                                                              + _lines(path)[-1]),
                                "cannot be replayed by Optuna (KeyError"),
}


def _assert_refusal(message: str, path: Path, what: str) -> None:
    assert "\n" not in message and str(path) in message and what in message, message
    assert "restore it from a backup" in message and "new --name" in message, message


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_journal_is_refused_in_one_line_and_left_as_it_is(tmp_path, damage):
    folder = tmp_path / "exp"
    path = _study_journal(folder)
    (folder / "trial_a").mkdir()
    make, what = DAMAGE[damage]
    make(path)
    before = path.read_bytes()
    for read in (check_journal, lambda p: load_study(p.parent)):
        with pytest.raises(JournalError) as info:
            read(path)
        _assert_refusal(str(info.value), path, what)
    if damage != "empty":  # a journal with no complete record has no torn last record to drop either
        with pytest.raises(JournalError):
            recover_journal(folder) if damage in ("garbled-middle", "blank-lines") else check_journal(path)
    assert path.read_bytes() == before and not _torn_files(folder)


@pytest.mark.parametrize("damage", ["garbled-middle", "empty", "unreplayable"])
def test_resume_refuses_a_damaged_journal_before_ray_starts(tmp_path, capsys, no_ray, damage):
    """Before: Ray restored the experiment and failed inside Optuna (exit 3 with "KeyError: 'Record does
    not exist.'" or a JSONDecodeError traceback), the journal never named."""
    storage = tmp_path / "storage"
    folder = _saved_experiment(storage, "exp")
    path = _study_journal(folder)
    make, what = DAMAGE[damage]
    make(path)
    before = _listing(folder)
    for check in ((), ("--check",)):
        code, out, err = _cli(capsys, "--name", "exp", "--storage-path", storage, "--resume",
                              "--trust-experiment", *check)
        assert code == 3, (out, err)
        _assert_refusal(_one_error_line(err), path, what)
    assert {k: v for k, v in _listing(folder).items() if not k.startswith("pickle_manifest")} == \
        {k: v for k, v in before.items() if not k.startswith("pickle_manifest")}


def test_resume_check_with_a_torn_journal_passes_and_writes_nothing(tmp_path, capsys, no_ray):
    storage = tmp_path / "storage"
    folder = _saved_experiment(storage, "exp")
    path = _study_journal(folder)
    torn = _cut_mid_record(path.read_bytes())
    path.write_bytes(torn)
    code, out, err = _cli(capsys, "--name", "exp", "--storage-path", storage, "--resume",
                          "--trust-experiment", "--check")
    assert code == 0, (out, err)
    assert f"Optuna study: {path}" in out
    assert path.read_bytes() == torn and not _torn_files(folder)


# ---------------------------------------------------------------------------------------------- storage URLs
def _read_only_folder(tmpfs, path: Path, database: bool, monkeypatch) -> None:
    """``path``, a read-only folder (holding an SQLite study database when ``database``): a read-only
    tmpfs where mounting is allowed, else simulated as test_tune_faults does (creating a file fails with
    EROFS; chmod would not stop root)."""
    import errno
    import tempfile

    import optuna

    if tmpfs.mount(path, "4m"):
        if database:
            optuna.storages.RDBStorage(f"sqlite:///{path}/study.db").engine.dispose()
        done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, timeout=30)
        if done.returncode == 0:
            return
        tmpfs.umount(path)
    path.mkdir(parents=True, exist_ok=True)
    if database:
        optuna.storages.RDBStorage(f"sqlite:///{path}/study.db").engine.dispose()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)


URLS = {
    "sqlite-missing-folder": ("sqlite:///{tmp}/missing/study.db", "'{tmp}/missing' does not exist"),
    "sqlite-read-only-folder": ("sqlite:///{tmp}/ro/study.db", "read-only file system (EROFS)"),
    "sqlite-read-only-database": ("sqlite:///{tmp}/ro/study.db", "read-only file system (EROFS)"),
    "not-a-url": ("notaurl", "Could not parse"),
    "postgresql-without-driver": ("postgresql://user@localhost/db", "is not installed"),
}


@pytest.fixture
def bad_url(request, tmp_path, tmpfs, monkeypatch):
    """(URL, what its refusal says) for each of :data:`URLS`."""
    url, what = (text.format(tmp=tmp_path) for text in URLS[request.param])
    if request.param.startswith("sqlite-read-only"):
        _read_only_folder(tmpfs, tmp_path / "ro", request.param.endswith("database"), monkeypatch)
    if request.param.startswith("postgresql"):
        for driver in ("psycopg", "psycopg2"):  # whichever SQLAlchemy's postgresql dialect imports
            monkeypatch.setitem(sys.modules, driver, None)
    return url, what


def _space(path: Path) -> Path:
    values = {"num_samples": 2, "epochs": 2, "grace_period": 1, "train": {"architecture": "plainnet"},
              "search": LR}
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


@pytest.mark.parametrize("bad_url", list(URLS), indirect=True)
def test_an_unusable_optuna_storage_is_one_line_and_leaves_nothing(tmp_path, capsys, no_ray, bad_url):
    """A new search, with and without --check: exit 2, one line naming the URL and what would be valid,
    no NAME/ folder (so the name stays free). Before: an invalid-spec block with SQLAlchemy's extra lines,
    and for an existing database in a read-only folder a traceback (exit 1) after search_spec.yaml was
    written."""
    url, what = bad_url
    space = _space(tmp_path / "space.yaml")
    storage = tmp_path / "storage"
    for check in ((), ("--check",)):
        code, out, err = _cli(capsys, "--space", space, "--trainable", "toy", "--name", "u", "--storage-path",
                              storage, "--optuna-storage", url, *check)
        assert code == 2, (out, err)
        line = _one_error_line(err)
        assert f"--optuna-storage {url!r}" in line and what in line and "valid: " in line, line
        assert not (storage / "u").exists()


@pytest.mark.parametrize("bad_url", list(URLS), indirect=True)
def test_resume_with_an_unusable_optuna_storage_is_one_line_and_changes_nothing(tmp_path, capsys, no_ray,
                                                                                bad_url):
    """An experiment whose study is kept at a URL that no longer opens or takes writes (the folder gone
    or read-only, the driver uninstalled): --resume and --resume --check refuse in one line, exit 2,
    before Ray starts (before: Ray restored it, and a growth failed in a traceback after writing)."""
    url, what = bad_url
    storage = tmp_path / "storage"
    folder = _saved_experiment(storage, "u", optuna_storage=url)
    before = _listing(folder)
    if url.startswith("sqlite") and not Path(url.removeprefix("sqlite:///")).exists():
        what = "which held the search's study, does not exist"  # a resume needs the file itself
    for extra in ((), ("--check",), ("--num-samples", "3")):
        code, out, err = _cli(capsys, "--name", "u", "--storage-path", storage, "--resume",
                              "--trust-experiment", *extra)
        assert code == 2, (extra, out, err)
        line = _one_error_line(err)
        assert f"--optuna-storage {url!r}" in line and what in line, line
    assert {k: v for k, v in _listing(folder).items() if not k.startswith("pickle_manifest")} == \
        {k: v for k, v in before.items() if not k.startswith("pickle_manifest")}


def test_resume_refuses_an_sqlite_study_database_that_is_gone(tmp_path, capsys, no_ray):
    storage = tmp_path / "storage"
    url = f"sqlite:///{tmp_path}/study.db"
    _saved_experiment(storage, "u", optuna_storage=url)
    code, out, err = _cli(capsys, "--name", "u", "--storage-path", storage, "--resume", "--trust-experiment")
    assert code == 2, (out, err)
    line = _one_error_line(err)
    assert f"'{tmp_path}/study.db'" in line and "does not exist" in line and "backup" in line
    assert not (tmp_path / "study.db").exists()  # not created empty


# ---------------------------------------------------------------------------------------------- space file
def test_a_space_file_that_is_not_utf8_is_refused(tmp_path, capsys, no_ray):
    space = tmp_path / "latin1.yaml"
    text = "epochs: 2\n# lr pour l'\u00e9t\u00e9\ntrain: {architecture: plainnet}\n"
    space.write_bytes(text.encode("latin-1"))
    code, out, err = _cli(capsys, "--space", space, "--trainable", "toy", "--name", "x", "--storage-path",
                          tmp_path / "storage")
    assert code == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith(PROG)]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"{space}: not UTF-8 text (byte 0xe9 at offset 22); save the space file as UTF-8" in err
    assert not (tmp_path / "storage").exists()


# ---------------------------------------------------------------------------------------------- a real search
def _ended(folder: Path) -> int:
    path = folder / "toy_ends.log"
    return len(path.read_text(errors="replace").splitlines()) if path.is_file() else 0


@pytest.mark.slow
def test_a_killed_search_with_a_torn_journal_resumes_to_the_end(ray_session, tmp_path):
    """SIGKILL a toy TPE search once two trials ended, cut its journal's last record in half (what a kill
    or a full disk during an append leaves), then the README's resume command: one warning line names the
    journal, the original is kept, the search finishes every trial (exit 0, no traceback), the study loads
    whole, and a second resume also succeeds (before: a JSONDecodeError traceback, then every resume
    refused)."""
    address = ray_session.get_runtime_context().gcs_address
    storage = tmp_path / "storage"
    folder = storage / "torn"
    space = _space(tmp_path / "space.yaml")
    command = [sys.executable, str(ROOT / "tune_main.py")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([*command, "--space", str(space), "--trainable", "toy", "--toy-sleep", "1",
                                 "--num-samples", "6", "--epochs", "4", "--grace-period", "4",
                                 "--max-concurrent", "2", "--cpus-per-trial", "0.5", "--name", "torn",
                                 "--storage-path", str(storage), "--address", address],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            while _ended(folder) < 2:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
                time.sleep(0.3)
            time.sleep(1.5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    path = folder / STUDY_FILE
    torn = _cut_mid_record(path.read_bytes())
    path.write_bytes(torn)

    resume = [*command, "--name", "torn", "--storage-path", str(storage), "--resume", "--address", address]
    done = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    driver = "\n".join(line for line in done.stderr.splitlines() if "pid=" not in line)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Traceback" not in driver, driver[-4000:]
    (original,) = _torn_files(folder)
    assert original.read_bytes() == torn
    warnings = [line for line in driver.splitlines() if "torn record" in line]
    assert len(warnings) == 1 and str(path) in warnings[0] and str(original) in warnings[0], driver[-3000:]

    rows = list(csv_rows(folder / "summary.csv"))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), rows
    assert check_journal(path).torn == 0
    trials = load_study(folder).trials
    ray_ids = {r["trial_id"] for r in rows}
    complete = {t.user_attrs.get("ray_trial_id") for t in trials if t.state.name == "COMPLETE"}
    assert len(complete & ray_ids) >= 5, ([(t.number, t.state.name, t.user_attrs) for t in trials], ray_ids)
    assert not [t for t in trials if t.state.name == "RUNNING"]

    again = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)
