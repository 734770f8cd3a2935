"""Faults injected into plain training runs and rescoring: safe checkpoints (weights_only, never executed),
device-correct RNG restore, corrupt checkpoints, full and unwritable disks, double Ctrl-C, incomplete
data. Each test names the problem of issue 10 it covers."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from inprocess import run_main

from hiercls import engine
from hiercls.data import Cifar100, check_complete
from hiercls.engine import CheckpointError, _rng_state, _set_rng_state, fit, load_checkpoint
from hiercls.storage import StorageError, atomic_write_files, check_writable

SMALL = ["--max-train-samples", "200", "--val-size", "100", "--batch_size", "50", "--no-test", "--device",
         "cpu", "--num_threads", "1"]
TIMING = ("epoch_seconds", "images_per_second")


def run_cli(*args: str, module: str = "hiercls.train", capsys=None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in this process (tests/inprocess.py): exit status, stdout and stderr."""
    return run_main(args, module, capsys)


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def one_line_error(stderr: str) -> str:
    """The error line of a CLI that failed cleanly: exactly one non-empty line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1, stderr
    return lines[0]


class _Payload:
    """Unpickling this runs ``touch MARKER``: a checkpoint carrying it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_malicious(path: Path, marker: Path, *, raw_pickle: bool = False) -> None:
    payload = {"format": "hiercls-checkpoint", "version": 2, "model": _Payload(marker), "config": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw_pickle:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)


@pytest.fixture(scope="module")
def trained(cifar_dir, tmp_path_factory):
    """A finished 2-epoch plain run (through the CLI's main, in this process), kept read-only by the tests
    that copy it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_cli("--data_path", str(cifar_dir), "--out_folder", str(out), "--epochs", "2", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return out


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run whose config.yaml names its new folder (so --resume accepts it)."""
    import yaml

    target = tmp_path / "run"
    shutil.copytree(trained, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["out_folder"] = str(target)
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ checkpoint format
def test_checkpoints_hold_only_tensors_and_plain_values(trained):
    """Problem 3: every checkpoint loads with weights_only=True, all tensors on the CPU."""
    for name in ("checkpoints/last.pth", "checkpoints/best.pth"):
        state = torch.load(trained / name, map_location="cpu", weights_only=True)
        assert state["format"] == "hiercls-checkpoint" and state["version"] == 2
        assert isinstance(state["config"], dict) and isinstance(state["history"], list)
    last = load_checkpoint(trained / "checkpoints" / "last.pth")
    rng = last["rng"]
    assert rng["torch"].dtype == torch.uint8 and rng["torch"].device.type == "cpu"
    assert isinstance(rng["python"], list) and isinstance(rng["numpy"]["key"], torch.Tensor)
    assert "cuda" not in rng  # a CPU run saves no CUDA state
    assert last["epoch"] == 2 and [r["epoch"] for r in last["history"]] == [1, 2]


def test_resume_loads_checkpoints_to_the_cpu_safely(tiny_run, cifar, monkeypatch):
    """Problem 2: the engine never loads a checkpoint onto the run's device (RNG states must stay CPU
    ByteTensors) and never with weights_only=False."""
    config = tiny_run(epochs=1)
    fit(config, data=cifar)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    result = fit(config, resume=True, data=cifar)  # 1 of 1 epochs done: loads last.pth, reruns nothing
    assert result["epochs_run"] == 1
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)


class _FakeCuda:
    """Stands in for ``torch.cuda`` on a machine with ``count`` GPUs; ``set_rng_state`` checks its input
    exactly as torch does (a CPU ByteTensor, else TypeError)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.set_calls: list[tuple[torch.Tensor, torch.device]] = []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.count

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        index = torch.device(device).index or 0
        assert index < self.count, f"no GPU {index}"
        return torch.full((16,), index + 1, dtype=torch.uint8)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.get_rng_state(f"cuda:{i}") for i in range(self.count)]

    def set_rng_state(self, state, device="cuda") -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.device.type != "cpu":
            raise TypeError("RNG state must be a torch.ByteTensor")
        index = torch.device(device).index or 0
        if index >= self.count:
            raise IndexError(f"no GPU {index}")
        self.set_calls.append((state.clone(), torch.device(device)))


def test_cuda_rng_state_of_the_run_device_restores_with_any_gpu_count(monkeypatch, tmp_path):
    """Problem 2: only the run device's CUDA state is saved (8 GPUs visible, the run on cuda:3), written
    and read back as a CPU ByteTensor, and restored on a machine with 1 GPU (the old code saved 8 and
    failed with IndexError there, and passed GPU tensors to set_rng_state: TypeError)."""
    eight = _FakeCuda(8)
    monkeypatch.setattr(torch, "cuda", eight)
    state = _rng_state(torch.device("cuda", 3))
    assert torch.equal(state["cuda"], torch.full((16,), 4, dtype=torch.uint8))
    path = tmp_path / "rng.pth"
    torch.save({"model": {}, "rng": state}, path)
    loaded = load_checkpoint(path)
    one = _FakeCuda(1)
    monkeypatch.setattr(torch, "cuda", one)
    _set_rng_state(loaded["rng"], torch.device("cuda", 0))
    assert len(one.set_calls) == 1
    restored, device = one.set_calls[0]
    assert torch.equal(restored, torch.full((16,), 4, dtype=torch.uint8))
    assert device == torch.device("cuda", 0)
    # a CPU run ignores a CUDA state, and a CUDA run without one in the file sets nothing
    _set_rng_state(loaded["rng"], torch.device("cpu"))
    _set_rng_state({k: v for k, v in loaded["rng"].items() if k != "cuda"}, torch.device("cuda", 0))
    assert len(one.set_calls) == 1


# ------------------------------------------------------------------------------------ malicious files
def test_malicious_last_pth_never_runs_on_resume(trained, cifar_dir, tmp_path, capsys):
    """Problem 3: --resume reads last.pth with weights_only=True; a pickle payload is refused, not run."""
    run = _copy_run(trained, tmp_path)
    marker = tmp_path / "PWNED"
    _write_malicious(run / "checkpoints" / "last.pth", marker)
    before = _snapshot(run)
    proc = run_cli("--data_path", str(cifar_dir), "--out_folder", str(run), "--epochs", "2", *SMALL,
                   "--resume", capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "last.pth" in line and "could run code" in line
    assert not marker.exists()
    assert _snapshot(run) == before  # nothing written or overwritten


@pytest.mark.parametrize("raw", [False, True], ids=["torch-save", "plain-pickle"])
def test_malicious_checkpoint_never_runs_in_evaluate(tmp_path, capsys, raw):
    """Problem 3: ``python -m hiercls.evaluate FILE.pth`` refuses a payload (exit 2, one line)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "received.pth"
    _write_malicious(path, marker, raw_pickle=raw)
    proc = run_cli(str(path), module="hiercls.evaluate", capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "received.pth" in line and "could run code" in line
    assert not marker.exists()


def test_malicious_best_pth_never_runs(trained, cifar_dir, tmp_path, capsys):
    """Problem 3: best.pth is read by evaluate ``--weights best``, by ``--resume-from-best`` and for the
    final test of the best-val model; a payload there never runs (exit 2, one line each time)."""
    import yaml

    run = _copy_run(trained, tmp_path)
    marker = tmp_path / "PWNED"
    _write_malicious(run / "checkpoints" / "best.pth", marker)
    proc = run_cli(str(run), "--weights", "best", "--split", "val", module="hiercls.evaluate", capsys=capsys)
    assert proc.returncode == 2 and "best.pth" in one_line_error(proc.stderr), proc.stderr
    args = ["--data_path", str(cifar_dir), "--out_folder", str(run), "--epochs", "2", *SMALL, "--resume"]
    proc = run_cli(*args, "--resume-from-best", capsys=capsys)
    assert proc.returncode == 2 and "could run code" in one_line_error(proc.stderr), proc.stderr
    # the finished run continued with the test pass on: the final test reads best.pth
    config = yaml_config(run)
    config["evaluate_test"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli(*[a for a in args if a != "--no-test"], capsys=capsys)
    assert proc.returncode == 2 and "could run code" in one_line_error(proc.stderr), proc.stderr
    assert not marker.exists()


def _files_that_are_not_checkpoints(folder: Path) -> dict[str, Path]:
    """Files torch's weights-only reader refuses although they hold no Python object: random bytes, text
    (one starting with ``c``, pickle's GLOBAL opcode, which torch reads as an import), JSON."""
    import random

    made = {"random-bytes": random.Random(0).randbytes(4096), "text": b"config: yes\nepochs: 2\n",
            "json": b'{"model": {}, "epoch": 1}\n', "nul-bytes": bytes(100)}
    for name, content in made.items():
        (folder / f"{name}.pth").write_bytes(content)
    return {name: folder / f"{name}.pth" for name in made}


def test_a_file_that_is_not_a_checkpoint_is_corrupt_not_code(tmp_path):
    """Issue 22: random bytes, text or JSON as a .pth are corrupt (the file named), not a file that
    'could run code' (what torch's refusal of their first byte used to be read as); a pickle of plain
    values is no torch checkpoint either."""
    for name, path in _files_that_are_not_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(path)
        assert str(refused.value) == (f"checkpoint {str(path)!r} is corrupt or truncated (not a torch "
                                      "checkpoint: neither torch's zip format nor a complete pickle)"), name
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}, "epoch": 1}))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(plain)
    assert "is not a torch checkpoint: a pickle of plain Python values" in str(refused.value)
    assert "run code" not in str(refused.value)


@pytest.mark.parametrize("how", ["plain-pickle", "protocol-0", "torch-save", "torch-legacy"])
def test_a_pickle_payload_could_run_code_and_never_runs(tmp_path, how):
    """A .pth that really holds a pickle importing a callable (``__reduce__`` -> ``os.system``, harmless
    here) keeps the 'could run code' refusal, names what it imports, and is never executed, in every
    form: a plain pickle (protocols 4 and 0) and torch's zip and legacy formats."""
    marker = tmp_path / "PWNED"
    payload = {"format": "hiercls-checkpoint", "version": 2, "model": _Payload(marker), "config": {}}
    path = tmp_path / "received.pth"
    if how == "plain-pickle":
        path.write_bytes(pickle.dumps(payload))
    elif how == "protocol-0":
        path.write_bytes(pickle.dumps(payload, protocol=0))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "torch-save")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {str(path)!r} holds Python objects other than tensors")
    assert f"(it imports {os.system.__module__}.system)" in message and "could run code" in message
    assert "corrupt" not in message
    assert not marker.exists()


def yaml_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def test_older_format_checkpoint_is_refused_with_one_line(trained, tmp_path):
    """A last.pth of the earlier format (numpy RNG arrays, readable only by unpickling) is refused."""
    import numpy as np

    run = _copy_run(trained, tmp_path)
    state = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    state.pop("format"), state.pop("version")
    state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    torch.save(state, run / "checkpoints" / "last.pth")
    with pytest.raises(CheckpointError, match="older hiercls format"):
        load_checkpoint(run / "checkpoints" / "last.pth")


# ------------------------------------------------------------------------------------ corrupt last.pth
def test_corrupt_last_pth_one_line_then_resume_from_best(trained, cifar_dir, tmp_path, capsys):
    """Problem 5: a truncated last.pth on --resume: one line naming the file and two ways on, nothing
    overwritten; --resume-from-best then finishes the run from best.pth and keeps the bad file."""
    run = _copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.pth"
    # pretend the run had 3 epochs and was interrupted after 2, with last.pth torn
    config = yaml_config(run)
    config["epochs"] = 3
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(config))
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    before = _snapshot(run)
    args = ["--data_path", str(cifar_dir), "--out_folder", str(run), "--epochs", "3", *SMALL]
    proc = run_cli(*args, "--resume", capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(last) in line and "corrupt or truncated" in line
    assert "--resume-from-best" in line and "--overwrite" in line
    assert _snapshot(run) == before

    best_epoch = torch.load(run / "checkpoints" / "best.pth", weights_only=True)["epoch"]
    proc = run_cli(*args, "--resume", "--resume-from-best", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert "not exact" in proc.stdout + proc.stderr
    history = json.loads((run / "all_epoch_results.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 4))
    assert without_timing(history[:best_epoch]) == without_timing(
        json.loads((trained / "all_epoch_results.json").read_text())[:best_epoch])
    assert (run / "checkpoints" / "last.pth.corrupt").read_bytes() == data[: len(data) // 3]
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 3


def test_resume_and_overwrite_together_are_refused(tiny_run, cifar):
    config = tiny_run()
    fit(config, data=cifar)
    with pytest.raises(engine.ConfigError, match="exclude each other"):
        fit(config, resume=True, overwrite=True, data=cifar)


# ------------------------------------------------------------------------------------ full / bad disks
def test_full_disk_plain_run_one_line_then_resume_equals_uninterrupted(tmpfs, cifar_dir, tmp_path, trained,
                                                                      capsys):
    """Problem 4: a plain run whose disk fills during epoch 2's checkpoint ends with one line naming
    the file and ENOSPC (exit 3); epoch 1's checkpoint and results are intact and no temporary file is
    left; after space is freed, --resume finishes with the same results as an uninterrupted run.

    Uses a real 60 MiB tmpfs (one checkpoint pair of Plain-11 is about 40 MiB, so epoch 1 fits and
    epoch 2's new pair does not); where mounting is not allowed, os.fsync is made to fail with ENOSPC
    from epoch 2 on in-process instead."""
    disk = tmp_path / "disk"
    out = disk / "run"
    args = ["--data_path", str(cifar_dir), "--out_folder", str(out), "--epochs", "2", *SMALL]
    if not tmpfs.mount(disk, "60m"):
        pytest.fail("cannot mount a tmpfs here; see test_full_disk_simulated for the in-process variant")
    try:
        proc = run_cli(*args, capsys=capsys)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        line = one_line_error(proc.stderr)
        assert "no space left on the device (ENOSPC)" in line and "--resume" in line
        assert str(out / "checkpoints") in line
        history = json.loads((out / "all_epoch_results.json").read_text())
        assert [r["epoch"] for r in history] == [1]
        assert load_checkpoint(out / "checkpoints" / "last.pth")["epoch"] == 1
        assert not [p for p in out.rglob("*.tmp")]
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        proc = run_cli(*args, "--resume", capsys=capsys)
        assert proc.returncode == 0, proc.stderr
        resumed = json.loads((out / "all_epoch_results.json").read_text())
        assert without_timing(resumed) == without_timing(
            json.loads((trained / "all_epoch_results.json").read_text()))
    finally:
        tmpfs.umount(disk)


def test_full_disk_simulated(tiny_run, cifar, monkeypatch):
    """Problem 4 without a mount: ENOSPC from the second checkpoint write on; the first epoch's
    checkpoint pair stays as it was and the error names the file and ENOSPC."""
    config = tiny_run(epochs=2)
    real_fsync = os.fsync
    count = {"n": 0}

    def failing_fsync(fd):
        count["n"] += 1
        if count["n"] > 5:  # 2 write probes, config.yaml, best.pth + last.pth of epoch 1; then full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError) as info:
        fit(config, data=cifar)
    assert info.value.errno == errno.ENOSPC and "ENOSPC" in str(info.value) and "--resume" in str(info.value)
    monkeypatch.setattr(os, "fsync", real_fsync)
    out = Path(config.out_folder)
    assert load_checkpoint(out / "checkpoints" / "last.pth")["epoch"] == 1
    assert not list(out.rglob("*.tmp"))
    assert fit(config, resume=True, data=cifar)["epochs_run"] == 2


def test_checkpoint_pair_is_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    a, b = tmp_path / "best.pth", tmp_path / "last.pth"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match="last.pth.*ENOSPC"):
        atomic_write_files([(a, b"new a"), (b, b"new b")])
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]


def test_unwritable_output_folder_is_refused_before_training(tmpfs, cifar_dir, tmp_path, capsys):
    """Problem 5: --out_folder under a regular file, or on a read-only mount: one line, exit 3, before
    any data is loaded or any epoch runs."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    started = time.perf_counter()
    proc = run_cli("--data_path", str(cifar_dir), "--out_folder", str(blocker / "run"), *SMALL,
                   "--epochs", "1", capsys=capsys)
    assert proc.returncode == 3, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(blocker) in line and "regular file" in line
    readonly = tmp_path / "ro"
    if not tmpfs.mount(readonly, "1m"):
        pytest.fail("cannot mount a tmpfs here")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(readonly)], check=True)
        proc = run_cli("--data_path", str(cifar_dir), "--out_folder", str(readonly / "run"), *SMALL,
                       "--epochs", "1", capsys=capsys)
        assert proc.returncode == 3, proc.stderr
        line = one_line_error(proc.stderr)
        assert "read-only file system (EROFS)" in line and str(readonly / "run") in line
    finally:
        tmpfs.umount(readonly)
    assert time.perf_counter() - started < 120


def test_check_writable_names_the_problem(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="is a regular file") as info:
        check_writable(blocker / "a" / "b", "--storage-path")
    assert info.value.errno == errno.ENOTDIR and "--storage-path" in str(info.value)
    assert check_writable(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())


# ------------------------------------------------------------------------------------ signals
def test_double_ctrl_c_exits_130_with_the_resume_hint(cifar_dir, tmp_path):
    """Problem 5: a second Ctrl-C while the run stops is ignored: exit 130, the hint, no traceback."""
    # A subprocess on purpose: real SIGINTs sent to the training process by another one, and the exit
    # status 130 and stderr of that process.
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiercls.train", "--data_path", str(cifar_dir), "--out_folder", str(out),
         "--max-train-samples", "2000", "--val-size", "100", "--batch_size", "50", "--epochs", "3",
         "--no-test", "--device", "cpu", "--num_threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "config.yaml").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None
    for _ in range(3):
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr


# ------------------------------------------------------------------------------------ data
def test_incomplete_class_set_is_refused():
    """Problem 6: a data set without all 100 classes in training and test is refused, naming what is
    missing."""
    labels = torch.arange(100).repeat(2)
    images = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    check_complete(Cifar100(images, labels, images, labels))
    keep = labels != 42
    expected = r"training set in 'x' has 99 of the 100 classes \(missing labels: 42\)"
    with pytest.raises(ValueError, match=expected):
        check_complete(Cifar100(images[keep], labels[keep], images, labels), "x")
    with pytest.raises(ValueError, match=r"test \(val/\) set has 98 of the 100"):
        check_complete(Cifar100(images, labels, images[labels > 1], labels[labels > 1]))


def test_data_folder_with_99_classes_is_refused_by_the_cli(cifar_dir, tmp_path, capsys):
    """Problem 6, as a user meets it: 99 of the 100 class folders (one deleted) -> exit 2, one line."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        for folder in (cifar_dir / split).iterdir():
            if folder.is_dir() and not (split == "train" and folder.name == "42"):
                (data / split).mkdir(parents=True, exist_ok=True)
                (data / split / folder.name).symlink_to(folder)
    proc = run_cli("--data_path", str(data), "--out_folder", str(tmp_path / "o"), *SMALL, "--epochs", "1",
                   capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "99 of the 100 classes" in line and "42" in line
    assert not (tmp_path / "o" / "config.yaml").exists()
