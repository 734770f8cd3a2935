"""Where CIFAR-100 is found when no data folder is given, and filling the project's ``.data/`` folder.

Search order of :func:`find_cifar100` (the first place that holds a data set wins):

1. ``$HIERCLS_DATA_DIR``, when set;
2. the project's ``.data/cifar-100`` (``.data`` beside ``pyproject.toml`` in a source checkout or an
   editable install; in an installed package, the current working directory's ``.data``);
3. the shared archive ``../shared/data/cifar-100-jpg.tar.gz`` beside the project (``$HIERCLS_SHARED_DIR``
   replaces ``../shared``), extracted into ``.data/cifar-100`` once: into a temporary folder first,
   checked for 60,000 images, then renamed into place, under a lock, so a killed or concurrent extraction
   never leaves a half-filled ``.data/cifar-100``;
4. torchvision's download of the official archive into ``.data/cifar-100`` (``download=True`` only).

When every place fails, :class:`DataNotFoundError` names each place tried, why it failed, and how to point
at an existing copy. An explicit data folder (``--data-dir``) is used as given (:func:`resolve_data_dir`):
the only one that is filled is the project's own ``.data/cifar-100``, from the shared archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hiercls.data.loading import (
    IMAGE_EXTENSIONS,
    LAYOUTS_HELP,
    TORCHVISION_ARCHIVE,
    TORCHVISION_FOLDER,
    download_torchvision,
    has_pickles,
)
from hiercls.storage import StorageError, describe_os_error

__all__ = [
    "ARCHIVE_NAME",
    "DATA_DIR_ENV",
    "EXPECTED_IMAGES",
    "SHARED_DIR_ENV",
    "DataNotFoundError",
    "Located",
    "extract_archive",
    "find_cifar100",
    "has_dataset",
    "project_data_dir",
    "project_root",
    "resolve_data_dir",
    "shared_archive",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "HIERCLS_DATA_DIR"
SHARED_DIR_ENV = "HIERCLS_SHARED_DIR"
#: The shared copy of CIFAR-100: JPEGs in the ImageFolder layout under a top folder ``cifar-100/``.
ARCHIVE_NAME = "cifar-100-jpg.tar.gz"
#: 50,000 training + 10,000 test images (Krizhevsky 2009).
EXPECTED_IMAGES = 60_000
_POINT_AT = (
    "point at an existing copy with --data-dir DIR (a search: --data-dir or train.data_dir) or "
    f"{DATA_DIR_ENV}=DIR, DIR holding torchvision's cifar-100-python/ or ImageFolder train/ and val/"
)


class DataNotFoundError(FileNotFoundError):
    """No CIFAR-100 in any place searched; the message (one line) names every place and why it failed."""


@dataclass(frozen=True)
class Located:
    """Where :func:`find_cifar100` found the data: ``path`` (absolute) and ``source``, one of
    ``HIERCLS_DATA_DIR``, ``project``, ``shared archive`` (extracted now), ``download`` (downloaded now;
    with ``fetch=False``: still to extract or download)."""

    path: Path
    source: str


def project_root() -> Path:
    """The folder holding ``pyproject.toml`` above the ``hiercls`` package (a source checkout or an
    editable install), else the current working directory (an installed package)."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").is_file() else Path.cwd().resolve()


def project_data_dir() -> Path:
    """``<project>/.data/cifar-100``: where the shared archive is extracted and torchvision downloads."""
    return project_root() / ".data" / "cifar-100"


def shared_archive() -> Path:
    """``$HIERCLS_SHARED_DIR/data/cifar-100-jpg.tar.gz``, else ``<project>/../shared/data/...``."""
    shared = os.environ.get(SHARED_DIR_ENV)
    base = Path(shared).expanduser() if shared else project_root().parent / "shared"
    return base / "data" / ARCHIVE_NAME


def has_dataset(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds one of the layouts :func:`~hiercls.data.load_cifar100` reads without a
    download: ``cifar-100-python/{train,test}``, ``cifar-100-python.tar.gz``, or ``train/`` and ``val/``.
    Only the layout is looked at; loading checks the contents."""
    root = Path(folder)
    return (
        has_pickles(root / TORCHVISION_FOLDER)
        or (root / TORCHVISION_ARCHIVE).is_file()
        or ((root / "train").is_dir() and (root / "val").is_dir())
    )


def find_cifar100(*, download: bool = True, fetch: bool = True) -> Located:
    """Find CIFAR-100 when no data folder is given, in the order of the module docstring.

    Args:
        download: allow the last step, torchvision's download into ``<project>/.data/cifar-100``.
        fetch: extract the shared archive or download when that is where the data is; False: only say so
            (the returned path is ``.data/cifar-100``, still to be filled; ``python -m hiercls.train
            --check``), nothing is extracted, downloaded or written.

    Returns:
        :class:`Located` with the absolute folder to pass to :func:`~hiercls.data.load_cifar100`.

    Raises:
        DataNotFoundError: no place holds the data; one line naming every place tried and the reason.
        ValueError: the shared archive is unreadable or does not hold 60,000 images (nothing is kept).
        StorageError: extracting the shared archive failed with an OS error (e.g. no space left;
            nothing is kept).
    """
    tried: list[str] = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if has_dataset(path):
            return Located(path, DATA_DIR_ENV)
        reason = "holds no CIFAR-100 layout" if path.exists() else "does not exist"
        log.warning("%s=%s %s; looking elsewhere", DATA_DIR_ENV, env, reason)
        tried.append(f"${DATA_DIR_ENV}={env}: {reason}")
    else:
        tried.append(f"${DATA_DIR_ENV}: not set")
    target = project_data_dir()
    if has_dataset(target):
        _check_project_copy(target)
        return Located(target, "project")
    tried.append(f"{target}: {'holds no CIFAR-100 layout' if target.exists() else 'does not exist'}")
    archive = shared_archive()
    if archive.is_file():
        return Located(extract_archive(archive, target) if fetch else target, "shared archive")
    tried.append(f"shared archive {archive}: not found")
    if not download:
        tried.append("torchvision download: not allowed (download: false or --no-download)")
    elif not fetch:
        return Located(target, "download")
    else:
        try:
            download_torchvision(target)
        except RuntimeError as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            tried.append(f"torchvision download into {target}: failed ({type(cause).__name__}: {cause})")
        else:
            if has_dataset(target):
                return Located(target, "download")
            tried.append(f"torchvision download into {target}: produced no cifar-100-python/")
    places = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
    raise DataNotFoundError(f"CIFAR-100 not found; tried {places}. {_POINT_AT}")


def resolve_data_dir(
    data_dir: str | os.PathLike[str] | None, *, download: bool = True, fetch: bool = True
) -> Path:
    """The data folder a run reads: ``data_dir`` as given (absolute), or :func:`find_cifar100` when None.
    ``fetch=False`` extracts and downloads nothing (as :func:`find_cifar100`): the folder is returned as
    it will be once filled.

    An explicit folder is not searched for elsewhere, and one that does not exist is an error; the one
    exception is the project's own ``.data/cifar-100``, which is filled from the shared archive when it
    holds no data set and the archive exists. An existing folder without data is left to
    :func:`~hiercls.data.load_cifar100` (torchvision's download into it when ``download``, else an error
    naming it).

    Raises:
        DataNotFoundError: ``data_dir`` does not exist, or (None) no place holds the data.
        ValueError, StorageError: as :func:`find_cifar100`, also when filling ``.data/cifar-100``.
    """
    if data_dir is None:
        return find_cifar100(download=download, fetch=fetch).path
    if not str(data_dir).strip():
        raise DataNotFoundError(f"data folder {str(data_dir)!r} is empty: {_POINT_AT}, or leave it out to have "
                                "CIFAR-100 found")
    path = Path(data_dir).expanduser().resolve()
    if path == project_data_dir() and not has_dataset(path) and shared_archive().is_file():
        return extract_archive(shared_archive(), path) if fetch else path
    if not path.exists():
        raise DataNotFoundError(
            f"data folder {str(data_dir)!r} does not exist ({LAYOUTS_HELP}); {_POINT_AT}, or create the "
            "folder empty to have torchvision download into it"
        )
    if not path.is_dir():
        raise DataNotFoundError(f"data folder {str(data_dir)!r} is a file, not a folder; {_POINT_AT}")
    return path


def extract_archive(
    archive: str | os.PathLike[str], target: str | os.PathLike[str], *, expected_images: int | None = None
) -> Path:
    """Extract the shared archive (top folder ``cifar-100/``) into ``target``, once.

    The archive is extracted into a temporary folder beside ``target``, its ``.jpg``/``.jpeg``/``.png``
    files under ``train/`` and ``val/`` are counted, and only when there are ``expected_images`` (default
    :data:`EXPECTED_IMAGES`) is the folder renamed to ``target`` (with a ``.complete`` marker). A lock
    file beside ``target`` makes concurrent callers wait for the first; a caller that finds ``target``
    filled returns at once. An empty ``target`` folder is replaced; a non-empty one without a data set
    is never touched.

    Returns:
        ``target`` as an absolute path.

    Raises:
        ValueError: the archive is unreadable, has no ``cifar-100/`` folder, or holds another number of
            images (message names the archive and both counts); nothing is kept.
        DataNotFoundError: ``target`` exists, is not empty and holds no data set (move it away).
        StorageError: an OS error while extracting (no space left, read-only folder); nothing is kept.
    """
    archive, target = Path(archive), Path(target).expanduser().resolve()
    expected = EXPECTED_IMAGES if expected_images is None else expected_images
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.parent / f".{target.name}.lock"):
            if has_dataset(target):
                return target
            if target.exists():
                if not target.is_dir() or any(target.iterdir()):
                    raise DataNotFoundError(
                        f"{target} exists but holds no CIFAR-100 layout, so the shared archive {archive} is "
                        "not extracted over it; move it away (or pass it as --data-dir once it holds data)"
                    )
                target.rmdir()
            for stale in target.parent.glob(f".{target.name}.extracting-*"):  # left by a killed extraction
                shutil.rmtree(stale, ignore_errors=True)
            log.info("extracting %s into %s (once)", archive, target)
            _check_archive(archive)
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
            try:
                try:
                    with tarfile.open(archive) as tar:
                        tar.extractall(scratch, filter="data")
                except (tarfile.TarError, EOFError, zlib.error) as err:
                    raise ValueError(f"cannot extract the CIFAR-100 archive {archive}: {_one_line(err)}; "
                                     f"replace it (nothing was kept), or {_POINT_AT}") from err
                top = scratch / "cifar-100"
                if not top.is_dir():
                    raise ValueError(f"the CIFAR-100 archive {archive} has no top folder cifar-100/")
                found = _count_images(top)
                if found != expected:
                    raise ValueError(
                        f"the CIFAR-100 archive {archive} holds {found} images in train/ and val/, expected "
                        f"{expected}; it was not extracted (replace the archive)"
                    )
                (top / ".complete").touch()
                os.rename(top, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except (ValueError, DataNotFoundError):
        raise
    except OSError as err:
        raise StorageError(
            f"{describe_os_error(err, target, 'extract the CIFAR-100 archive into')} (nothing was kept; "
            f"free space or pass --data-dir)",
            getattr(err, "errno", None),
        ) from err
    return target


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _check_archive(archive: Path) -> None:
    """Read the whole gzip stream, so its CRC is checked: a tar ends before the gzip trailer, and a damaged
    archive could otherwise give a full set of images with a changed one.

    Raises:
        ValueError: the archive is not a readable, intact gzip file (one line naming it and the error).
    """
    try:
        with gzip.open(archive, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"the CIFAR-100 archive {archive} is damaged or unreadable ({_one_line(err)}); replace it (nothing "
            f"was extracted), or {_POINT_AT}"
        ) from err


def _check_project_copy(target: Path) -> None:
    """Refuse an ImageFolder copy in the project's ``.data/cifar-100`` that has no ``.complete`` marker and
    not :data:`EXPECTED_IMAGES` images (e.g. an interrupted ``tar xzf``): it would train and test on part of
    the data set without a word.

    Raises:
        DataNotFoundError: naming the folder, the count and the two ways on.
    """
    if (target / ".complete").is_file() or has_pickles(target / TORCHVISION_FOLDER):
        return
    if (target / TORCHVISION_ARCHIVE).is_file():
        return
    found = _count_images(target)
    if found != EXPECTED_IMAGES:
        raise DataNotFoundError(
            f"{target} holds {found} images in train/ and val/, expected {EXPECTED_IMAGES} (an interrupted "
            "extraction?); move it away to have the shared archive extracted again, or pass it as --data-dir "
            "to use it as it is"
        )


def _count_images(root: Path) -> int:
    return sum(
        1
        for split in ("train", "val")
        for _, _, files in os.walk(root / split)
        for name in files
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created) for the duration of the block."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
