"""Shared fixtures. Real-data tests fail (never skip) when the shared CIFAR-100 is missing."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hiercls.experiment.manifest import KEY_ENV

# Every test, and every subprocess a test starts (test modules copy os.environ when imported, after this),
# signs experiments with a key of its own, never the user's (hiercls.experiment.manifest).
os.environ[KEY_ENV] = os.path.join(tempfile.mkdtemp(prefix="hiercls-test-key-"), "experiment.key")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIERCLS_SHARED_DIR", ROOT.parent / "shared"))


def _find_real_cifar() -> Path:
    """The real CIFAR-100 as a run without ``--data-dir`` finds it (``$HIERCLS_DATA_DIR``, the project's
    ``.data/cifar-100``, the shared archive extracted once); never downloaded; fails (never skips)."""
    from hiercls.data import DataNotFoundError, find_cifar100

    try:
        return find_cifar100(download=False).path
    except (DataNotFoundError, ValueError, OSError) as err:
        pytest.fail(f"real CIFAR-100 not found (.ci/run extracts the shared archive): {err}")


REAL_DATA_FIXTURES = {"cifar_dir", "cifar", "tiny_run", "smoke_search"}


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """Every test that reads the real data (through one of :data:`REAL_DATA_FIXTURES`, directly or through
    another fixture) is marked ``realdata``, so the fast lane (``-m "not slow and not realdata"``) never
    reads it."""
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """../shared/reference: the CIFAR-100 class table and hierarchies the built-ins were encoded from."""
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.fail(f"{path} not found: the tests need ../shared beside the checkout (or HIERCLS_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The extracted shared CIFAR-100 (ImageFolder layout: train/<id>/*.jpg, val/<id>/*.jpg)."""
    return _find_real_cifar()


@pytest.fixture(scope="session", autouse=True)
def _repo_cache() -> None:
    """Keep the decode cache of test sessions in the ignored .data/cache folder, not in the home folder."""
    os.environ.setdefault("HIERCLS_CACHE_DIR", str(ROOT / ".data" / "cache"))


@pytest.fixture(scope="session")
def cifar(cifar_dir: Path):
    """The real CIFAR-100 decoded once per test session (uint8 tensors)."""
    from hiercls.data import load_cifar100

    return load_cifar100(cifar_dir, download=False)


@pytest.fixture
def tiny_run(cifar_dir: Path, tmp_path: Path):
    """A factory of small real-data TrainConfigs: 200 training and 100 val images, no test pass."""
    from hiercls.config import TrainConfig

    def make(**changes):
        values = dict(
            data_dir=str(cifar_dir), max_train_samples=200, val_size=100, epochs=1, batch_size=50,
            eval_batch_size=100, evaluate_test=False, out_folder=str(tmp_path / "run"), device="cpu",
        )
        values.update(changes)
        return TrainConfig.from_dict(values)

    return make


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs, no dashboard) shared by the search and analysis tests."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def smoke_search(ray_session, cifar_dir, tmp_path_factory):
    """``tune_main.py --smoke-test --data-dir ... --name smoke --storage-path ...`` on the real data, run once
    per session and shared by the search tests (tests/test_tune.py) and the analysis tests."""
    import tune_main
    from hiercls.tune.runner import run_search

    storage = tmp_path_factory.mktemp("tune")
    args = tune_main.build_parser().parse_args(
        ["--smoke-test", "--data-dir", str(cifar_dir), "--name", "smoke", "--storage-path", str(storage)]
    )
    spec = tune_main.spec_from_args(args)
    lines: list[str] = []
    started = time.perf_counter()
    outcome = run_search(spec, echo=lines.append)
    return {"outcome": outcome, "spec": spec, "lines": lines, "seconds": time.perf_counter() - started,
            "storage": storage}


class Tmpfs:
    """Small tmpfs mounts for fault tests (a full or read-only disk); root only. Whatever is still
    mounted when the test ends is unmounted."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, path: Path, size: str, *options: str) -> bool:
        """Mount a tmpfs of ``size`` (e.g. ``"60m"``) with extra mount ``options`` (e.g. ``"ro"``) at
        ``path`` (created); False when mounting is not allowed here."""
        path.mkdir(parents=True, exist_ok=True)
        opts = ",".join((f"size={size}", *options))
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if done.returncode == 0:
            self.mounted.append(path)
        return done.returncode == 0

    def umount(self, path: Path) -> None:
        """Unmount ``path`` (lazily, so open files do not block it)."""
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
        if path in self.mounted:
            self.mounted.remove(path)


@pytest.fixture
def tmpfs():
    """A :class:`Tmpfs` whose mounts are undone after the test."""
    mounts = Tmpfs()
    yield mounts
    for path in reversed(list(mounts.mounted)):
        mounts.umount(path)
