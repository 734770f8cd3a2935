"""Shared fixtures. Real-data tests fail (never skip) when the shared CIFAR-100 is missing."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIERCLS_SHARED_DIR", ROOT.parent / "shared"))
SHARED_ARCHIVE = SHARED / "data" / "cifar-100-jpg.tar.gz"
DEFAULT_EXTRACT = ROOT / ".data" / "cifar-100"


def _find_real_cifar() -> Path:
    env = os.environ.get("HIERCLS_DATA_DIR")
    if env:
        path = Path(env)
        if not (path / "train").is_dir():
            pytest.fail(f"HIERCLS_DATA_DIR={env} has no train/ folder; run .ci/run to extract the data")
        return path
    if (DEFAULT_EXTRACT / ".complete").exists():
        return DEFAULT_EXTRACT
    if SHARED_ARCHIVE.exists():
        DEFAULT_EXTRACT.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_ARCHIVE) as tar:
            tar.extractall(DEFAULT_EXTRACT.parent, filter="data")
        (DEFAULT_EXTRACT / ".complete").touch()
        return DEFAULT_EXTRACT
    pytest.fail(
        f"real CIFAR-100 not found: set HIERCLS_DATA_DIR or put the shared archive at {SHARED_ARCHIVE} "
        "(.ci/run extracts it)"
    )


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
