"""CIFAR-100 loading, seeded stratified splits and an on-device augmenting batch loader.

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
import math
import os
import pickle
import tarfile
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "NUM_CLASSES",
    "Cifar100",
    "DeviceLoader",
    "Split",
    "Splits",
    "default_cache_dir",
    "load_cifar100",
    "check_complete",
    "make_splits",
]

#: Per-channel (R, G, B) mean of the official CIFAR-100 training images, as fractions of 255.
CIFAR100_MEAN: tuple[float, float, float] = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
#: Per-channel (R, G, B) pixel standard deviation of the official training images, fractions of 255.
CIFAR100_STD: tuple[float, float, float] = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

NUM_CLASSES = 100
IMAGE_SIZE = 32
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_TORCHVISION_FOLDER = "cifar-100-python"
_TORCHVISION_ARCHIVE = "cifar-100-python.tar.gz"
_CACHE_FORMAT = "hiercls-cifar100-imagefolder-v1"

_LAYOUTS_HELP = (
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


@dataclass(frozen=True, eq=False)
class Split:
    """One split of images with labels.

    Attributes:
        images: uint8 [N, 3, 32, 32].
        labels: int64 [N].
        indices: int64 [N], positions of the images in the source set (official train set for
            train/val splits, official test set for the test split); None when unknown.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test splits; ``val`` is None when ``val_size=0`` (final retraining)."""

    train: Split
    val: Split | None
    test: Split


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
    tv_dir = root / _TORCHVISION_FOLDER
    if not _has_pickles(tv_dir) and (root / _TORCHVISION_ARCHIVE).is_file():
        _extract_archive(root / _TORCHVISION_ARCHIVE, root)
    if _has_pickles(tv_dir):
        return _load_torchvision_layout(root)
    if (root / "train").is_dir():
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return _load_image_folder(root, cache)
    if not download:
        raise FileNotFoundError(f"no CIFAR-100 found in {root} (download=False); {_LAYOUTS_HELP}")
    _download_torchvision(root)
    if not _has_pickles(tv_dir):
        raise RuntimeError(f"torchvision download into {root} did not produce {tv_dir}; {_LAYOUTS_HELP}")
    return _load_torchvision_layout(root)


def _has_pickles(tv_dir: Path) -> bool:
    return all((tv_dir / name).is_file() for name in ("train", "test"))


def _extract_archive(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"cannot extract CIFAR-100 archive {archive}: {exc}") from exc


def _download_torchvision(root: Path) -> None:
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
            f"{type(exc).__name__}: {exc}. Put the data there yourself; {_LAYOUTS_HELP}"
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
            parts[split] = _read_cifar_pickle(root / _TORCHVISION_FOLDER / split)
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
                f"{_LAYOUTS_HELP}"
            )
        label = int(name)
        if label in seen:
            raise ValueError(f"class folders {seen[label]} and {class_entry.path} both mean label {label}")
        seen[label] = class_entry.path
        for file_entry in os.scandir(class_entry.path):
            if file_entry.name.startswith(".") or not file_entry.name.lower().endswith(_IMAGE_EXTENSIONS):
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
            f"{root} has train/ but no val/ folder (the official test set); {_LAYOUTS_HELP}"
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


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def _stratified_pick(labels: Tensor, total: int, generator: torch.Generator) -> Tensor:
    """Sorted positions of a seeded stratified sample of ``total`` items of ``labels``.

    Class quotas are proportional to class frequency (largest-remainder rounding, exact integer
    arithmetic; ties between equal remainders broken by the generator), so balanced classes get
    ``total // C`` or ``total // C + 1`` items each.
    """
    classes, counts = torch.unique(labels, return_counts=True)
    n = int(labels.shape[0])
    numer = [total * int(c) for c in counts]
    quotas = [v // n for v in numer]
    short = total - sum(quotas)
    tie_break = torch.randperm(len(classes), generator=generator).tolist()
    order = sorted(range(len(classes)), key=lambda i: (-(numer[i] % n), tie_break[i]))
    for i in order[:short]:
        quotas[i] += 1
    picked = []
    for cls, quota in zip(classes.tolist(), quotas):
        members = torch.nonzero(labels == cls).squeeze(1)
        perm = torch.randperm(members.shape[0], generator=generator)
        picked.append(members[perm[:quota]])
    return torch.sort(torch.cat(picked)).values


def make_splits(
    data: Cifar100,
    *,
    val_size: int = 5000,
    seed: int = 0,
    max_train_samples: int | None = None,
) -> Splits:
    """Seeded stratified train/validation split of the official train set, plus the official test set.

    The validation split takes ``val_size`` images from the official training set, stratified by
    class: quotas are proportional to class frequency (CIFAR-100 is balanced, so 5,000 gives exactly
    50 per class; a ``val_size`` that is not a multiple of 100 gives ``val_size // 100`` or one more
    per class, the classes getting the extra image chosen by the seed). ``max_train_samples`` then
    takes a stratified subset of the remaining training images in the same way; it never changes the
    validation split. All randomness comes from one ``torch.Generator`` seeded with ``seed``; the same
    inputs always give the same splits. Images inside each split keep their source order.

    Args:
        data: the loaded data set.
        val_size: number of validation images; 0 gives ``val=None`` (train on all 50,000).
        seed: split seed.
        max_train_samples: optional size of a stratified subset of the training split.

    Returns:
        :class:`Splits`; ``Split.indices`` holds positions in the official train (train, val) or
        test (test) set.

    Raises:
        ValueError: ``val_size`` < 0 or >= the number of training images; ``max_train_samples``
            < 1 or larger than the training split.
    """
    n = int(data.train_labels.shape[0])
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n:
        raise ValueError(
            f"val_size must be an integer in [0, {n}) (the training set has {n} images), got {val_size!r}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    all_idx = torch.arange(n)
    if val_size > 0:
        val_idx = _stratified_pick(data.train_labels, val_size, generator)
        keep = torch.ones(n, dtype=torch.bool)
        keep[val_idx] = False
        train_idx = all_idx[keep]
    else:
        val_idx, train_idx = None, all_idx
    if max_train_samples is not None:
        available = int(train_idx.shape[0])
        if isinstance(max_train_samples, bool) or not isinstance(max_train_samples, int) or not (
            1 <= max_train_samples <= available
        ):
            raise ValueError(
                f"max_train_samples must be an integer in [1, {available}] (the training split after "
                f"removing {val_size} validation images), got {max_train_samples!r}"
            )
        if max_train_samples < available:
            sub = _stratified_pick(data.train_labels[train_idx], max_train_samples, generator)
            train_idx = train_idx[sub]

    def take(images: Tensor, labels: Tensor, idx: Tensor) -> Split:
        return Split(images=images[idx], labels=labels[idx], indices=idx)

    n_test = int(data.test_labels.shape[0])
    return Splits(
        train=take(data.train_images, data.train_labels, train_idx),
        val=None if val_idx is None else take(data.train_images, data.train_labels, val_idx),
        test=Split(images=data.test_images, labels=data.test_labels, indices=torch.arange(n_test)),
    )


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that is a pure function of (seed, epoch)."""
    raw = hashlib.sha256(f"hiercls-loader:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(raw[:8], "little") & ((1 << 63) - 1)


class DeviceLoader:
    """Batches of one split kept whole on ``device``, with batched on-device augmentation.

    The split is stored once as uint8 [N, 3, H, W] on ``device`` (CIFAR: 150 MB for 50,000 images).
    :meth:`epoch` yields ``(images, labels)``: images float32 [B, 3, H, W] normalised with
    :data:`CIFAR100_MEAN` / :data:`CIFAR100_STD`, labels int64 [B], both on ``device``. The last
    partial batch is yielded too (unless ``drop_last``), so ``len(loader) = ceil(N / batch_size)``.

    With ``train=True`` every epoch is shuffled and every sample gets a random crop from the image
    zero-padded (black, before normalisation) by ``crop_padding`` pixels on each side, a random
    horizontal flip (``flip``) and, when ``cutout > 0``, Cutout (DeVries & Taylor 2017): a
    ``cutout`` x ``cutout`` square, centred uniformly in the image and clipped at its borders, set
    to zero after normalisation. Crop and flip are one batched gather, Cutout one batched mask;
    there is no per-sample Python loop. All random numbers of epoch ``k`` come from a CPU
    ``torch.Generator`` seeded from ``(seed, k)``, so the order and augmentation of an epoch are a
    pure function of ``(seed, k)`` (and the same on every device): a run resumed at epoch ``k`` sees
    exactly the batches it would have seen (whether the training numbers are then bit-exact depends on
    the device's kernels: see :mod:`hiercls.numerics`).
    With ``train=False`` the order is fixed and there is no augmentation.

    Args:
        split_or_images: a :class:`Split`, or uint8 images [N, 3, H, W] with ``labels``.
        labels: int64 [N] labels when ``split_or_images`` is a tensor; must be None for a Split.
        batch_size: images per batch (>= 1).
        device: where the data lives and batches are produced.
        train: shuffle and augment (True) or fixed order without augmentation (False).
        seed: augmentation / shuffling seed.
        crop_padding: zero padding in pixels for the random crop (0 disables cropping).
        flip: random horizontal flips with probability 1/2.
        cutout: Cutout square side in pixels (0 disables it).
        channels_last: return images in ``torch.channels_last`` memory format.
        drop_last: skip the last partial batch in training epochs (eval loaders never drop).

    Raises:
        TypeError: wrong image / label dtypes, or ``labels`` given together with a Split.
        ValueError: wrong shapes, an empty split, ``batch_size`` < 1, negative padding or cutout.
    """

    def __init__(
        self,
        split_or_images: Split | Tensor,
        labels: Tensor | None = None,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        train: bool,
        seed: int = 0,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
    ) -> None:
        if isinstance(split_or_images, Split):
            if labels is not None:
                raise TypeError("pass labels only with an images tensor, not with a Split")
            images, labels = split_or_images.images, split_or_images.labels
        else:
            images = split_or_images
            if labels is None:
                raise TypeError("labels are required when the first argument is an images tensor")
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N={images.shape[0]}], got {tuple(labels.shape)}")
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        if images.shape[0] == 0:
            raise ValueError("cannot make a loader over an empty split")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {crop_padding}, {cutout}")

        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last) and self.train
        self._mean = torch.tensor(CIFAR100_MEAN, device=self.device).mul(255.0).view(1, 3, 1, 1)
        self._std = torch.tensor(CIFAR100_STD, device=self.device).mul(255.0).view(1, 3, 1, 1)

    @property
    def num_samples(self) -> int:
        """Number of images in the split."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch: ceil(N / batch_size), or floor when ``drop_last``."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Eval loaders only (fixed order); training loaders need :meth:`epoch` with the epoch number."""
        if self.train:
            raise TypeError("iterate a training DeviceLoader with loader.epoch(k) so every epoch differs")
        return self.epoch(0)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of epoch ``epoch`` (>= 0): (float32 [B,3,H,W] normalised, int64 [B]) on ``device``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        n, bs = self.num_samples, self.batch_size
        if not self.train:
            for start in range(0, n, bs):
                x = self._layout(self._normalise(self.images[start : start + bs]))
                yield x, self.labels[start : start + bs]
            return

        _, _, h, w = self.images.shape
        p = self.crop_padding
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        # Fixed draw order, all on the CPU generator: order, crop offsets, flips, cutout centres.
        order = torch.randperm(n, generator=g)
        off_y = torch.randint(0, 2 * p + 1, (n,), generator=g)
        off_x = torch.randint(0, 2 * p + 1, (n,), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool() & self.flip
        cut_y = torch.randint(0, h, (n,), generator=g)
        cut_x = torch.randint(0, w, (n,), generator=g)
        order, off_y, off_x, flips, cut_y, cut_x = (
            t.to(self.device) for t in (order, off_y, off_x, flips, cut_y, cut_x)
        )
        rows_base = torch.arange(h, device=self.device)
        cols_base = torch.arange(w, device=self.device)
        cols_flip = cols_base.flip(0)
        channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)
        end = (n // bs) * bs if self.drop_last else n
        for start in range(0, end, bs):
            sl = slice(start, min(start + bs, end))
            idx = order[sl]
            batch = self.images[idx]  # uint8 [B,3,h,w]
            b = batch.shape[0]
            if p > 0 or self.flip:
                padded = F.pad(batch, (p, p, p, p)) if p > 0 else batch
                rows = off_y[sl, None] + rows_base  # [B,h]
                cols = off_x[sl, None] + torch.where(flips[sl, None], cols_flip, cols_base)  # [B,w]
                batch = padded[
                    torch.arange(b, device=self.device).view(b, 1, 1, 1),
                    channels,
                    rows.view(b, 1, h, 1),
                    cols.view(b, 1, 1, w),
                ]
            x = self._normalise(batch)
            if self.cutout > 0:
                y0 = cut_y[sl, None] - self.cutout // 2
                x0 = cut_x[sl, None] - self.cutout // 2
                in_rows = (rows_base >= y0) & (rows_base < y0 + self.cutout)  # [B,h]
                in_cols = (cols_base >= x0) & (cols_base < x0 + self.cutout)  # [B,w]
                x = x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)
            yield self._layout(x), self.labels[idx]

    def _normalise(self, batch: Tensor) -> Tensor:
        """uint8 [B,3,H,W] -> float32 [B,3,H,W] standardised per channel."""
        return (batch.float() - self._mean) / self._std

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
