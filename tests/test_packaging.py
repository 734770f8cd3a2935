"""The package as a user installs it: the shipped search spaces by name from any folder, and the console
scripts beside ``python tune_main.py`` and ``python -m ...``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hiercls.tune.spec import SearchSpec, SpecError, resolve_space, shipped_spaces

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("hiercls-train", "hiercls-tune", "hiercls-rank", "hiercls-export", "hiercls-compare",
           "hiercls-evaluate", "hiercls-transfer")


def test_a_shipped_space_resolves_by_name_and_an_existing_path_wins(tmp_path, monkeypatch):
    names = shipped_spaces()
    assert {"default", "smoke", "hxe", "joint"} <= set(names)
    assert names == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert resolve_space("smoke") == resolve_space("smoke.yaml")
    assert resolve_space("smoke").read_text() == (ROOT / "search_spaces" / "smoke.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    assert SearchSpec.load("smoke").num_samples == 8
    (tmp_path / "smoke").write_text("num_samples: 3\nepochs: 2\ngrace_period: 1\n")
    assert resolve_space("smoke") == Path("smoke") and SearchSpec.load("smoke").num_samples == 3
    with pytest.raises(SpecError,
                       match=r"'nosuch' does not exist \(and is not a shipped space: constrained, default, "
                             r"devise, "):
        resolve_space("nosuch")
    with pytest.raises(SpecError, match="'sub/smoke' does not exist"):
        resolve_space("sub/smoke")  # a path with folders is only ever a path


@pytest.mark.slow
def test_an_installed_copy_ships_the_spaces_and_the_console_scripts(tmp_path):
    """``pip install`` (a real wheel build, into a target folder; dependencies from this environment):
    from another folder, ``--space smoke`` and the ``speedrun`` recipe resolve from the installed package
    and every console script runs."""
    # Subprocesses on purpose: pip installing a built wheel, a fresh interpreter importing the installed copy
    # from another folder, and the installed console scripts with their exit status and stderr.
    source = tmp_path / "source"  # the package is built from a copy (a build writes build/ into it)
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "hiercls", "analysis", "search_spaces", "recipes"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                              if (ROOT / name).is_dir() else {}))
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert sorted(p.name for p in (target / "hiercls" / "search_spaces").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", "import hiercls.tune.spec as s; print(s.resolve_space('smoke')); "
                               "print(s.SearchSpec.load('smoke').name)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == [str(target / "hiercls" / "search_spaces" / "smoke.yaml"), "smoke"]
    recipe = subprocess.run(  # the shipped training recipe by name, from the installed package
        [sys.executable, "-c", "import hiercls.config as c; print(c.resolve_config_file('speedrun')); "
                               "print(c.load_config('speedrun').architecture)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert recipe.returncode == 0, recipe.stderr[-2000:]
    assert recipe.stdout.split() == [str(target / "hiercls" / "recipes" / "speedrun.yaml"), "speednet"]
    for script in SCRIPTS:
        run = subprocess.run([str(target / "bin" / script), "--help"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, (script, run.stderr[-2000:])
    bad = subprocess.run([str(target / "bin" / "hiercls-tune"), "--space", "nosuch", "--trainable", "toy"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a shipped space: constrained, default, devise, hxe" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_package_folder_is_listed_for_setuptools():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("hiercls", "analysis")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found | {"hiercls.search_spaces", "hiercls.recipes"} == listed
