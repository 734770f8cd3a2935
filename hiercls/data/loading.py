"""Loading CIFAR-100 from disk into uint8 tensors.

Two on-disk layouts are accepted, detected from ``data_dir``:

* **torchvision**: ``data_dir/cifar-100-python/{train,test,meta}`` (the official python pickle
  archive), read through :class:`torchvision.datasets.CIFAR100`. When neither this folder nor the
  ImageFolder layout is present it is downloaded through torchvision (``download=True``). A
  ``data_dir/cifar-100-python.tar.gz`` already on disk is extracted locally, without network.
  torchvision verifies the md5 of the official files; files in the same pickle format that fail
  that check (re-packed or hand-made archives, e.g. in tests) are read by this module directly with
  ``pickle.load(..., encoding="bytes")``.
* **ImageFolder**: ``data_dir/train/<fine_id>/*.{jpg,jpeg,png}`` and ``data_dir/val/<fine_id>/*``
  (``val`` holds the official test set). Class folders are named by their integer fine label and
  map by that integer (folder ``10`` is label 10, ``bowl``), never by string sort order.

Decoded ImageFolder images are cached as uint8 tensors in ``cache_dir`` (default
``$HIERCLS_CACHE_DIR`` or ``~/.cache/hiercls``), keyed by a hash of the file list (relative paths,
sizes, modification times), so only the first run decodes the 60,000 JPEGs. The pickle layout is
already a uint8 array and is not cached.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "NUM_CLASSES",
    "Cifar100",
    "default_cache_dir",
    "load_cifar100",
    "check_complete",
    "IMAGE_EXTENSIONS", "LAYOUTS_HELP", "TORCHVISION_ARCHIVE", "TORCHVISION_FOLDER", "download_torchvision",
    "has_pickles",
]

#: Per-channel (R, G, B) mean of the official CIFAR-100 training images, as fractions of 255.
CIFAR100_MEAN: tuple[float, float, float] = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
#: Per-channel (R, G, B) pixel standard deviation of the official training images, fractions of 255.
CIFAR100_STD: tuple[float, float, float] = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

NUM_CLASSES = 100
IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TORCHVISION_FOLDER = "cifar-100-python"
TORCHVISION_ARCHIVE = "cifar-100-python.tar.gz"
_CACHE_FORMAT = "hiercls-cifar100-imagefolder-v1"

LAYOUTS_HELP = (
    "accepted layouts: (a) torchvision's 'cifar-100-python/' folder (train, test, meta pickles) inside "
    "data_dir, downloaded by torchvision when absent; (b) ImageFolder: data_dir/train/<fine_id>/*.jpg|png "
    "and data_dir/val/<fine_id>/*.jpg|png (val = official test set), folders named by integer label 0..99"
)


# --------------------------------------------------------------------------------------------------
# Dataset containers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Cifar100:
    """The full official CIFAR-100 in memory.

    Attributes:
        train_images: uint8 [50000, 3, 32, 32] (RGB, 0..255) for the real data set.
        train_labels: int64 [50000], fine labels 0..99.
        test_images: uint8 [10000, 3, 32, 32], the official test set.
        test_labels: int64 [10000].
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$HIERCLS_CACHE_DIR`` when set, else ``~/.cache/hiercls``."""
    env = os.environ.get("HIERCLS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hiercls"


def load_cifar100(
    data_dir: str | os.PathLike[str],
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Cifar100:
    """Load CIFAR-100 from ``data_dir`` in either accepted layout (see the module docstring).

    Layout detection order: ``cifar-100-python/`` folder, then a local ``cifar-100-python.tar.gz``
    (extracted in place), then ``train/`` + ``val/`` ImageFolder, then (``download=True``) a
    torchvision download into ``data_dir``.

    Args:
        data_dir: folder holding the data set.
        download: allow torchvision to download the data set when no layout is found.
        cache_dir: where decoded ImageFolder images are cached; default :func:`default_cache_dir`.
            A cache folder that cannot be written only gives a warning.

    Returns:
        :class:`Cifar100` with uint8 [N, 3, 32, 32] images and int64 [N] labels; ImageFolder
        images are ordered by (label, relative path).

    Raises:
        FileNotFoundError: ``data_dir`` holds no data set and ``download`` is False, or the
            ImageFolder layout lacks its ``val/`` folder; the message names the path and both layouts.
        RuntimeError: the download was needed and failed (e.g. no network); names both layouts.
        ValueError: a class folder is not an integer in 0..99, an image cannot be decoded or is not
            32x32, or a pickle file is malformed; the message names the folder or file.
    """
    root = Path(data_dir).expanduser()
    tv_dir = root / TORCHVISION_FOLDER
    if not has_pickles(tv_dir) and (root / TORCHVISION_ARCHIVE).is_file():
        _extract_archive(root / TORCHVISION_ARCHIVE, root)
    if has_pickles(tv_dir):
        return _load_torchvision_layout(root)
    if (root / "train").is_dir():
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return _load_image_folder(root, cache)
    if not download:
        raise FileNotFoundError(f"no CIFAR-100 found in {root} (download=False); {LAYOUTS_HELP}")
    download_torchvision(root)
    if not has_pickles(tv_dir):
        raise RuntimeError(f"torchvision download into {root} did not produce {tv_dir}; {LAYOUTS_HELP}")
    return _load_torchvision_layout(root)


def has_pickles(tv_dir: Path) -> bool:
    """Whether ``tv_dir`` holds torchvision's CIFAR-100 pickles (``train`` and ``test``)."""
    return all((tv_dir / name).is_file() for name in ("train", "test"))


def _extract_archive(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"cannot extract CIFAR-100 archive {archive}: {exc}") from exc


def download_torchvision(root: Path) -> None:
    """torchvision's download of CIFAR-100 into ``root`` (its archive and pickles)."""
    import torchvision

    created = [p for p in (root, *root.parents) if not p.exists()]  # folders the download would create
    try:
        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    except Exception as exc:  # urllib errors, md5 mismatch, disk errors: all mean "no data"
        for folder in created:  # innermost first: leave no empty (possibly mistyped) folders behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise RuntimeError(
            f"CIFAR-100 not found in {root} and the torchvision download failed (no network?): "
            f"{type(exc).__name__}: {exc}. Put the data there yourself; {LAYOUTS_HELP}"
        ) from exc


def _load_torchvision_layout(root: Path) -> Cifar100:
    """Read ``root/cifar-100-python`` through torchvision, or directly when its md5 check rejects it."""
    import torchvision

    parts: dict[str, tuple[Tensor, Tensor]] = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = torchvision.datasets.CIFAR100(str(root), train=train, download=False)
        except RuntimeError:
            # torchvision only accepts the official files (md5 check); same format, read it ourselves.
            parts[split] = _read_cifar_pickle(root / TORCHVISION_FOLDER / split)
            continue
        data = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        parts[split] = data, torch.as_tensor(ds.targets, dtype=torch.int64)
    return Cifar100(*parts["train"], *parts["test"])


def _read_cifar_pickle(path: Path) -> tuple[Tensor, Tensor]:
    """Images uint8 [N,3,32,32] and fine labels int64 [N] from one official-format pickle file."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        # The official (Python 2) pickles give bytes keys under encoding="bytes"; accept str keys too.
        data = np.asarray(entry[b"data"] if b"data" in entry else entry["data"], dtype=np.uint8)
        fine = entry[b"fine_labels"] if b"fine_labels" in entry else entry["fine_labels"]
        labels = np.asarray(fine, dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read CIFAR-100 pickle {path}: {type(exc).__name__}: {exc}") from exc
    n = labels.shape[0]
    if data.ndim != 2 or data.shape != (n, 3 * IMAGE_SIZE * IMAGE_SIZE):
        raise ValueError(f"CIFAR-100 pickle {path}: data has shape {data.shape}, expected ({n}, 3072)")
    if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"CIFAR-100 pickle {path}: fine labels outside 0..{NUM_CLASSES - 1}")
    images = torch.from_numpy(data.reshape(n, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels.copy())


def check_complete(data: Cifar100, source: str | os.PathLike[str] | None = None) -> None:
    """Refuse data that is not the complete CIFAR-100: every one of the 100 fine labels must appear in
    the training set and in the test set (a missing class folder would otherwise train a 99-class
    problem that still writes results).

    Raises:
        ValueError: naming the split, how many classes it has and the missing labels (first ten).
    """
    where = f" in {str(source)!r}" if source is not None else ""
    for split, labels in (("training", data.train_labels), ("test (val/)", data.test_labels)):
        present = set(torch.unique(labels).tolist())
        missing = [c for c in range(NUM_CLASSES) if c not in present]
        if missing:
            shown = ", ".join(str(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(
                f"the CIFAR-100 {split} set{where} has {NUM_CLASSES - len(missing)} of the {NUM_CLASSES} "
                f"classes (missing labels: {shown}); expected all {NUM_CLASSES} class folders 0..99"
            )


# ---- ImageFolder layout ---------------------------------------------------------------------------


def _list_image_folder(split_dir: Path) -> list[tuple[int, str, int, int]]:
    """(label, path relative to split_dir, size, mtime_ns) of every image, sorted by (label, path)."""
    entries: list[tuple[int, str, int, int]] = []
    seen: dict[int, str] = {}
    for class_entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if class_entry.name.startswith(".") or not class_entry.is_dir():
            continue
        name = class_entry.name
        if not (name.isascii() and name.isdigit()) or not 0 <= int(name) < NUM_CLASSES:
            raise ValueError(
                f"class folder {class_entry.path} is not an integer fine label in 0..{NUM_CLASSES - 1}; "
                f"{LAYOUTS_HELP}"
            )
        label = int(name)
        if label in seen:
            raise ValueError(f"class folders {seen[label]} and {class_entry.path} both mean label {label}")
        seen[label] = class_entry.path
        for file_entry in os.scandir(class_entry.path):
            if file_entry.name.startswith(".") or not file_entry.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            st = file_entry.stat()
            entries.append((label, f"{name}/{file_entry.name}", st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: (e[0], e[1]))
    return entries


def _decode_image_bytes(blob: bytes) -> Tensor:
    """Decode one encoded image (any format PIL reads) to uint8 [3, H, W] RGB."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode_jpeg_batch(blobs: Sequence[bytes]) -> list[Tensor] | None:
    """Batched libjpeg decode via torchvision.io (uint8 [3, H, W] each); None if unavailable or failing."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # torchvision.io image ops are deprecated (0.29) and may disappear
        return None
    try:
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB))
    except Exception:  # a corrupt file: decode one by one to name it
        return None


def _decode_chunk(paths: Sequence[str], out: Tensor) -> None:
    """Decode ``paths`` into ``out`` (uint8 [len(paths), 3, 32, 32]); errors name the file.

    JPEGs are decoded in one batched ``torchvision.io.decode_jpeg`` call per chunk (about 3.5 s for
    CIFAR's 60,000 files on one core, twice as fast as PIL); other formats, and a chunk whose batched
    decode fails, are decoded file by file with PIL.
    """
    blobs = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except OSError as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    images: list[Tensor | None] = [None] * len(paths)
    jpeg = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    decoded = _decode_jpeg_batch([blobs[i] for i in jpeg]) if jpeg else None
    if decoded is not None:
        for i, img in zip(jpeg, decoded):
            images[i] = img
    for i, path in enumerate(paths):
        img = images[i]
        if img is None:
            try:
                img = _decode_image_bytes(blobs[i])
            except Exception as exc:
                raise ValueError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc
        if tuple(img.shape) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"image {path} has shape {tuple(img.shape)}, expected (3, 32, 32)")
        out[i] = img


def _decode_files(paths: Sequence[str]) -> Tensor:
    """Decode ``paths`` into uint8 [N, 3, 32, 32] (chunks on a small thread pool); errors name the file."""
    out = torch.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    chunk = 2048
    workers = max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        starts = range(0, len(paths), chunk)
        futures = [pool.submit(_decode_chunk, paths[s : s + chunk], out[s : s + chunk]) for s in starts]
        for future in futures:
            future.result()  # re-raises the first error
    return out


def _load_image_folder(root: Path, cache_dir: Path) -> Cifar100:
    train_dir, test_dir = root / "train", root / "val"
    if not test_dir.is_dir():
        raise FileNotFoundError(
            f"{root} has train/ but no val/ folder (the official test set); {LAYOUTS_HELP}"
        )
    listings = {"train": _list_image_folder(train_dir), "test": _list_image_folder(test_dir)}
    for split, entries in listings.items():
        if not entries:
            raise ValueError(f"no .jpg/.png images in {root / ('train' if split == 'train' else 'val')}")

    digest = hashlib.sha256(_CACHE_FORMAT.encode())
    for split, entries in listings.items():
        for label, rel, size, mtime in entries:
            digest.update(f"{split}\0{rel}\0{label}\0{size}\0{mtime}\n".encode())
    cache_file = cache_dir / f"cifar100-imagefolder-{digest.hexdigest()[:24]}.pt"

    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    tensors = {}
    for split, split_dir in (("train", train_dir), ("test", test_dir)):
        entries = listings[split]
        tensors[f"{split}_images"] = _decode_files([str(split_dir / rel) for _, rel, _, _ in entries])
        tensors[f"{split}_labels"] = torch.tensor([e[0] for e in entries], dtype=torch.int64)
    _write_cache(cache_file, tensors)
    return Cifar100(**tensors)


def _read_cache(cache_file: Path) -> Cifar100 | None:
    if not cache_file.is_file():
        return None
    try:
        tensors = torch.load(cache_file, map_location="cpu", weights_only=True)
        names = ("train_images", "train_labels", "test_images", "test_labels")
        return Cifar100(**{k: tensors[k] for k in names})
    except Exception as exc:  # a damaged cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable CIFAR-100 cache {cache_file}: {exc}", stacklevel=3)
        return None


def _write_cache(cache_file: Path, tensors: dict[str, Tensor]) -> None:
    """Atomic write: a temporary file in the same folder, then os.replace."""
    tmp_name = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(tensors, f)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, cache_file)
        tmp_name = None
    except OSError as exc:
        warnings.warn(f"could not write CIFAR-100 cache {cache_file}: {exc}", stacklevel=3)
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
