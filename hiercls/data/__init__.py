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

__all__ = [
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
