"""Faults around a search, with the toy trainable: a killed driver resumed with the README's command, a
killed trial worker, a full file system, a torn Ray state, an untrusted experiment folder, a second
Ctrl-C, a non-Ray server at --address, an unwritable --storage-path. Every subprocess has a timeout."""

from __future__ import annotations

import csv
import errno
import http.server
import json
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from hiercls.experiment.lock import LOCK_FILE
from hiercls.experiment.manifest import MANIFEST_FILE, adopt
from hiercls.tune.guard import UntrustedExperimentError

ROOT = Path(__file__).resolve().parents[1]
PROG = "python tune_main.py: error:"


# ---------------------------------------------------------------------------------------------- helpers
def _space(path: Path, **changes) -> Path:
    values = {
        "num_samples": 6, "epochs": 4, "grace_period": 4, "max_concurrent": 2, "cpus_per_trial": 0.5,
        "startup_trials": 2, "train": {"architecture": "plainnet"},
        "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
        "points_to_evaluate": [{"lr": 0.05}],
    }
    values.update(changes)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def _lines(path: Path, fields: int) -> list[list[str]]:
    """The well-formed lines of a toy log (a full disk may have torn the last one)."""
    if not path.is_file():
        return []
    return [parts for line in path.read_text(errors="replace").splitlines()
            if len(parts := line.split()) == fields]


def _ended(folder: Path, before: float = math.inf) -> set[str]:
    """Toy trials whose last epoch ran before ``before`` (unix time)."""
    out = set()
    for trial_id, _, when in _lines(folder / "toy_ends.log", 3):
        try:
            if float(when) < before:
                out.add(trial_id)
        except ValueError:
            continue
    return out


def _starts(folder: Path) -> dict[str, list[int]]:
    starts: dict[str, list[int]] = {}
    for trial_id, first in _lines(folder / "toy_starts.log", 2):
        if first.isdigit():
            starts.setdefault(trial_id, []).append(int(first))
    return starts


def _midway(folder: Path) -> bool:
    """Whether an unfinished toy trial has checkpointed its second epoch."""
    ended = _ended(folder)
    return any((t / "checkpoint_000001").is_dir() and t.name.removeprefix("trial_") not in ended
               for t in folder.glob("trial_*"))


def _summary(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "tune_main.py"), *args]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.time() < deadline, "timed out; " + log.read_text(errors="replace")[-3000:]
        time.sleep(0.3)


def _no_rerun(folder: Path, finished: set[str]) -> None:
    """Trials that had finished were never started again; interrupted ones continued in order."""
    starts = _starts(folder)
    for trial_id in finished:
        assert starts[trial_id] == [1], (trial_id, starts)
    for trial_id, firsts in starts.items():
        assert firsts == sorted(firsts), (trial_id, firsts)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(PROG)]


def _driver_output(stderr: str) -> str:
    """The driver's own stderr: Ray forwards its workers' stderr prefixed "(toy_trial pid=N)", and a worker
    stopped while a search ends or is resumed may print Python's "Traceback ... SystemExit" from Ray's own
    SIGTERM handler (a timing race inside Ray's shutdown, not our code), so those lines are left out."""
    return "\n".join(ln for ln in stderr.splitlines() if not re.search(r"\(\w+ pid=\d+\)", ln))


# ---------------------------------------------------------------------------------------------- item 1
@pytest.mark.slow
def test_killed_driver_then_the_readme_resume_command(ray_session, tmp_path):
    """SIGKILL the driver mid-search (no final save at all), then exactly the README's command:
    ``python tune_main.py --name NAME --storage-path DIR --resume`` (no --space; the saved spec records
    ``trainable: toy``). The search completes with num_samples trials; no finished trial runs again."""
    address = ray_session.get_runtime_context().gcs_address
    space = _space(tmp_path / "toy.yaml")
    storage = tmp_path / "storage"
    folder = storage / "killed"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _command("--space", str(space), "--trainable", "toy", "--toy-sleep", "1.0", "--name", "killed",
                     "--storage-path", str(storage), "--address", address),
            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            # two trials ended 3 s ago or more (Tune records an end within a second: a forced state
            # upload), and a running trial has checkpointed its second epoch
            _wait_for(lambda: len(_ended(folder, time.time() - 3.0)) >= 2 and _midway(folder), proc, log_path)
            killed_at = time.time()
            proc.kill()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    finished = _ended(folder, killed_at - 3.0)
    assert 2 <= len(finished) < 6
    assert "trainable: toy" in (folder / "search_spec.yaml").read_text()

    resumed = subprocess.run(_command("--name", "killed", "--storage-path", str(storage), "--resume"),
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "Traceback" not in _driver_output(resumed.stderr), resumed.stderr[-4000:]
    rows = _summary(folder)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), rows
    assert len(_ended(folder)) >= 6
    _no_rerun(folder, finished)
    starts = _starts(folder)
    assert any(len(firsts) > 1 and firsts[-1] > 1 for firsts in starts.values()), starts


# ---------------------------------------------------------------------------------------------- item 6
@pytest.mark.slow
def test_killed_trial_worker_is_retried_from_its_checkpoint(ray_session, tmp_path):
    """SIGKILL one trial's worker process (its pid from result.json) mid-trial: with max_failures=1 the
    trial is retried from its last checkpoint and every trial ends ok."""
    from hiercls.tune.runner import run_search
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.load(_space(tmp_path / "toy.yaml", num_samples=3, max_failures=1),
                           {"name": "worker", "storage_path": str(tmp_path)})
    folder = tmp_path / "worker"
    killed: list[tuple[str, int, int]] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            for result in folder.glob("trial_*/result.json"):
                lines = result.read_text(errors="replace").splitlines()
                try:
                    last = json.loads(lines[-1]) if lines else None
                except ValueError:
                    continue
                if last and last["epoch"] == 2 and not last.get("done"):
                    os.kill(int(last["pid"]), signal.SIGKILL)
                    killed.append((result.parent.name.removeprefix("trial_"), int(last["pid"]), 2))
                    return
            time.sleep(0.1)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        outcome = run_search(spec, trainable="toy", toy_sleep=1.0, echo=lambda line: None)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert killed, "no trial reached its second epoch"
    trial_id, pid, epoch = killed[0]
    assert outcome.num_trials == 3 and not outcome.interrupted
    assert all(r["status"] == "ok" and r["epochs"] == 4 for r in outcome.rows), outcome.rows
    starts = _starts(folder)[trial_id]
    # started once from epoch 1, then again after its last checkpoint (epoch 2, or 3 when the kill came
    # after the next report)
    assert starts[0] == 1 and len(starts) == 2 and starts[1] >= epoch + 1, starts
    pids = {json.loads(line)["pid"] for line in (folder / f"trial_{trial_id}" / "result.json")
            .read_text().splitlines()}
    assert pid in pids and len(pids) == 2


# ---------------------------------------------------------------------------------------------- item 3
def _fill(path: Path) -> None:
    """Write a file that takes every free byte of ``path``'s file system."""
    info = os.statvfs(path)
    with open(path / "filler", "wb", buffering=0) as f:
        try:
            f.write(b"\0" * (info.f_bavail * info.f_frsize))
            while True:  # whatever the estimate missed
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


@pytest.mark.slow
def test_full_disk_stops_with_status_3_and_resume_loses_nothing(
    tmpfs, ray_session, tmp_path, record_property
):
    """A toy search on a small tmpfs that fills up: exit 3, one error line naming the folder and the
    OS error, no traceback on stderr, summary.csv (or a statement that it could not be written). After
    freeing space, --resume finishes with every trial ok and no finished trial run again."""
    mnt = tmp_path / "mnt"
    if not tmpfs.mount(mnt, "8m"):
        record_property("full_disk", "simulated (mount failed)")
        print("tmpfs mount failed: simulating ENOSPC in the driver's atomic writes instead")
        _simulated_full_disk(ray_session, tmp_path)
        return
    record_property("full_disk", "tmpfs")
    print("full disk: a real tmpfs")
    try:
        address = ray_session.get_runtime_context().gcs_address
        space = _space(tmp_path / "toy.yaml")
        folder = mnt / "full"
        log_path = tmp_path / "first.out"
        err_path = tmp_path / "first.err"
        with open(log_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(
                _command("--space", str(space), "--trainable", "toy", "--toy-sleep", "1.0", "--name", "full",
                         "--storage-path", str(mnt), "--address", address),
                cwd=ROOT, env=ENV, stdout=out, stderr=err,
            )
            try:
                _wait_for(lambda: len(_ended(folder)) >= 2, proc, err_path)
                time.sleep(1.5)
                filled_at = time.time()
                _fill(mnt)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
        stderr = err_path.read_text(errors="replace")
        stdout = log_path.read_text(errors="replace")
        assert code == 3, (stdout[-2000:], stderr[-3000:])
        assert "Traceback" not in _driver_output(stderr), stderr[-4000:]
        errors = _error_lines(stderr)
        assert len(errors) == 1, stderr[-3000:]
        assert [line for line in stderr.splitlines() if line.strip()][-1] == errors[0]
        line = errors[0]
        assert str(folder) in line and "no space left" in line and "ENOSPC" in line, line
        assert "--resume" in line
        assert (folder / "summary.csv").is_file() or "summary.csv was not written" in line, line
        assert not list(folder.rglob("*.hiercls-tmp"))  # failed atomic writes leave nothing behind
        finished = _ended(folder, filled_at)
        assert 2 <= len(finished) < 6

        (mnt / "filler").unlink()
        resumed = subprocess.run(
            _command("--name", "full", "--storage-path", str(mnt), "--resume", "--address", address),
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
        )
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
        rows = _summary(folder)
        assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), rows
        assert finished <= {r["trial_id"] for r in rows}  # finished trials kept, with their results
        _no_rerun(folder, finished)
    finally:
        tmpfs.umount(mnt)


def _simulated_full_disk(ray_session, tmp_path):
    """Fallback when tmpfs cannot be mounted: the driver's atomic writes (Ray's state uploads) fail
    with ENOSPC once two trials have ended; the search must stop with a SearchStorageError whose
    message names the folder and ENOSPC, and a resume must finish it."""
    from hiercls.tune import atomicfs
    from hiercls.tune.runner import SearchStorageError, run_search
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.load(_space(tmp_path / "toy.yaml"), {"name": "sim", "storage_path": str(tmp_path)})
    folder = tmp_path / "sim"
    original = atomicfs._AtomicWriter.write

    def write(self, data):
        if len(_ended(folder)) >= 2:
            self._discard()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    atomicfs._AtomicWriter.write = write
    try:
        with pytest.raises(SearchStorageError) as info:
            run_search(spec, trainable="toy", toy_sleep=1.0, echo=lambda line: None)
    finally:
        atomicfs._AtomicWriter.write = original
    assert str(folder) in str(info.value) and "ENOSPC" in str(info.value)
    outcome = run_search(spec, resume=True, echo=lambda line: None)
    assert outcome.num_trials == 6 and all(r["status"] == "ok" for r in outcome.rows)


@pytest.mark.slow
def test_failed_state_uploads_stop_the_search_and_keep_the_checkpoints_it_names(ray_session, tmp_path):
    """Only the driver's writes fail (Ray's experiment-state uploads; the trials still checkpoint): the
    search stops with exit status 3's error, and the checkpoints the last saved state names were not
    deleted meanwhile (Ray deletes a trial's older checkpoint as soon as it registers a newer one), so
    the resume restores every trial."""
    _simulated_full_disk(ray_session, tmp_path)


def test_old_checkpoints_are_deleted_after_two_state_uploads(tmp_path):
    import pyarrow.fs as pafs

    from hiercls.tune import atomicfs

    fs = atomicfs.atomic_local_filesystem()
    trial = tmp_path / "exp" / "trial_1"
    for name in ("checkpoint_000000", "checkpoint_000001"):
        (trial / name).mkdir(parents=True)
        (trial / name / "state.json").write_text("{}")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "experiment_state-x.json").write_text("{}")
    fs.delete_dir(str(trial / "checkpoint_000000"))  # what Ray does on registering checkpoint_000001
    assert (trial / "checkpoint_000000").is_dir()
    assert atomicfs.pending_deletions() == [str(trial / "checkpoint_000000")]
    for uploads in (1, 2):
        pafs.copy_files(str(staging / "experiment_state-x.json"),
                        str(tmp_path / "exp" / "experiment_state-x.json"), destination_filesystem=fs)
        assert (trial / "checkpoint_000000").is_dir() == (uploads < 2)
    assert atomicfs.pending_deletions() == []
    fs.delete_dir(str(trial / "checkpoint_000001"))
    assert atomicfs.flush_deferred_deletions(tmp_path / "exp", delete=False) == 1  # forgotten, kept
    assert (trial / "checkpoint_000001").is_dir() and atomicfs.pending_deletions() == []
    fs.delete_dir(str(trial / "checkpoint_000001"))
    assert atomicfs.flush_deferred_deletions(tmp_path / "exp") == 1
    assert not (trial / "checkpoint_000001").exists()
    fs.delete_dir(str(tmp_path / "exp" / "trial_1"))  # other folders go at once
    assert not trial.exists()


def test_atomic_filesystem_keeps_the_old_file_on_a_full_disk(tmpfs, tmp_path):
    """Ray's uploads go through pyarrow.fs.copy_files; with the atomic filesystem a failed upload leaves
    the previous complete file (and no temporary file), and the error reaches the caller."""
    import pyarrow.fs as pafs

    from hiercls.tune.atomicfs import atomic_local_filesystem

    fs = atomic_local_filesystem()
    source = tmp_path / "source"
    source.mkdir()
    (source / "experiment_state-x.json").write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    mnt = tmp_path / "mnt"
    mounted = tmpfs.mount(mnt, "1m")
    target = mnt / "exp"
    try:
        pafs.copy_files(str(source), str(target), destination_filesystem=fs)
        first = (target / "experiment_state-x.json").read_text()
        assert json.loads(first)["trial_data"] == []
        (source / "experiment_state-x.json").write_text(json.dumps({"trial_data": ["x" * 2_000_000]}))
        if mounted:
            with pytest.raises(OSError) as info:
                pafs.copy_files(str(source), str(target), destination_filesystem=fs)
            assert info.value.errno == errno.ENOSPC or "No space left" in str(info.value)
        else:  # simulated: os.write fails as on a full disk
            import hiercls.tune.atomicfs as module

            real = module.os.write
            module.os.write = lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space"))
            try:
                with pytest.raises(OSError):
                    pafs.copy_files(str(source), str(target), destination_filesystem=fs)
            finally:
                module.os.write = real
        assert (target / "experiment_state-x.json").read_text() == first  # the old file, whole
        assert sorted(p.name for p in target.iterdir() if MANIFEST_FILE not in p.name) == [
            "experiment_state-x.json"]  # and its signed record (hiercls.experiment.manifest)
        assert pickle.loads(pickle.dumps(fs)).type_name == fs.type_name  # trial processes get it
    finally:
        if mounted:
            tmpfs.umount(mnt)


def test_unwritable_storage_path_exits_3_before_ray(tmpfs, tmp_path, monkeypatch, capsys):
    import ray

    import tune_main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for an unwritable --storage-path")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    space = _space(tmp_path / "toy.yaml")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = tune_main.main(["--space", str(space), "--trainable", "toy", "--name", "x",
                           "--storage-path", str(blocker / "runs")])
    err = _driver_output(capsys.readouterr().err)  # the session's Ray may forward a stray worker line
    assert code == 3 and len(err.strip().splitlines()) == 1 and err.startswith(PROG), err
    assert str(blocker) in err and "regular file" in err

    readonly = tmp_path / "ro"
    if tmpfs.mount(readonly, "1m", "ro"):
        try:
            code = tune_main.main(["--space", str(space), "--trainable", "toy", "--name", "x",
                                   "--storage-path", str(readonly)])
        finally:
            tmpfs.umount(readonly)
    else:  # simulated read-only file system
        import tempfile

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        readonly.mkdir(exist_ok=True)
        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        code = tune_main.main(["--space", str(space), "--trainable", "toy", "--name", "x",
                               "--storage-path", str(readonly)])
    err = _driver_output(capsys.readouterr().err)  # the session's Ray may forward a stray worker line
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert "read-only file system (EROFS)" in err and str(readonly / "x") in err


def test_storage_errors_are_recognised_in_trial_errors():
    from hiercls.tune.guard import storage_os_error

    assert storage_os_error(OSError(errno.ENOSPC, "x")).errno == errno.ENOSPC
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = OSError(errno.EROFS, "read-only")
    assert storage_os_error(wrapped).errno == errno.EROFS
    text = "ray::ImplicitFunc.train()\n  ...\nOSError: [Errno 28] Error writing bytes to file"
    assert storage_os_error(None, text).errno == errno.ENOSPC
    assert storage_os_error(None, "Disk quota exceeded").errno == errno.EDQUOT
    assert storage_os_error(ValueError("bad lr")) is None
    assert storage_os_error(OSError(errno.ENOENT, "missing")) is None


# ---------------------------------------------------------------------------------------------- torn state
@pytest.fixture
def small_experiment(ray_session, tmp_path):
    """A finished two-trial toy experiment (in this process's Ray); returns its spec."""
    from hiercls.tune.runner import run_search
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.load(_space(tmp_path / "toy.yaml", num_samples=2, epochs=1, grace_period=1,
                                  points_to_evaluate=[]),
                           {"name": "small", "storage_path": str(tmp_path / "storage")})
    run_search(spec, trainable="toy", echo=lambda line: None)
    return spec


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and time, but Ray's storage marker and the driver lock's record (not results)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name not in (".validate_storage_marker",
                                                                            LOCK_FILE)}


@pytest.mark.slow
def test_torn_experiment_state_is_refused_and_never_starts_a_new_search(small_experiment, capsys):
    import tune_main
    from hiercls.tune.guard import TornStateError
    from hiercls.tune.runner import run_search

    spec = small_experiment
    folder = spec.experiment_dir
    state = sorted(folder.glob("experiment_state-*.json"))[-1]
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])  # torn mid-write
    before = _listing(folder)
    code = tune_main.main(["--name", "small", "--storage-path", str(spec.storage_path), "--resume"])
    err = _driver_output(capsys.readouterr().err)  # the session's Ray may forward a stray worker line
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert str(state) in err and "torn" in err and "not complete JSON" in err
    assert _listing(folder) == before  # nothing started, nothing written

    # an older complete state file: named in the message as the way out
    older = folder / "experiment_state-0000-00-00_00-00-00.json"
    older.write_bytes(whole)
    with pytest.raises(TornStateError, match=older.name):
        run_search(spec, resume=True, echo=lambda line: None)
    older.unlink()

    # a truncated tuner.pkl (Ray unpickles it first)
    state.write_bytes(whole)
    tuner = folder / "tuner.pkl"
    data = tuner.read_bytes()
    tuner.write_bytes(data[:-20])
    with pytest.raises(TornStateError, match="tuner.pkl.*not a complete pickle"):
        run_search(spec, resume=True, echo=lambda line: None)
    tuner.write_bytes(data)

    # complete JSON that Ray still cannot restore: Ray would log "Failed to restore the run state" and
    # start a new search; hiercls stops instead (exit 3) and the experiment keeps one state file
    state.write_text(json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {}, "stats": {}}))
    with pytest.raises(UntrustedExperimentError, match=f"'{state.name}' is not one hiercls wrote"):
        run_search(spec, resume=True, echo=lambda line: None)  # not what the search wrote: refused first
    adopt(folder)  # as if the search had written it
    before = _listing(folder)
    with pytest.raises(TornStateError, match="Ray could not restore"):
        run_search(spec, resume=True, echo=lambda line: None)
    assert _listing(folder) == before
    assert len(list(folder.glob("experiment_state-*.json"))) == 1


def test_torn_pickles_are_found_without_unpickling(tmp_path):
    from hiercls.tune.guard import TornStateError, check_state_intact

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "experiment_state-1.json").write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    payload = pickle.dumps({"a": list(range(100))})
    (folder / "tuner.pkl").write_bytes(payload)
    (folder / "searcher-state-1.pkl").write_bytes(payload)
    check_state_intact(folder)
    (folder / "searcher-state-2.pkl").write_bytes(payload[:10])  # the newest one is what Ray reads
    with pytest.raises(TornStateError, match="searcher-state-2.pkl"):
        check_state_intact(folder)
    (folder / "searcher-state-2.pkl").unlink()
    (folder / "experiment_state-2.json").write_text("")
    with pytest.raises(TornStateError, match="experiment_state-2.json.*empty.*experiment_state-1.json"):
        check_state_intact(folder)


@pytest.mark.slow
def test_results_are_read_back_with_a_torn_error_pickle(ray_session, tmp_path):
    """A trial's error.pkl torn by a full disk or a kill (before hiercls wrote atomically): Ray reads it
    through the experiment's filesystem when it builds the search's results; hiercls's filesystem has it
    read as missing, so Ray takes the error from error.txt instead of failing with the whole results."""
    import pyarrow.fs as pafs
    from ray import tune

    from hiercls.tune.atomicfs import atomic_local_filesystem

    def failing_trial(config):  # defined here: Ray's workers receive it by value
        raise RuntimeError("this trial fails on purpose")

    storage = tmp_path / "storage"
    tuner = tune.Tuner(failing_trial, run_config=tune.RunConfig(
        name="fails", storage_path=str(storage), storage_filesystem=atomic_local_filesystem(),
        failure_config=tune.FailureConfig(max_failures=0)))
    assert tuner.fit().num_errors == 1
    (error_pickle,) = (storage / "fails").glob("*/error.pkl")
    error_pickle.write_bytes(error_pickle.read_bytes()[:20])

    def results(filesystem):
        return tune.Tuner.restore(str(storage / "fails"), failing_trial,
                                  storage_filesystem=filesystem).get_results()

    grid = results(atomic_local_filesystem())
    assert grid.num_errors == 1 and "this trial fails on purpose" in str(grid[0].error)
    with pytest.raises(Exception):  # noqa: B017 - Ray's own failure reading the torn pickle, any kind
        results(pafs.LocalFileSystem())


# ---------------------------------------------------------------------------------------------- item 2
class _Planted:
    """Unpickling this creates ``marker`` (what a planted tuner.pkl could do, or worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _planted_experiment(storage: Path, marker: Path) -> Path:
    from hiercls.tune.plan import TRAINABLE_KEY
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.load(_space(storage.parent / "evil.yaml"),
                           {"name": "evil", "storage_path": str(storage)}).resolved()
    folder = spec.experiment_dir
    folder.mkdir(parents=True)
    (folder / "search_spec.yaml").write_text(spec.to_yaml() + yaml.safe_dump({TRAINABLE_KEY: "toy"}))
    (folder / "tuner.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [], "runner_data": {}, "stats": {}}))
    (folder / "trial_abc").mkdir()
    return folder


@pytest.mark.slow
def test_world_writable_experiment_with_a_planted_tuner_pkl_is_refused(tmp_path):
    storage = tmp_path / "storage"
    marker = tmp_path / "pwned"
    folder = _planted_experiment(storage, marker)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Planted(probe)))  # the payload is live: unpickling it creates a file
    assert probe.exists()
    folder.chmod(folder.stat().st_mode | 0o002)  # chmod o+w

    run = subprocess.run(_command("--name", "evil", "--storage-path", str(storage), "--resume"), cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    errors = _error_lines(run.stderr)
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert str(folder) in errors[0] and "world-writable" in errors[0] and "--trust-experiment" in errors[0]
    assert "unpickles" in errors[0]
    assert not marker.exists()

    # a world-writable state file in a private folder is refused too, naming the file
    folder.chmod(folder.stat().st_mode & ~0o002)
    (folder / "tuner.pkl").chmod(0o666)
    run = subprocess.run(_command("--name", "evil", "--storage-path", str(storage), "--resume"), cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and str(folder / "tuner.pkl") in run.stderr, run.stderr
    assert not marker.exists()


def test_another_users_experiment_is_refused(tmp_path, monkeypatch):
    from hiercls.experiment.manifest import adopt
    from hiercls.tune.guard import UntrustedExperimentError, check_trusted, untrusted_paths

    folder = _planted_experiment(tmp_path / "storage", tmp_path / "pwned")
    (folder / "trial_abc" / "error.pkl").write_bytes(b"x")
    with pytest.raises(UntrustedExperimentError, match="pickle_manifest.json. is missing"):
        check_trusted(folder)  # ours, not world-writable, but no record of who wrote its pickles
    adopt(folder)
    check_trusted(folder)  # ours, not world-writable, every pickle recorded with our key
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 4242)
    bad = untrusted_paths(folder)
    names = {p.name for p, _ in bad}
    assert {folder.name, "tuner.pkl", "trial_abc", "error.pkl"} <= names
    assert all("not by you" in reason for _, reason in bad)
    with pytest.raises(UntrustedExperimentError, match="--trust-experiment"):
        check_trusted(folder)


def test_trust_experiment_flag_skips_the_check(tmp_path, monkeypatch):
    """--trust-experiment goes past the ownership check (the planted pickle is then Ray's to read: the
    test stops right there, at the check that Ray saved a state to restore, before anything is
    unpickled)."""
    import hiercls.tune.plan as runner
    from hiercls.tune.guard import UntrustedExperimentError
    from hiercls.tune.spec import SearchSpec

    storage = tmp_path / "storage"
    folder = _planted_experiment(storage, tmp_path / "pwned")
    folder.chmod(folder.stat().st_mode | 0o002)
    spec = SearchSpec.load(folder / "search_spec.yaml", {"storage_path": str(storage)},
                           ignore=("trainable",)).resolved()
    seen = []

    class Stop(Exception):
        pass

    def can_restore(path, *args, **kwargs):
        seen.append(str(path))
        raise Stop

    monkeypatch.setattr(runner, "restorable", can_restore)
    with pytest.raises(UntrustedExperimentError, match="world-writable"):
        runner.check_experiment(spec, resume=True)
    with pytest.raises(Stop):
        runner.check_experiment(spec, resume=True, trust=True)
    assert seen == [str(folder)]


# ---------------------------------------------------------------------------------------------- item 4
@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["ctrl-c-twice", "sigterm"])
def test_interrupts_exit_130_with_the_resume_hint(ray_session, tmp_path, signals):
    """Ctrl-C twice (the second while Tune saves its state or Ray stops: today a raw KeyboardInterrupt
    traceback), or SIGTERM (a batch system's time limit): exit 130, the resume command, no traceback."""
    address = ray_session.get_runtime_context().gcs_address
    space = _space(tmp_path / "toy.yaml")
    storage = tmp_path / "storage"
    folder = storage / "twice"
    err_path = tmp_path / "err.log"
    with open(tmp_path / "out.log", "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            _command("--space", str(space), "--trainable", "toy", "--toy-sleep", "1.0", "--name", "twice",
                     "--storage-path", str(storage), "--address", address),
            cwd=ROOT, env=ENV, stdout=out, stderr=err,
        )
        try:
            _wait_for(lambda: any(folder.glob("trial_*/checkpoint_000000")), proc, err_path)
            for i, number in enumerate(signals):
                if i:
                    time.sleep(0.3)
                proc.send_signal(number)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    stderr = err_path.read_text(errors="replace")
    stdout = (tmp_path / "out.log").read_text(errors="replace")
    assert code == 130, (stdout[-2000:], stderr[-3000:])
    assert "Traceback" not in _driver_output(stderr), stderr[-4000:]
    assert f"--name twice --storage-path {storage} --resume" in stdout + stderr, (stdout + stderr)[-3000:]
    assert (folder / "tuner.pkl").is_file() and any(folder.glob("experiment_state-*.json"))


# ---------------------------------------------------------------------------------------------- item 5
def _serve_silence() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])  # keep connections open, never answer
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.slow
def test_an_address_where_another_server_listens_fails_fast(ray_session, tmp_path):
    from hiercls.tune.runner import ResourceError, check_reachable

    check_reachable(ray_session.get_runtime_context().gcs_address)  # a real Ray head passes

    silent, silent_port = _serve_silence()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    space = _space(tmp_path / "toy.yaml", num_samples=1, epochs=1, grace_period=1)
    try:
        for port in (silent_port, web.server_address[1]):
            address = f"127.0.0.1:{port}"
            with pytest.raises(ResourceError, match="not a Ray head"):
                check_reachable(address)
            started = time.perf_counter()
            run = subprocess.run(
                _command("--space", str(space), "--trainable", "toy", "--address", address, "--name", "x",
                         "--storage-path", str(tmp_path / "storage")),
                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
            )
            assert time.perf_counter() - started < 30
            assert run.returncode == 2, run.stdout + run.stderr
            errors = _error_lines(run.stderr)
            assert len(errors) == 1 and f"'{address}'" in errors[0], run.stderr
            assert "Traceback" not in run.stderr
    finally:
        web.shutdown()
        silent.close()
