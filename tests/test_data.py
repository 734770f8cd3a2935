"""Tests of hiercls.data: both on-disk layouts, the decode cache, splits and the device loader."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

import hiercls.data.loading as data_mod
from hiercls.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    Cifar100,
    DeviceLoader,
    Split,
    load_cifar100,
    make_splits,
)

MEAN255 = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1) * 255
STD255 = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1) * 255


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """Invert the loader's normalisation back to uint8 pixel values."""
    return (x * STD255 + MEAN255).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------
# helpers that write tiny data sets
# --------------------------------------------------------------------------------------------------

COLOURS = {2: (255, 0, 0), 10: (0, 255, 0), 11: (0, 0, 255)}


def write_image_folder(root: Path, per_class: int = 3, classes: dict[int, tuple] = COLOURS) -> Path:
    """ImageFolder tree train/<id>/*.png, val/<id>/*.png of solid colours (brightness varies per file)."""
    for split in ("train", "val"):
        for label, colour in classes.items():
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixel = tuple(max(0, c - 10 * i) for c in colour)
                Image.new("RGB", (32, 32), pixel).save(folder / f"{label}_{i}.png")
    return root


def write_torchvision_cifar100(
    root: Path,
    per_class_train: int = 2,
    per_class_test: int = 1,
    seed: int = 0,
    *,
    archive: bool = False,
    str_keys: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a tiny CIFAR-100 in torchvision's ``cifar-100-python/{train,test,meta}`` pickle format.

    Each pickle is a dict with b'data' (uint8 [N, 3072], R then G then B planes, row-major),
    b'fine_labels', b'coarse_labels', b'filenames', b'batch_label'; meta has b'fine_label_names'
    and b'coarse_label_names' (keys are str instead when ``str_keys``, i.e. what Python 3 sees
    when torchvision unpickles the official files with encoding="latin1"). With ``archive`` the
    folder is packed into ``cifar-100-python.tar.gz`` and removed. Returns {split: (data, labels)}.
    """
    rng = np.random.default_rng(seed)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        n = labels.shape[0]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        entry = {
            key("data"): data,
            key("fine_labels"): labels.tolist(),
            key("coarse_labels"): (labels % 20).tolist(),
            key("filenames"): [f"img_{i}.png".encode() for i in range(n)],
            key("batch_label"): f"{split} batch 1 of 1".encode(),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
        written[split] = (data, labels)
    meta = {key("fine_label_names"): [f"class{i}" for i in range(100)],
            key("coarse_label_names"): [f"super{i}" for i in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    if archive:
        with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-100-python")
        shutil.rmtree(folder)
    return written


def fake_cifar(per_class_train: int = 50, per_class_test: int = 2) -> Cifar100:
    """In-memory balanced data set; image i has every pixel of channel 0 = i % 256 (tracks identity)."""
    def make(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(100).repeat(per_class)  # class-interleaved order
        images = torch.zeros(labels.shape[0], 3, 32, 32, dtype=torch.uint8)
        idx = torch.arange(labels.shape[0])
        images[:, 0] = (idx % 256).to(torch.uint8).view(-1, 1, 1)
        images[:, 1] = (idx // 256).to(torch.uint8).view(-1, 1, 1)
        return images, labels

    return Cifar100(*make(per_class_train), *make(per_class_test))


# --------------------------------------------------------------------------------------------------
# ImageFolder layout
# --------------------------------------------------------------------------------------------------


def test_image_folder_maps_folders_by_integer_name(tmp_path):
    root = write_image_folder(tmp_path / "cifar")
    data = load_cifar100(root, download=False, cache_dir=tmp_path / "cache")
    assert data.train_images.shape == (9, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert data.train_labels.tolist() == [2, 2, 2, 10, 10, 10, 11, 11, 11]
    assert data.test_labels.tolist() == [2, 2, 2, 10, 10, 10, 11, 11, 11]
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        for label, colour in COLOURS.items():
            first = images[labels == label][0]  # file <label>_0.png: the exact colour
            assert first[:, 0, 0].tolist() == list(colour)
            assert (first == first[:, :1, :1]).all()  # solid
    # folder "10" is label 10 (green), not the third folder in string order ("10" < "11" < "2")
    assert data.train_images[data.train_labels == 10][:, 1].float().mean() > 200


def test_image_folder_bad_class_folder_names(tmp_path):
    root = write_image_folder(tmp_path / "cifar", per_class=1)
    (root / "train" / "cat").mkdir()
    with pytest.raises(ValueError, match=r"train/cat"):
        load_cifar100(root, download=False, cache_dir=tmp_path / "cache")
    (root / "train" / "cat").rmdir()
    (root / "val" / "100").mkdir()
    with pytest.raises(ValueError, match=r"val/100.*0\.\.99"):
        load_cifar100(root, download=False, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "name, payload", [("bad.png", b"not an image at all"), ("bad.jpg", b"\xff\xd8\xff" + b"x" * 40)]
)
def test_unreadable_image_names_the_file(tmp_path, name, payload):
    root = write_image_folder(tmp_path / "cifar", per_class=2)
    bad = root / "train" / "10" / name
    bad.write_bytes(payload)
    with pytest.raises(ValueError, match="cannot decode image") as info:
        load_cifar100(root, download=False, cache_dir=tmp_path / "cache")
    assert str(bad) in str(info.value)


def test_wrong_image_size_names_the_file(tmp_path):
    root = write_image_folder(tmp_path / "cifar", per_class=1)
    big = root / "val" / "11" / "big.png"
    Image.new("RGB", (64, 32), (1, 2, 3)).save(big)
    with pytest.raises(ValueError, match="expected \\(3, 32, 32\\)") as info:
        load_cifar100(root, download=False, cache_dir=tmp_path / "cache")
    assert str(big) in str(info.value)


def test_missing_folder_names_path_and_layouts(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_cifar100(missing, download=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert str(missing) in msg and "cifar-100-python" in msg and "train/<fine_id>" in msg


def test_missing_val_folder(tmp_path):
    root = write_image_folder(tmp_path / "cifar", per_class=1)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match="no val/"):
        load_cifar100(root, download=False, cache_dir=tmp_path / "cache")


def test_cache_second_load_does_not_decode(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "cifar")
    cache = tmp_path / "cache"
    first = load_cifar100(root, download=False, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary file left behind

    def no_decoding(paths):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data_mod, "_decode_files", no_decoding)
    second = load_cifar100(root, download=False, cache_dir=cache)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    # a changed file list (a new image) changes the key, so the data are decoded again
    Image.new("RGB", (32, 32), (7, 7, 7)).save(root / "train" / "2" / "extra.png")
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_cifar100(root, download=False, cache_dir=cache)


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "cifar", per_class=1)
    monkeypatch.setenv("HIERCLS_CACHE_DIR", str(tmp_path / "envcache"))
    assert data_mod.default_cache_dir() == tmp_path / "envcache"
    load_cifar100(root, download=False)
    assert len(list((tmp_path / "envcache").glob("cifar100-imagefolder-*.pt"))) == 1


# --------------------------------------------------------------------------------------------------
# torchvision layout
# --------------------------------------------------------------------------------------------------


def _fail_download(*args, **kwargs):
    raise urllib.error.URLError("no network in tests")


@pytest.mark.parametrize("archive", [False, True])
def test_torchvision_layout_reads_pickles(tmp_path, monkeypatch, archive):
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", _fail_download)
    written = write_torchvision_cifar100(tmp_path, per_class_train=2, per_class_test=1, archive=archive)
    data = load_cifar100(tmp_path, download=True, cache_dir=tmp_path / "cache")
    assert data.train_images.shape == (200, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (100, 3, 32, 32)
    for split in ("train", "test"):
        raw, labels = written[split]
        images = getattr(data, f"{split}_images")
        assert getattr(data, f"{split}_labels").tolist() == labels.tolist()
        # pixel (c, y, x) of image i is byte c*1024 + y*32 + x of row i
        assert images[5, 0, 0, 0] == raw[5, 0] and images[5, 1, 0, 0] == raw[5, 1024]
        assert images[5, 2, 31, 31] == raw[5, 3071] and images[5, 0, 1, 2] == raw[5, 34]
        assert torch.equal(images.reshape(len(labels), -1), torch.from_numpy(raw))
    assert (data.train_labels.bincount(minlength=100) == 2).all()
    if archive:
        assert (tmp_path / "cifar-100-python" / "train").is_file()  # extracted locally, no download


def test_torchvision_layout_through_torchvision_reader(tmp_path, monkeypatch):
    """When torchvision's integrity check passes (official files), torchvision itself reads them."""
    written = write_torchvision_cifar100(tmp_path, per_class_train=1, per_class_test=1, str_keys=True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)

    def not_ours(path):
        raise AssertionError("own pickle reader used although torchvision accepted the files")

    monkeypatch.setattr(data_mod, "_read_cifar_pickle", not_ours)
    data = load_cifar100(tmp_path, download=False)
    raw, labels = written["train"]
    assert data.train_labels.tolist() == labels.tolist()
    assert torch.equal(data.train_images.reshape(100, -1), torch.from_numpy(raw))


def test_empty_folder_download_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", _fail_download)
    with pytest.raises(RuntimeError) as info:
        load_cifar100(tmp_path, download=True, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "download failed" in msg and "no network" in msg and str(tmp_path) in msg
    assert "cifar-100-python" in msg and "train/<fine_id>" in msg and "val/<fine_id>" in msg


def test_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    """torchvision creates the target folder before it fails; a mistyped --data-dir is not left behind,
    while folders that existed before are kept."""

    def create_then_fail(url, download_root, *args, **kwargs):
        Path(download_root).mkdir(parents=True, exist_ok=True)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", create_then_fail)
    target = tmp_path / "typo" / "cifar-100"
    with pytest.raises(RuntimeError, match="download failed"):
        load_cifar100(target, download=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "typo").exists() and tmp_path.is_dir()


def test_corrupt_pickle_names_the_file(tmp_path, monkeypatch):
    write_torchvision_cifar100(tmp_path, per_class_train=1, per_class_test=1)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cifar-100-python/test"):
        load_cifar100(tmp_path, download=False)


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(cifar_dir) -> Cifar100:
    start = time.perf_counter()
    data = load_cifar100(cifar_dir, download=False)
    print(f"loaded real CIFAR-100 in {time.perf_counter() - start:.1f} s")
    return data


def test_real_data_counts(real):
    assert real.train_images.shape == (50000, 3, 32, 32) and real.train_images.dtype == torch.uint8
    assert real.test_images.shape == (10000, 3, 32, 32)
    assert real.train_labels.bincount(minlength=100).tolist() == [500] * 100
    assert real.test_labels.bincount(minlength=100).tolist() == [100] * 100
    mean = real.train_images[::10].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR100_MEAN), atol=0.005)


def test_real_folder_10_is_label_10(real, cifar_dir):
    for split, folder, images, labels in (
        ("train", "train", real.train_images, real.train_labels),
        ("test", "val", real.test_images, real.test_labels),
    ):
        first_file = Path(cifar_dir) / folder / "10" / sorted(os.listdir(Path(cifar_dir) / folder / "10"))[0]
        expected = decode_image(read_file(str(first_file)), mode=ImageReadMode.RGB)
        assert torch.equal(images[labels == 10][0], expected), split
        assert not (images[labels == 2] == expected).flatten(1).all(1).any(), split


def test_real_small_splits(real):
    splits = make_splits(real, val_size=500, seed=0, max_train_samples=2000)
    assert len(splits.train) == 2000 and len(splits.val) == 500 and len(splits.test) == 10000
    assert splits.val.labels.bincount(minlength=100).tolist() == [5] * 100
    assert splits.train.labels.bincount(minlength=100).tolist() == [20] * 100
    assert not set(splits.train.indices.tolist()) & set(splits.val.indices.tolist())
    assert torch.equal(splits.val.images, real.train_images[splits.val.indices])
    loader = DeviceLoader(splits.val, batch_size=128, train=False)
    assert len(loader) == 4 and [len(y) for _, y in loader] == [128, 128, 128, 116]


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


def test_split_disjoint_stratified_and_complete():
    data = fake_cifar(per_class_train=50)
    splits = make_splits(data, val_size=1000, seed=3)
    train_idx, val_idx = set(splits.train.indices.tolist()), set(splits.val.indices.tolist())
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(5000))
    assert splits.val.labels.bincount(minlength=100).tolist() == [10] * 100
    assert splits.train.labels.bincount(minlength=100).tolist() == [40] * 100
    # the images really are those of the indices (channel 0/1 encode the source position)
    ident = splits.val.images[:, 0, 0, 0].long() + 256 * splits.val.images[:, 1, 0, 0].long()
    assert ident.tolist() == splits.val.indices.tolist()
    assert torch.equal(splits.val.labels, data.train_labels[splits.val.indices])
    assert splits.test.images is data.test_images and len(splits.test) == 200


def test_split_determinism():
    data = fake_cifar(per_class_train=20)
    a = make_splits(data, val_size=500, seed=7)
    b = make_splits(data, val_size=500, seed=7)
    c = make_splits(data, val_size=500, seed=8)
    assert torch.equal(a.val.indices, b.val.indices) and torch.equal(a.train.indices, b.train.indices)
    assert not torch.equal(a.val.indices, c.val.indices)
    # global RNG state plays no part
    torch.manual_seed(123)
    assert torch.equal(make_splits(data, val_size=500, seed=7).val.indices, a.val.indices)


def test_split_uneven_val_size_distributes_evenly():
    data = fake_cifar(per_class_train=10)
    splits = make_splits(data, val_size=150, seed=0)
    counts = splits.val.labels.bincount(minlength=100)
    assert len(splits.val) == 150 and sorted(counts.unique().tolist()) == [1, 2]
    assert int((counts == 2).sum()) == 50


def test_max_train_samples_stratified_and_keeps_val():
    data = fake_cifar(per_class_train=50)
    full = make_splits(data, val_size=1000, seed=1)
    small = make_splits(data, val_size=1000, seed=1, max_train_samples=1500)
    assert torch.equal(full.val.indices, small.val.indices)
    assert len(small.train) == 1500
    assert small.train.labels.bincount(minlength=100).tolist() == [15] * 100
    assert set(small.train.indices.tolist()) <= set(full.train.indices.tolist())
    again = make_splits(data, val_size=1000, seed=1, max_train_samples=1500)
    assert torch.equal(again.train.indices, small.train.indices)


def test_val_size_zero_and_errors():
    data = fake_cifar(per_class_train=5)
    splits = make_splits(data, val_size=0)
    assert splits.val is None and len(splits.train) == 500
    assert torch.equal(splits.train.indices, torch.arange(500))
    assert len(make_splits(data, val_size=0, max_train_samples=200).train) == 200
    for bad in (-1, 500, 501):
        with pytest.raises(ValueError, match="val_size"):
            make_splits(data, val_size=bad)
    for bad in (0, 401):
        with pytest.raises(ValueError, match="max_train_samples"):
            make_splits(data, val_size=100, max_train_samples=bad)


# --------------------------------------------------------------------------------------------------
# loader
# --------------------------------------------------------------------------------------------------


def random_split(n: int = 10, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Split(images=images, labels=torch.arange(n))


def collect(loader: DeviceLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader.epoch(epoch))
    return torch.cat(xs), torch.cat(ys)


def test_train_loader_shapes_and_partial_batch():
    split = random_split(10)
    loader = DeviceLoader(split, batch_size=4, train=True, cutout=8)
    assert len(loader) == 3 and loader.num_samples == 10
    batches = list(loader.epoch(0))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
        assert torch.isfinite(x).all()
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(10))  # every sample exactly once
    dropping = DeviceLoader(split, batch_size=4, train=True, drop_last=True)
    assert len(dropping) == 2 and [len(y) for _, y in dropping.epoch(0)] == [4, 4]


def test_train_loader_determinism():
    split = random_split(64)
    kwargs = dict(batch_size=16, train=True, seed=5, cutout=6)
    a_x, a_y = collect(DeviceLoader(split, **kwargs), 3)
    b_x, b_y = collect(DeviceLoader(split, **kwargs), 3)  # a fresh loader (as after a resume)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    c_x, c_y = collect(DeviceLoader(split, **kwargs), 4)
    assert not torch.equal(a_y, c_y) and not torch.equal(a_x, c_x)
    d_x, d_y = collect(DeviceLoader(split, **{**kwargs, "seed": 6}), 3)
    assert not torch.equal(a_y, d_y)
    # the global RNG does not matter
    torch.manual_seed(99)
    e_x, _ = collect(DeviceLoader(split, **kwargs), 3)
    assert torch.equal(a_x, e_x)


def test_flip_without_crop_is_exact():
    image = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 3, 32, 32)
    images = image.repeat(64, 1, 1, 1)
    zeros = torch.zeros(64, dtype=torch.int64)
    loader = DeviceLoader(images, zeros, batch_size=64, train=True, crop_padding=0)
    x, _ = collect(loader, 0)
    out = denormalise(x)
    same = (out == image).flatten(1).all(1)
    flipped = (out == image.flip(3)).flatten(1).all(1)
    assert (same ^ flipped).all()  # each output is exactly the image or its mirror
    assert 10 < int(flipped.sum()) < 54  # about half flipped
    no_flip = DeviceLoader(images, torch.zeros(64, dtype=torch.int64), batch_size=64, train=True,
                           crop_padding=0, flip=False)
    assert torch.equal(denormalise(collect(no_flip, 0)[0]), images)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    image = (torch.arange(3 * 32 * 32).remainder(250) + 1).to(torch.uint8).view(1, 3, 32, 32)  # no zeros
    n, p = 40, 4
    loader = DeviceLoader(image.repeat(n, 1, 1, 1), torch.zeros(n, dtype=torch.int64), batch_size=16,
                          train=True, crop_padding=p, flip=False)
    out = denormalise(collect(loader, 2)[0])
    padded = torch.nn.functional.pad(image, (p, p, p, p))
    offsets = []
    for k in range(n):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[k], padded[0, :, dy:dy + 32, dx:dx + 32])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 10  # offsets really vary
    assert {o[0] for o in offsets} - {p} and {o[1] for o in offsets} - {p}


def test_cutout_zeroes_a_square_after_normalisation():
    images = torch.full((32, 3, 32, 32), 200, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.zeros(32, dtype=torch.int64), batch_size=32, train=True,
                          crop_padding=0, flip=False, cutout=8)
    x, _ = collect(loader, 0)
    expected = (200 - MEAN255) / STD255
    for k in range(32):
        zero = x[k] == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # same mask per channel
        rows, cols = zero[0].any(1).nonzero().squeeze(1), zero[0].any(0).nonzero().squeeze(1)
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert int(zero[0].sum()) == len(rows) * len(cols)  # a (clipped) rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert torch.allclose(x[k][~zero], expected.expand(1, 3, 32, 32)[0][~zero])


def test_eval_loader_fixed_order_no_augmentation():
    split = random_split(10)
    loader = DeviceLoader(split, batch_size=4, train=False, cutout=8)
    assert len(loader) == 3
    batches = list(loader.epoch(0))
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x = torch.cat([b for b, _ in batches])
    assert torch.allclose(x, (split.images.float() - MEAN255) / STD255)
    assert torch.equal(denormalise(x), split.images)
    assert torch.equal(collect(loader, 7)[0], x)
    assert torch.equal(torch.cat([b for b, _ in loader]), x)  # plain iteration allowed for eval


def test_loader_channels_last_and_argument_errors():
    split = random_split(6)
    loader = DeviceLoader(split, batch_size=4, train=True, channels_last=True)
    for x, _ in loader.epoch(0):
        assert x.is_contiguous(memory_format=torch.channels_last)
    eval_loader = DeviceLoader(split.images, split.labels, batch_size=4, train=False, channels_last=True)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in eval_loader)
    with pytest.raises(TypeError, match="epoch"):
        iter(loader)
    with pytest.raises(TypeError, match="uint8"):
        DeviceLoader(split.images.float(), split.labels, batch_size=2, train=False)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(split, batch_size=0, train=False)
    with pytest.raises(TypeError, match="labels"):
        DeviceLoader(split, split.labels, batch_size=2, train=False)
