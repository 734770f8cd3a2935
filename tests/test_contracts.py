"""The Ray and Optuna internals hiercls relies on (hiercls.tune.contracts), the pins that keep them, and a
torn error.pkl that Ray no longer trips over. Fast: nothing starts Ray."""

from __future__ import annotations

import pickle
import re
from importlib import metadata
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import tomllib
import yaml

from hiercls.tune.contracts import CONTRACTS, ContractError, broken_contracts, check_contracts

ROOT = Path(__file__).resolve().parents[1]


def test_every_contract_holds_on_the_installed_releases():
    assert broken_contracts() == []
    check_contracts()
    assert len({c.name for c in CONTRACTS}) == len(CONTRACTS) >= 10


def _remove_trial_id(monkeypatch):
    import optuna

    original = optuna.trial.FrozenTrial.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._trial_id

    monkeypatch.setattr(optuna.trial.FrozenTrial, "__init__", init)


def _rename_state_file(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    monkeypatch.setattr(TuneController, "CKPT_FILE_TMPL", "run_state-{}.json")


def _remove_checkpoint_names(monkeypatch):
    from ray.train._internal.storage import StorageContext

    monkeypatch.delattr(StorageContext, "_make_checkpoint_dir_name")


def _remove_tuner_pkl(monkeypatch):
    from ray.tune.impl import tuner_internal

    monkeypatch.delattr(tuner_internal, "_TUNER_PKL")


@pytest.mark.parametrize(("remove", "named"), [
    (_remove_trial_id, "optuna FrozenTrial._trial_id"),
    (_rename_state_file, "Ray's state file names"),
    (_remove_checkpoint_names, "checkpoint_NNNNNN folders"),
    (_remove_tuner_pkl, "Ray's state file names"),
])
def test_a_private_attribute_removed_by_an_upgrade_is_named(monkeypatch, remove, named):
    """What an upgrade that drops an internal looks like: the contract names it and what uses it, and a
    search refuses to start with one line."""
    remove(monkeypatch)
    broken = broken_contracts()
    assert len(broken) == 1 and "(used by hiercls." in broken[0], broken
    assert named in broken[0].split(" (used by")[0], broken
    with pytest.raises(ContractError) as info:
        check_contracts()
    assert named in str(info.value) and "install the tested versions" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_search_on_a_release_that_breaks_a_contract_exits_2_before_ray(monkeypatch, tmp_path, capsys):
    import ray

    import tune_main

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called although a contract is broken")

    monkeypatch.setattr(ray, "init", no_ray)
    _rename_state_file(monkeypatch)
    assert tune_main.main(["--smoke-test", "--trainable", "toy", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "breaks what hiercls relies on: Ray's state file names" in err and "Traceback" not in err


def _requirement(requirements: list[str], name: str) -> str:
    return next(r for r in requirements if re.match(rf"{re.escape(name)}(\[|\s|>|<|=|$)", r))


def test_ray_and_optuna_are_pinned_to_the_tested_releases():
    """pyproject.toml and environment.yml bound both from above, and the installed releases (what
    ``pip install -e .`` resolved) lie inside those bounds."""
    from packaging.requirements import Requirement

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"][-1]["pip"]
    for name in ("ray", "optuna"):
        for requirement in (_requirement(declared, name), _requirement(conda, name)):
            spec = Requirement(requirement).specifier
            assert any(s.operator == "<" for s in spec), requirement
            assert metadata.version(name) in spec, (requirement, metadata.version(name))
    installed = metadata.requires("hiercls") or []
    assert any(r.startswith("ray[tune]") and "<" in r for r in installed), installed


def test_a_torn_error_pickle_reads_as_missing(tmp_path):
    """Ray builds a search's results reading each errored trial's error.pkl through the experiment's
    filesystem; a torn one (a full disk or a kill) reads as missing, so Ray takes error.txt instead of
    failing with EOFError."""
    from hiercls.tune.atomicfs import atomic_local_filesystem

    fs = atomic_local_filesystem()
    whole, torn, other = tmp_path / "a" / "error.pkl", tmp_path / "b" / "error.pkl", tmp_path / "c.pkl"
    for path in (whole, torn):
        path.parent.mkdir()
    whole.write_bytes(pickle.dumps(ValueError("boom")))
    torn.write_bytes(pickle.dumps(ValueError("boom"))[:-3])
    other.write_bytes(b"")
    infos = fs.get_file_info([str(whole), str(torn), str(other)])
    assert [i.type for i in infos] == [pafs.FileType.File, pafs.FileType.NotFound, pafs.FileType.File]
