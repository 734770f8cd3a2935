"""A plain run's folder copied or moved elsewhere and resumed there (issue 22): ``--resume --out_folder
COPY``, ``--config COPY/config.yaml --resume`` (a run's recorded config.yaml names the folder it was
written in; the folder holding it is the run), a moved folder; the original is never touched. And what
``--resume`` says of a ``last.pth`` that is not a checkpoint at all (random bytes, text: corrupt) apart
from one that holds a pickle payload (could run code: refused, never executed).

The runs go through ``python -m hiercls.train``'s ``main`` in this process (tests/inprocess.py) on a small
synthetic CIFAR-100 held in memory (random images, every class in both sets: 100 training and 100
validation images, two steps of 50 per epoch), handed to the engine in place of the data folder, so they
need no data; bit-exact comparisons hold on the CPU."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from inprocess import run_main, synthetic_cifar, without_timing

from hiercls import engine

FLAGS = ["--val-size", "100", "--batch_size", "50", "--epochs", "2", "--no-test", "--device", "cpu",
         "--num_threads", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic data in place of every data folder, an uninterrupted 2-epoch run (its records) and
    a run interrupted during epoch 2 (its folder: last.pth of epoch 1), both through the CLI."""
    root = tmp_path_factory.mktemp("runs")
    data_dir = root / "data"
    data_dir.mkdir()
    data = synthetic_cifar()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_data_dir", lambda config, fetch=True: str(config.data_dir or data_dir))
        patch.setattr(engine, "_load_data", lambda _config: data)
        whole = run_main(["--data-dir", data_dir, "--out_folder", root / "whole", *FLAGS])
        assert whole.returncode == 0, whole.stderr
        original = engine.Run.train_epoch

        def interrupted(run, epoch, progress):
            if epoch == 1:
                raise KeyboardInterrupt
            return original(run, epoch, progress)

        patch.setattr(engine.Run, "train_epoch", interrupted)
        stopped = run_main(["--data-dir", data_dir, "--out_folder", root / "stopped", *FLAGS])
        assert stopped.returncode == 130, stopped.stderr
    assert len(json.loads((root / "stopped" / "all_epoch_results.json").read_text())) == 1
    whole_records = json.loads((root / "whole" / "all_epoch_results.json").read_text())
    return {"data": data, "data_dir": data_dir, "whole": whole_records, "stopped": root / "stopped"}


@pytest.fixture
def cli(world, monkeypatch):
    """``python -m hiercls.train ARGS`` in this process on the synthetic data."""
    monkeypatch.setattr(engine, "_data_dir", lambda config, fetch=True: str(config.data_dir))
    monkeypatch.setattr(engine, "_load_data", lambda _config: world["data"])

    def run(*args, capsys=None):
        return run_main([str(a) for a in args], "hiercls.train", capsys)

    return run


def snapshot(folder: Path) -> dict[str, str]:
    """The sha256 of every file under ``folder`` by its relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupted_run(world, target: Path) -> Path:
    """The interrupted run at ``target``, as if it had run there: a copy of the module's run whose
    config.yaml names ``target`` (the module's own run stays as it is)."""
    shutil.copytree(world["stopped"], target)
    values = yaml.safe_load((target / "config.yaml").read_text())
    values["out_folder"] = str(target)
    (target / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return target


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_continued(world, folder: Path) -> None:
    """``folder`` holds the finished run, equal to the uninterrupted one, its config.yaml naming it."""
    history = json.loads((folder / "all_epoch_results.json").read_text())
    assert without_timing(history) == without_timing(world["whole"])
    assert yaml.safe_load((folder / "config.yaml").read_text())["out_folder"] == str(folder)
    last = engine.load_checkpoint(folder / "checkpoints" / "last.pth")
    assert last["epoch"] == 2 and last["config"]["out_folder"] == str(folder)
    assert (folder / "final_model.pth").is_file()


# ------------------------------------------------------------------------------------ copy, move
def test_a_copy_resumes_with_out_folder_and_the_original_is_untouched(world, cli, tmp_path, capsys):
    """``cp -r a b; --out_folder b --resume`` with the run's own flags continues b (today: refused with
    'config differs in out_folder'); a is byte-identical afterwards."""
    original = interrupted_run(world, tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    before = snapshot(original)
    proc = cli("--data-dir", world["data_dir"], "--out_folder", copy, *FLAGS, "--resume", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed {copy} at epoch 1/2" in proc.stdout
    assert_continued(world, copy)
    assert snapshot(original) == before


def test_a_copy_resumes_through_its_recorded_config_yaml(world, cli, tmp_path, capsys):
    """``--config b/config.yaml --resume``: that file names a as its out_folder, yet the run is the
    folder holding it, b (today: a is resumed and b left as it was); a is byte-identical afterwards.
    ``--check`` says so before any work."""
    original = interrupted_run(world, tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    assert yaml.safe_load((copy / "config.yaml").read_text())["out_folder"] == str(original)
    before = snapshot(original)
    proc = cli("--config", copy / "config.yaml", "--resume", "--check", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["out_folder"] == str(copy)
    assert f"this would resume in {copy}," in proc.stderr
    assert f"is the recorded config of the run in {copy}: the run is there, not in {original}" in proc.stderr
    proc = cli("--config", copy / "config.yaml", "--resume", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed {copy} at epoch 1/2" in proc.stdout
    assert_continued(world, copy)
    assert snapshot(original) == before
    # an --out_folder given still wins: the recorded config.yaml reruns elsewhere, as documented
    other = tmp_path / "c"
    proc = cli("--config", copy / "config.yaml", "--out_folder", other, "--check", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["out_folder"] == str(other)
    assert f"this would run in {other}," in proc.stderr
    assert snapshot(original) == before


@pytest.mark.parametrize("how", ["out_folder", "config"])
def test_a_moved_run_resumes_where_it_now_is(world, cli, tmp_path, capsys, how):
    """``mv a b``, then ``--out_folder b --resume`` or ``--config b/config.yaml --resume``: b continues
    and a is not created again (today: refused, or a new run started in a)."""
    old, new = tmp_path / "a", tmp_path / "moved" / "b"
    interrupted_run(world, old)
    new.parent.mkdir()
    shutil.move(old, new)
    args = (["--data-dir", world["data_dir"], "--out_folder", new, *FLAGS] if how == "out_folder"
            else ["--config", new / "config.yaml"])
    proc = cli(*args, "--resume", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert_continued(world, new)
    assert not old.exists()


def test_a_config_yaml_outside_a_run_folder_keeps_its_out_folder(world, cli, tmp_path, capsys):
    """A config.yaml copied out of its run folder (nothing beside it: no checkpoints/, no
    all_epoch_results.json) is a plain config: its out_folder is where the run goes."""
    loose = tmp_path / "configs" / "config.yaml"
    loose.parent.mkdir()
    values = yaml.safe_load((world["stopped"] / "config.yaml").read_text())
    values["out_folder"] = str(tmp_path / "target")
    loose.write_text(yaml.safe_dump(values))
    proc = cli("--config", loose, "--check", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["out_folder"] == str(tmp_path / "target")


def test_the_rule_for_a_recorded_config_yaml(tmp_path):
    """A config file is a run's recorded one when it is named config.yaml and sits beside checkpoints/
    (made before the first epoch) or all_epoch_results.json; nothing else is."""
    from hiercls.config import recorded_run_folder

    started, ended, loose = tmp_path / "started", tmp_path / "ended", tmp_path / "loose"
    (started / "checkpoints").mkdir(parents=True)
    ended.mkdir()
    (ended / "all_epoch_results.json").write_text("[]")
    loose.mkdir()
    for folder in (started, ended, loose):
        (folder / "config.yaml").write_text("epochs: 2\n")
        (folder / "best.yaml").write_text("epochs: 2\n")
    assert recorded_run_folder(started / "config.yaml") == started
    assert recorded_run_folder(ended / "config.yaml") == ended
    assert recorded_run_folder(loose / "config.yaml") is None
    assert recorded_run_folder(started / "best.yaml") is None
    assert recorded_run_folder(ended / "best.yaml") is None


# ------------------------------------------------------------------------------------ garbage last.pth
@pytest.mark.parametrize("content", [random.Random(0).randbytes(4096), b"config: no checkpoint\nepoch: 1\n",
                                     b'{"model": {}, "epoch": 1}\n'], ids=["random-bytes", "text", "json"])
def test_a_last_pth_that_is_not_a_checkpoint_is_called_corrupt(world, cli, tmp_path, capsys, content):
    """A last.pth of random bytes or text is corrupt (one line naming it and the ways on), not a file
    that 'could run code' (today's words for random bytes and JSON); nothing is written."""
    run = interrupted_run(world, tmp_path / "run")
    last = run / "checkpoints" / "last.pth"
    last.write_bytes(content)
    before = snapshot(run)
    proc = cli("--config", run / "config.yaml", "--resume", capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(last) in line and "corrupt" in line and "not a torch checkpoint" in line
    assert "run code" not in line
    assert "--overwrite" in line and "--resume-from-best" in line
    assert snapshot(run) == before


class _Payload:
    """Unpickling this runs ``touch MARKER`` (harmless); it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("raw", [True, False], ids=["plain-pickle", "torch-save"])
def test_a_last_pth_holding_a_pickle_payload_could_run_code(world, cli, tmp_path, capsys, raw):
    """A last.pth that really holds Python objects (a pickle whose __reduce__ calls os.system) keeps the
    'could run code' refusal, names what it would import, and is never executed."""
    run = interrupted_run(world, tmp_path / "run")
    last = run / "checkpoints" / "last.pth"
    marker = tmp_path / "PWNED"
    payload = {"format": "hiercls-checkpoint", "version": 2, "model": _Payload(marker)}
    if raw:
        last.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, last)
    before = snapshot(run)
    proc = cli("--config", run / "config.yaml", "--resume", capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(last) in line and "could run code" in line and "corrupt" not in line
    assert "system" in line  # what it would call: posix.system (os.system)
    assert not marker.exists()
    assert snapshot(run) == before
