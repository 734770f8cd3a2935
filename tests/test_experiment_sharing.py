"""One experiment, many hands (issue 22): a lock per experiment, experiments that can be copied and moved,
only our own pickles unpickled, a batch system's group SIGTERM, a killed driver's lost point. The fast
tests need no Ray; the slow ones run real drivers with the toy trainable (each subprocess has a timeout)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hiercls.experiment import lock as lockmod
from hiercls.experiment import manifest
from hiercls.experiment.lock import (
    LOCK_FILE,
    ExperimentInUseError,
    check_not_in_use,
    experiment_lock,
    lock_holder,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
PROG = "python tune_main.py: error:"


def _dead_pid() -> int:
    """A PID no process has now (a child that has exited and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _record(folder: Path, host: str, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"host": host, "pid": pid, "started": 1.8e9, "command": "x"}))


# ---------------------------------------------------------------------------------------------- the lock
def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "exp"
    with experiment_lock(folder) as holder:
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        assert lock_holder(folder) == holder
        with pytest.raises(ExperimentInUseError) as info:  # a second open file description: flock refuses
            with experiment_lock(folder):
                pass
        message = str(info.value)
        assert f"process {os.getpid()} on host {socket.gethostname()}" in message and "\n" not in message
        assert "one driver at a time" in message
    assert not folder.exists()  # made for the lock alone: nothing left behind
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "result.json").write_text("{}")
    with experiment_lock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept" / LOCK_FILE).read_text() == ""  # released: the record cleared
    assert lock_holder(tmp_path / "kept") is None


def test_a_dead_drivers_lock_on_this_host_is_taken_over(tmp_path):
    folder = tmp_path / "exp"
    _record(folder, socket.gethostname(), _dead_pid())
    with experiment_lock(folder) as holder:
        assert holder.pid == os.getpid()


def test_another_hosts_lock_is_refused_with_how_to_clear_it(tmp_path):
    folder = tmp_path / "exp"
    _record(folder, "node-17.cluster", 4242)
    with pytest.raises(ExperimentInUseError) as info:
        with experiment_lock(folder):
            pass
    message = str(info.value)
    assert "process 4242 on host node-17.cluster" in message
    assert f"delete {str(folder / LOCK_FILE)!r}" in message
    (folder / LOCK_FILE).unlink()  # the way out it names
    with experiment_lock(folder):
        pass


def test_without_file_locks_the_record_decides(tmp_path, monkeypatch):
    """A file system without locks (flock: ENOLCK): a live holder's record refuses, a dead one's does not."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    folder = tmp_path / "exp"
    _record(folder, socket.gethostname(), os.getppid())  # alive
    with pytest.raises(ExperimentInUseError, match=f"process {os.getppid()} on host"):
        with experiment_lock(folder):
            pass
    with pytest.raises(ExperimentInUseError, match=f"process {os.getppid()} on host"):
        check_not_in_use(folder)  # the read-only check: no lock to probe, the record decides
    _record(folder, socket.gethostname(), _dead_pid())
    with experiment_lock(folder) as holder:
        assert holder.pid == os.getpid()
    assert lockmod.LOCK_FILE == LOCK_FILE


def test_a_lock_held_by_an_orphan_of_a_dead_driver_is_taken_over(tmp_path):
    """The kernel lock held by a process that inherited it from a driver now dead (the record names the
    driver): the lock file is replaced, and the orphan holds a lock on a file no longer there."""
    folder = tmp_path / "exp"
    folder.mkdir()
    dead = _dead_pid()
    _record(folder, socket.gethostname(), dead)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with experiment_lock(folder) as mine:
            assert mine.pid == os.getpid()
    finally:
        holder.kill()
        holder.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- the record
def test_the_signed_record_finds_every_pickle_not_written_by_hiercls(tmp_path, monkeypatch):
    monkeypatch.setenv(manifest.KEY_ENV, str(tmp_path / "config" / "experiment.key"))
    folder = tmp_path / "exp"
    (folder / "trial_a").mkdir(parents=True)
    (folder / "grow-1" / "trial_b").mkdir(parents=True)
    files = {"tuner.pkl": b"T", "experiment_state-1.json": b"{}", "searcher-state-1.pkl": b"S",
             "trial_a/params.pkl": b"P", "trial_a/error.pkl": b"E"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "grow-1" / "tuner.pkl").write_bytes(b"G")  # another Ray experiment: its own record
    (folder / "grow-1" / "trial_b" / "params.pkl").write_bytes(b"Q")
    (folder / "trial_a" / "checkpoint_000001").mkdir()
    (folder / "trial_a" / "checkpoint_000001" / "last.pth").write_bytes(b"W")  # never unpickled
    assert manifest.pickled_files(folder) == sorted(files)
    assert manifest.pickled_files(folder / "grow-1") == ["trial_b/params.pkl", "tuner.pkl"]

    problems = manifest.manifest_problems(folder)
    assert len(problems) == 1 and "pickle_manifest.json) is missing" in problems[0]
    for name, data in files.items():  # as the search's file system records each write
        manifest.record(*manifest.signed_name(folder / name), hashlib.sha256(data).hexdigest())
    assert manifest.manifest_problems(folder) == []
    key = manifest.key_path()
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32

    (folder / "tuner.pkl").write_bytes(b"planted")
    assert manifest.manifest_problems(folder) == [
        "'tuner.pkl' is not one hiercls wrote (not in its signed pickle_manifest.json)"]
    (folder / "tuner.pkl").write_bytes(b"T")
    (folder / "trial_a" / "extra.pkl").write_bytes(b"X")
    assert manifest.manifest_problems(folder) == [
        "'trial_a/extra.pkl' is not one hiercls wrote (not in its signed pickle_manifest.json)"]
    (folder / "trial_a" / "extra.pkl").unlink()

    # a record edited by hand (the planted file's digest added) is no longer authentic
    data = json.loads((folder / manifest.MANIFEST_FILE).read_text())
    data["files"]["tuner.pkl"].append(hashlib.sha256(b"planted").hexdigest())
    (folder / manifest.MANIFEST_FILE).write_text(json.dumps(data))
    (folder / "tuner.pkl").write_bytes(b"planted")
    assert "is not signed with your key" in manifest.manifest_problems(folder)[0]

    # another user's key: nothing is authentic; adopting records the files under it
    monkeypatch.setenv(manifest.KEY_ENV, str(tmp_path / "other.key"))
    assert "is not signed with your key" in manifest.manifest_problems(folder)[0]
    assert manifest.adopt(folder) == len(files)
    assert manifest.manifest_problems(folder) == []


def test_each_name_keeps_its_last_digests(tmp_path, monkeypatch):
    """A writer killed after recording a new digest but before renaming the file into place leaves the old
    file, whose digest is still in the record."""
    monkeypatch.setenv(manifest.KEY_ENV, str(tmp_path / "k"))
    folder = tmp_path / "exp"
    folder.mkdir()
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    for digest in digests:
        manifest.record(folder, "tuner.pkl", digest)
    files = json.loads((folder / manifest.MANIFEST_FILE).read_text())["files"]
    assert files == {"tuner.pkl": digests[-manifest.KEEP:]}


def test_a_key_others_can_read_is_refused(tmp_path, monkeypatch):
    key = tmp_path / "experiment.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    monkeypatch.setenv(manifest.KEY_ENV, str(key))
    with pytest.raises(manifest.ManifestError, match="accessible to others .*chmod 600"):
        manifest.user_key()
    key.chmod(0o600)
    assert manifest.user_key() == key.read_bytes()
    key.write_bytes(b"short")
    with pytest.raises(manifest.ManifestError, match="not a 32-byte key"):
        manifest.user_key()


def test_the_search_file_system_records_what_ray_unpickles(tmp_path):
    """Ray's uploads through hiercls's storage file system: the state files and a trial's pickles are
    recorded (with the digest of what was written), a checkpoint is not."""
    import pyarrow.fs as pafs

    from hiercls.tune.atomicfs import atomic_local_filesystem

    fs = atomic_local_filesystem()
    folder = tmp_path / "exp"
    for name, data in [("tuner.pkl", b"tuner"), ("search_gen_state-2.json", b"gen"),
                       ("trial_x/params.pkl", b"params"), ("trial_x/checkpoint_000000/last.pth", b"w")]:
        with fs.open_output_stream(str(folder / name)) as out:
            out.write(data)
    files = json.loads((folder / manifest.MANIFEST_FILE).read_text())["files"]
    assert files == {"tuner.pkl": [hashlib.sha256(b"tuner").hexdigest()],
                     "search_gen_state-2.json": [hashlib.sha256(b"gen").hexdigest()],
                     "trial_x/params.pkl": [hashlib.sha256(b"params").hexdigest()]}
    assert manifest.manifest_problems(folder) == []
    assert isinstance(fs, pafs.PyFileSystem)


# ---------------------------------------------------------------------------------------------- lost point
def test_a_point_lost_with_a_killed_driver_runs_again(tmp_path):
    """The driver was killed while the points_to_evaluate trial ran and before Ray saved it: on resume the
    study's RUNNING trial is marked failed and its values are asked again, first."""
    from optuna.trial import TrialState

    from hiercls.experiment.study import load_study, open_storage
    from hiercls.tune.space import DefineByRun, SearchAlgorithm
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.from_dict({"name": "exp", "storage_path": str(tmp_path), "epochs": 2,
                                 "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}})
    folder = tmp_path / "exp"

    def searcher() -> SearchAlgorithm:
        return SearchAlgorithm(DefineByRun(spec.params()), "objective", "min",
                               points_to_evaluate=[{"lr": 0.05}], storage=open_storage(folder),
                               study_name="exp", experiment_dir=str(folder))

    first = searcher()
    first.save(str(folder / "searcher-state-1.pkl"))  # Ray's last save: before the point was asked
    assert first.suggest("lost")["lr"] == 0.05  # then the driver is killed

    restored = pickle.loads(pickle.dumps(first))  # as tuner.pkl brings it back
    restored.restore(str(folder / "searcher-state-1.pkl"))
    again = restored.suggest("again")
    assert again["lr"] == 0.05 and again["trial_index"] == 1
    trials = load_study(folder).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert trials[1].user_attrs["rerun_of"] == 0 and trials[1].user_attrs["trial_folder"] == "trial_again"


def test_a_searcher_pickles_without_its_journal(tmp_path):
    """tuner.pkl holds the searcher without an open journal: restored into another folder it opens the
    journal there (a copy never writes into the original's file, a moved one finds its own)."""
    from hiercls.experiment.study import STUDY_FILE, open_storage
    from hiercls.tune.space import DefineByRun, SearchAlgorithm, restoring_into
    from hiercls.tune.spec import SearchSpec

    spec = SearchSpec.from_dict({"name": "orig", "storage_path": str(tmp_path), "epochs": 2,
                                 "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}}})
    original = tmp_path / "orig"
    first = SearchAlgorithm(DefineByRun(spec.params()), "objective", "min", storage=open_storage(original),
                            study_name="orig", experiment_dir=str(original))
    data = pickle.dumps(first)
    assert str(original / STUDY_FILE).encode() not in data
    moved = tmp_path / "moved"
    shutil.move(original, moved)
    with restoring_into(moved):
        restored = pickle.loads(data)
    assert restored._experiment_dir == str(moved)
    assert Path(restored._opened_storage()._backend._file_path) == moved / STUDY_FILE


# ---------------------------------------------------------------------------------------------- real drivers
def _space(path: Path, **changes) -> Path:
    values = {"num_samples": 4, "epochs": 6, "grace_period": 6, "max_concurrent": 2, "cpus_per_trial": 0.5,
              "startup_trials": 2, "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2}},
              "points_to_evaluate": [{"lr": 0.05}]}
    values.update(changes)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def _command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "tune_main.py"), *args]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_command(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _interrupted(tmp_path: Path, storage: Path, name: str, address: str) -> Path:
    """A toy search of 4 trials stopped (SIGINT) once two trials have finished and one has checkpointed."""
    folder = storage / name
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        space = _space(tmp_path / f"{name}.yaml")
        args = ("--space", str(space), "--trainable", "toy", "--toy-sleep", "0.7", "--name", name,
                "--storage-path", str(storage), "--address", address)
        proc = subprocess.Popen(_command(*args), cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not (len((folder / "toy_ends.log").read_text().splitlines()) >= 2
                   if (folder / "toy_ends.log").is_file() else False):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    return folder


@pytest.mark.slow
def test_two_drivers_on_one_name_one_runs_one_is_refused(ray_session, tmp_path):
    """Two new searches of one name started together, then two resumes of it started together: each time
    one runs and the other is refused in one line naming the holder (exit 2), and the experiment holds
    num_samples trials."""
    address = ray_session.get_runtime_context().gcs_address
    storage = tmp_path / "runs"
    space = _space(tmp_path / "s.yaml", num_samples=3, epochs=3, grace_period=3)

    def together(*args: str) -> list[subprocess.CompletedProcess]:
        procs = [subprocess.Popen(_command(*args, "--address", address), cwd=ROOT, env=ENV, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]

    for args in [("--space", str(space), "--trainable", "toy", "--toy-sleep", "0.5"), ("--resume",)]:
        runs = together(*args, "--name", "same", "--storage-path", str(storage))
        codes = sorted(r.returncode for r in runs)
        refused = [r for r in runs if r.returncode == 2]
        assert codes == [0, 2], [(r.returncode, r.stderr[-2000:]) for r in runs]
        errors = [ln for ln in refused[0].stderr.splitlines() if ln.startswith(PROG)]
        assert len(errors) == 1 and "is in use by process" in errors[0], refused[0].stderr[-2000:]
        assert "Traceback" not in refused[0].stderr
    folder = storage / "same"
    assert len(list(folder.glob("trial_*"))) == 3
    assert sorted(ln.split()[0] for ln in (folder / "toy_starts.log").read_text().splitlines()) == sorted(
        p.name.removeprefix("trial_") for p in folder.glob("trial_*"))  # every trial started once


@pytest.mark.slow
def test_copied_and_moved_experiments_resume_where_they_are(ray_session, tmp_path):
    """A copy resumes into the copy only (the original byte-identical afterwards); a moved one resumes (and
    grows) where it now is; a planted tuner.pkl in a copy is refused without --trust-experiment and nothing
    runs."""
    address = ray_session.get_runtime_context().gcs_address
    storage = tmp_path / "runs"
    original = _interrupted(tmp_path, storage, "jr", address)
    before = _tree(original)

    copy = tmp_path / "other" / "jr"
    shutil.copytree(original, copy)
    resumed = _run("--name", "jr", "--storage-path", str(copy.parent), "--resume", "--address", address)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _tree(original) == before  # the original untouched
    trials = sorted(copy.glob("trial_*"))
    assert len(trials) == 4 and all((t / "result.json").is_file() for t in trials)
    from hiercls.experiment.study import load_study

    def complete(folder: Path) -> int:
        return sum(t.state.name == "COMPLETE" for t in load_study(folder).trials)

    assert complete(copy) == 4 and complete(original) == 2  # the copy's trials told to the copy's journal

    # planted: a copy of the original with a tuner.pkl that would run code
    planted = tmp_path / "planted" / "jr"
    shutil.copytree(original, planted)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (planted / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    planted_before = _tree(planted)
    refused = _run("--name", "jr", "--storage-path", str(planted.parent), "--resume", "--address", address)
    assert refused.returncode == 2 and not marker.exists(), refused.stderr[-3000:]
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith(PROG)]
    assert len(errors) == 1 and "'tuner.pkl' is not one hiercls wrote" in errors[0], errors
    assert "--trust-experiment" in errors[0]
    assert _tree(planted) == planted_before  # nothing ran

    # moved: resumed and grown where it is now
    moved = tmp_path / "moved" / "jr"
    moved.parent.mkdir()
    shutil.move(original, moved)
    grown = _run("--name", "jr", "--storage-path", str(moved.parent), "--resume", "--num-samples", "5",
                 "--address", address)
    assert grown.returncode == 0, grown.stderr[-3000:]
    rows = (moved / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and not original.exists()
    assert len(list((moved / "grow-1").glob("trial_*"))) == 1


@pytest.mark.slow
def test_a_group_sigterm_ends_with_the_table_and_the_resume_line(tmp_path):
    """SIGTERM to the driver's whole process group (a batch system's time limit), Ray's own processes
    included: exit 130 with the table and the resume command in under 30 s; that command finishes it."""
    storage = tmp_path / "runs"
    folder = storage / "batch"
    log = tmp_path / "batch.log"
    space = _space(tmp_path / "b.yaml", num_samples=3, epochs=8, grace_period=8)
    with open(log, "w") as out:
        proc = subprocess.Popen(_command("--space", str(space), "--trainable", "toy", "--toy-sleep", "1",
                                         "--name", "batch", "--storage-path", str(storage)),
                                cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 240
            while not any(folder.glob("trial_*/checkpoint_000001")):
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
            group = os.getpgid(proc.pid)
            assert group == proc.pid  # its own group, as under a batch system
            started = time.monotonic()
            os.killpg(group, signal.SIGTERM)
            code = proc.wait(timeout=90)
            seconds = time.monotonic() - started
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert code == 130 and seconds < 30, (code, seconds, text[-3000:])
    assert "trials by val_top1_error" in text and "Traceback" not in text, text[-3000:]
    command = f"python tune_main.py --name batch --storage-path {storage} --resume"
    assert command in text and (folder / "summary.csv").is_file()

    def running() -> list[str]:  # a zombie (stat Z) has ended; only its parent has not collected it yet
        ps = subprocess.run(["ps", "-o", "pid=,stat=,comm=", "-g", str(group)], capture_output=True,
                            text=True)
        return [line for line in ps.stdout.splitlines() if not line.split()[1].startswith("Z")]

    deadline = time.time() + 10
    while time.time() < deadline and running():
        time.sleep(0.2)
    assert running() == []  # nothing of the driver's is left running

    resumed = _run(*command.split()[2:])  # the printed command, as a user pastes it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = (folder / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and all(",ok," in row for row in rows[1:]), rows


def test_trial_folders_a_killed_driver_never_saved_are_found(tmp_path):
    """A trial folder Ray's newest saved state does not list: started after the last save by a driver then
    killed (Ray never runs it again; the searcher reruns its values), set aside by a resume."""
    from hiercls.experiment.state import lost_trial_folders

    folder = tmp_path / "exp"
    for name in ("trial_a", "trial_b", "trial_c"):
        (folder / name).mkdir(parents=True)
    assert lost_trial_folders(folder) == []  # no state: nothing can be judged
    trial_data = [[json.dumps({"trial_id": t, "status": "TERMINATED", "relative_logdir": f"trial_{t}"}), "{}"]
                  for t in ("a", "b")]
    (folder / "experiment_state-1.json").write_text(json.dumps({"trial_data": trial_data, "runner_data": {}}))
    assert lost_trial_folders(folder) == [folder / "trial_c"]


@pytest.mark.slow
def test_a_growth_interrupted_resumes_its_running_trial_from_its_checkpoint(ray_session, tmp_path):
    """Ctrl-C while a growth runs, then the resume: the growth's running trial continues from its last
    checkpoint (its second start is at a later epoch), no finished trial runs again."""
    address = ray_session.get_runtime_context().gcs_address
    storage = tmp_path / "runs"
    space = _space(tmp_path / "g.yaml", num_samples=2, epochs=8, grace_period=8, max_concurrent=1)
    first = _run("--space", str(space), "--trainable", "toy", "--name", "g", "--storage-path", str(storage),
                 "--address", address)
    assert first.returncode == 0, first.stderr[-3000:]
    grow = storage / "g" / "grow-1"
    log = tmp_path / "grow.log"
    with open(log, "w") as out:
        args = ("--name", "g", "--storage-path", str(storage), "--resume", "--num-samples", "3",
                "--toy-sleep", "0.7", "--address", address)
        proc = subprocess.Popen(_command(*args), cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not any(grow.glob("trial_*/checkpoint_000002")):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    resumed = _run("--name", "g", "--storage-path", str(storage), "--resume", "--address", address)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    starts = [line.split() for line in (grow / "toy_starts.log").read_text().splitlines()]
    assert len(starts) == 2 and starts[0][0] == starts[1][0], starts
    assert starts[0][1] == "1" and int(starts[1][1]) >= 4, starts  # continued, not from scratch
    assert len((storage / "g" / "toy_starts.log").read_text().splitlines()) == 2  # the first part: once each


def test_a_record_no_process_holds_on_this_host_is_not_in_use(tmp_path):
    """A lock record naming a live process of this host that holds no lock on the file (a copy made while
    its driver ran, or a PID used again since): the read-only check and the lock both go on; while the
    record's process really holds the lock, both refuse."""
    folder = tmp_path / "exp"
    _record(folder, socket.gethostname(), os.getppid())  # alive, holds nothing
    (folder / "search_spec.yaml").write_text("{}")  # an experiment: the lock file stays after a release
    check_not_in_use(folder)
    with experiment_lock(folder) as holder:
        assert holder.pid == os.getpid()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, json, os, socket, time\n"
        f"fd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "record = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': 0}\n"
        "os.write(fd, json.dumps(record).encode())\n"
        "print('held', flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ExperimentInUseError, match=f"process {holder.pid} on host"):
            check_not_in_use(folder)
        with pytest.raises(ExperimentInUseError, match=f"process {holder.pid} on host"):
            with experiment_lock(folder):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_an_in_memory_study_database_and_a_missing_journal_are_refused(tmp_path, capsys):
    import tune_main

    for url in ("sqlite://", "sqlite:///:memory:"):
        argv = ["--trainable", "toy", "--name", "mem", "--storage-path", str(tmp_path), "--optuna-storage",
                url, "--check"]
        assert tune_main.main(argv) == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(PROG)]
        assert len(errors) == 1 and "is an in-memory database" in errors[0], errors
    assert not (tmp_path / "mem").exists()
