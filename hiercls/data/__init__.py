"""CIFAR-100 for training: finding it, loading it, splitting it, and batching it on the device.

The modules follow the data's way:

* :mod:`hiercls.data.locate`: where the data is when no folder is given (``$HIERCLS_DATA_DIR``, the
  project's ``.data/cifar-100``, the shared archive, torchvision's download);
* :mod:`hiercls.data.loading`: the two on-disk layouts (torchvision's pickles, ImageFolder JPEGs) into
  uint8 tensors, with a decode cache;
* :mod:`hiercls.data.splits`: the seeded stratified train / validation split;
* :mod:`hiercls.data.loader`: :class:`DeviceLoader`, the split kept whole on the training device and
  augmented there in batches.

``python -m hiercls.data locate`` prints the folder a run without ``--data-dir`` would read (extracting
the shared archive or downloading when that is where it is found).
"""

from pathlib import Path

from hiercls.data.loader import DeviceLoader
from hiercls.data.loading import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGE_SIZE,
    NUM_CLASSES,
    Cifar100,
    check_complete,
    default_cache_dir,
    load_cifar100,
)
from hiercls.data.locate import DataNotFoundError, Located, find_cifar100, resolve_data_dir
from hiercls.data.splits import Split, Splits, make_splits


def decode_once(data_dir: str | None, *, download: bool | None) -> tuple[Located, Path]:
    """Find CIFAR-100 (``data_dir`` as given, an error when missing; None: :func:`find_cifar100`) and
    decode it once into the decode cache, which processes on this machine then read (a search's trials).
    ``download``: a config's ``download`` key (None: not set, so finding may download, loading may not).

    Returns:
        Where the data is (its source ``given`` when ``data_dir`` was) and the decode cache folder
        (absolute).

    Raises:
        DataNotFoundError, ValueError: no data (every place tried named), a bad shared archive.
        StorageError: extracting the shared archive failed on an OS error (nothing kept).
        ValueError: the data is not the complete CIFAR-100 or cannot be decoded (its folder named).
    """
    cache = default_cache_dir().expanduser().resolve()
    # as given: an error when missing (the project's .data/cifar-100 is filled when it can be)
    found = (find_cifar100(download=download is not False) if data_dir is None
             else Located(resolve_data_dir(data_dir), "given"))
    try:
        check_complete(load_cifar100(found.path, download=bool(download), cache_dir=cache), found.path)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"CIFAR-100 could not be loaded from {str(found.path)!r}: {err}") from err
    return found, cache

__all__ = [
    "decode_once",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "Cifar100",
    "DataNotFoundError",
    "DeviceLoader",
    "Located",
    "Split",
    "Splits",
    "check_complete",
    "default_cache_dir",
    "find_cifar100",
    "load_cifar100",
    "make_splits",
    "resolve_data_dir",
]
