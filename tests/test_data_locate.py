"""Finding CIFAR-100 without ``--data-dir``: the search order, the shared archive extracted once (checked,
atomic, locked), the one-line error naming every place tried, and the training CLI on top of it. Tiny
archives and folders written by the tests; one slow test extracts the real shared archive."""

from __future__ import annotations

import errno
import io
import os
import tarfile
import threading
import urllib.error
from pathlib import Path

import pytest
import torchvision

import hiercls.data.locate as locate
from hiercls.data import DataNotFoundError, find_cifar100, resolve_data_dir
from hiercls.storage import EXIT_INPUT, StorageError

ROOT = Path(__file__).resolve().parents[1]


def _image_folder(root: Path, per_split: int = 2) -> Path:
    """A folder with the ImageFolder layout (train/0, val/0) and ``per_split`` tiny files per split."""
    for split in ("train", "val"):
        (root / split / "0").mkdir(parents=True)
        for i in range(per_split):
            (root / split / "0" / f"{i}.png").write_bytes(b"png")
    return root


def _archive(path: Path, images: int = 6, top: str = "cifar-100") -> Path:
    """A .tar.gz like the shared one: ``top/train/<id>/*.jpg`` and ``top/val/<id>/*.jpg``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for i in range(images):
            split = "train" if i % 3 else "val"
            data = b"jpeg" * (i + 1)
            info = tarfile.TarInfo(f"{top}/{split}/{i % 2}/{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder in tmp_path, its shared folder beside it, no HIERCLS_DATA_DIR, small archives."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setattr(locate, "project_root", lambda: root)
    monkeypatch.setenv("HIERCLS_SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.delenv("HIERCLS_DATA_DIR", raising=False)
    monkeypatch.setattr(locate, "EXPECTED_IMAGES", 6)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", _no_network)
    return root


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network in tests")


def test_search_order_env_then_project_then_shared_archive(project, tmp_path, monkeypatch):
    archive = _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    mine = _image_folder(tmp_path / "mine")
    monkeypatch.setenv("HIERCLS_DATA_DIR", str(mine))
    assert find_cifar100() == locate.Located(mine.resolve(), "HIERCLS_DATA_DIR")

    monkeypatch.setenv("HIERCLS_DATA_DIR", str(tmp_path / "typo"))  # set but empty: looked past, warned
    found = find_cifar100(download=False)
    assert found == locate.Located(project / ".data" / "cifar-100", "shared archive")
    assert (found.path / ".complete").is_file()
    assert sorted(p.name for p in (found.path / "train" / "1").iterdir()) == ["1.jpg", "5.jpg"]
    assert archive.is_file()  # the shared archive is read, never moved

    monkeypatch.delenv("HIERCLS_DATA_DIR")
    assert find_cifar100(download=False) == locate.Located(found.path, "project")


def test_extracted_once(project, tmp_path, monkeypatch):
    _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    first = find_cifar100(download=False)
    assert find_cifar100(download=False).path == first.path and len(opened) == 1
    assert resolve_data_dir(None) == first.path and len(opened) == 1


def test_concurrent_callers_extract_once(project, tmp_path, monkeypatch):
    archive = _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    target = project / ".data" / "cifar-100"
    started, opened = threading.Event(), []
    real_open = tarfile.open

    def slow_open(*args, **kwargs):
        opened.append(args)
        started.set()
        threading.Event().wait(0.3)  # hold the lock while the other caller arrives
        return real_open(*args, **kwargs)

    monkeypatch.setattr(tarfile, "open", slow_open)
    results: list[Path] = []

    def second_caller() -> None:
        started.wait(5)
        results.append(locate.extract_archive(archive, target))

    other = threading.Thread(target=second_caller)
    other.start()
    results.append(locate.extract_archive(archive, target))
    other.join(10)
    assert results == [target, target] and len(opened) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".cifar-100.lock", "cifar-100"]


def test_wrong_image_count_keeps_nothing(project, tmp_path):
    archive = _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME, images=5)
    with pytest.raises(ValueError, match="holds 5 images in train/ and val/, expected 6") as err:
        find_cifar100(download=False)
    assert str(archive) in str(err.value) and "\n" not in str(err.value)
    assert [p.name for p in (project / ".data").iterdir()] == [".cifar-100.lock"]  # no scratch, no target


def test_archive_without_top_folder_or_corrupt(project, tmp_path):
    data = tmp_path / "shared" / "data"
    _archive(data / locate.ARCHIVE_NAME, top="images")
    with pytest.raises(ValueError, match="has no top folder cifar-100/"):
        find_cifar100(download=False)
    (data / locate.ARCHIVE_NAME).write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="is damaged or unreadable"):
        find_cifar100(download=False)
    assert not (project / ".data" / "cifar-100").exists()


def test_full_disk_during_extraction_keeps_nothing(project, tmp_path, tmpfs):
    """A real full disk (a 1 MiB tmpfs as the project's .data) under an archive of 2 MiB of images."""
    big = tmp_path / "shared" / "data" / locate.ARCHIVE_NAME
    big.parent.mkdir(parents=True)
    with tarfile.open(big, "w:gz") as tar:
        for i in range(6):
            blob = os.urandom(350_000)  # incompressible
            info = tarfile.TarInfo(f"cifar-100/{'train' if i % 3 else 'val'}/0/{i}.jpg")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    if not tmpfs.mount(project / ".data", "1m"):
        pytest.fail("cannot mount a tmpfs here (the fault tests run as root)")
    with pytest.raises(StorageError) as err:
        find_cifar100(download=False)
    assert err.value.errno == errno.ENOSPC and "no space left" in str(err.value)
    assert "nothing was kept" in str(err.value) and "\n" not in str(err.value)
    assert [p.name for p in (project / ".data").iterdir()] == [".cifar-100.lock"]


def test_nothing_found_names_every_place(project, tmp_path, monkeypatch):
    monkeypatch.setenv("HIERCLS_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataNotFoundError) as err:
        find_cifar100(download=True)
    message = str(err.value)
    assert "\n" not in message
    for place in (f"(1) $HIERCLS_DATA_DIR={tmp_path / 'typo'}: does not exist",
                  f"(2) {project / '.data' / 'cifar-100'}: does not exist",
                  f"(3) shared archive {tmp_path / 'shared' / 'data' / locate.ARCHIVE_NAME}: not found",
                  f"(4) torchvision download into {project / '.data' / 'cifar-100'}: failed (URLError"):
        assert place in message
    assert "--data-dir DIR" in message and "HIERCLS_DATA_DIR=DIR" in message
    assert not (project / ".data").exists()  # the failed download leaves no empty folders

    monkeypatch.delenv("HIERCLS_DATA_DIR")
    with pytest.raises(DataNotFoundError, match=r"\(1\) \$HIERCLS_DATA_DIR: not set; .*\(4\) torchvision "
                       r"download: not allowed \(download: false or --no-download\)"):
        find_cifar100(download=False)


def test_a_foreign_folder_is_never_extracted_over(project, tmp_path):
    _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    target = project / ".data" / "cifar-100"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DataNotFoundError, match="exists but holds no CIFAR-100 layout"):
        find_cifar100(download=False)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (target / "notes.txt").unlink()  # an empty folder is simply filled
    assert find_cifar100(download=False).path == target and (target / "val").is_dir()


def test_explicit_data_dir(project, tmp_path):
    missing = tmp_path / "nowhere" / "cifar-100"
    with pytest.raises(DataNotFoundError, match=f"data folder '{missing}' does not exist") as err:
        resolve_data_dir(missing)  # never searched for elsewhere, never created
    assert "\n" not in str(err.value) and not missing.parent.exists()
    mine = _image_folder(tmp_path / "mine")
    assert resolve_data_dir(mine) == mine and resolve_data_dir(project) == project  # existing: as given
    target = project / ".data" / "cifar-100"
    with pytest.raises(DataNotFoundError, match="does not exist"):
        resolve_data_dir(target)  # no shared archive to fill it from
    _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    assert resolve_data_dir(target) == target and (target / ".complete").is_file()  # filled from it


def test_train_cli_without_data_names_the_places(project, tmp_path, capsys):
    from hiercls.train import main

    out = tmp_path / "run"
    status = main(["--out_folder", str(out), "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_INPUT
    assert len(err) == 1 and "CIFAR-100 not found; tried (1) $HIERCLS_DATA_DIR: not set" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_locate_cli(project, tmp_path, capsys):
    from hiercls.data.__main__ import main

    assert main(["locate", "--no-download"]) == EXIT_INPUT
    assert "CIFAR-100 not found" in capsys.readouterr().err
    _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    assert main(["locate"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{project / '.data' / 'cifar-100'}\n"
    assert "CIFAR-100 from shared archive" in captured.err


def test_a_run_records_the_folder_it_found(tiny_run, cifar_dir, monkeypatch):
    from hiercls.engine import fit

    monkeypatch.setenv("HIERCLS_DATA_DIR", str(cifar_dir))
    config = tiny_run(data_dir=None)
    result = fit(config)
    saved = (Path(result["out_folder"]) / "config.yaml").read_text()
    assert f"data_dir: {Path(cifar_dir).resolve()}\n" in saved
    assert fit(config, resume=True)["epochs_run"] == 1  # found again on resume: the same run


@pytest.mark.slow
@pytest.mark.realdata
def test_real_shared_archive_extracts_with_60000_images(tmp_path, monkeypatch):
    shared = Path(os.environ.get("HIERCLS_SHARED_DIR", ROOT.parent / "shared"))
    archive = shared / "data" / locate.ARCHIVE_NAME
    if not archive.is_file():
        pytest.fail(f"{archive} not found: the tests need ../shared beside the checkout")
    monkeypatch.setattr(locate, "project_root", lambda: tmp_path)
    monkeypatch.setenv("HIERCLS_SHARED_DIR", str(shared))
    monkeypatch.delenv("HIERCLS_DATA_DIR", raising=False)
    found = find_cifar100(download=False)
    assert found == locate.Located(tmp_path / ".data" / "cifar-100", "shared archive")
    assert locate._count_images(found.path) == 60_000
    assert sorted(int(p.name) for p in (found.path / "val").iterdir()) == list(range(100))


def test_search_without_data_names_the_places_before_ray_starts(project, tmp_path, capsys, monkeypatch):
    from hiercls.tune import runner
    from hiercls.tune.cli import main

    started = []  # whether the search reached Ray (another test of the session may have started Ray itself)
    monkeypatch.setattr(runner, "_ray_session", lambda *args, **kwargs: started.append(args))
    status = main(["--space", "smoke", "--name", "nodata", "--storage-path", str(tmp_path / "tune")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == EXIT_INPUT and not started
    assert len(err) == 1 and "CIFAR-100 not found; tried (1) $HIERCLS_DATA_DIR: not set" in err[0]
    assert f"(3) shared archive {tmp_path / 'shared' / 'data' / locate.ARCHIVE_NAME}: not found" in err[0]


def test_damaged_archives_are_refused_in_one_line(project, tmp_path):
    archive = _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])  # truncated: the gzip stream ends early
    with pytest.raises(ValueError, match="is damaged or unreadable") as err:
        find_cifar100(download=False)
    assert "\n" not in str(err.value) and str(archive) in str(err.value)
    # a wrong CRC in the gzip trailer: tarfile stops at the tar end marker and would extract every file
    crc = bytearray(good)
    crc[-8] ^= 0xFF
    archive.write_bytes(bytes(crc))
    with tarfile.open(archive) as tar:
        assert len(tar.getnames()) == 6  # every file readable as a tar all the same
    with pytest.raises(ValueError, match=r"is damaged or unreadable \(BadGzipFile: CRC check failed"):
        find_cifar100(download=False)
    assert [p.name for p in (project / ".data").iterdir()] == [".cifar-100.lock"]
    archive.write_bytes(good)
    assert find_cifar100(download=False).source == "shared archive"


def test_a_killed_extraction_leaves_no_scratch_behind_the_next_one(project, tmp_path):
    _archive(tmp_path / "shared" / "data" / locate.ARCHIVE_NAME)
    stale = project / ".data" / ".cifar-100.extracting-abc123"
    (stale / "cifar-100" / "train" / "0").mkdir(parents=True)  # what a kill -9 leaves
    (stale / "cifar-100" / "train" / "0" / "1.jpg").write_bytes(b"x")
    assert find_cifar100(download=False).source == "shared archive"
    assert sorted(p.name for p in (project / ".data").iterdir()) == [".cifar-100.lock", "cifar-100"]


def test_a_half_filled_project_copy_is_refused(project, tmp_path):
    target = _image_folder(project / ".data" / "cifar-100", per_split=2)  # 4 images, no .complete marker
    with pytest.raises(DataNotFoundError, match=r"holds 4 images in train/ and val/, expected 6 \(an "
                       "interrupted extraction\\?\\); move it away"):
        find_cifar100(download=False)
    (target / "val" / "0" / "2.png").write_bytes(b"png")
    (target / "val" / "0" / "3.png").write_bytes(b"png")
    assert find_cifar100(download=False).source == "project"  # a full copy of the user's own: used
    (target / "val" / "0" / "3.png").unlink()
    (target / ".complete").touch()  # written by an extraction that finished
    assert find_cifar100(download=False).source == "project"


def test_explicit_data_dir_that_is_empty_text_or_a_file(project, tmp_path):
    for bad in ("", " "):
        with pytest.raises(DataNotFoundError, match=f"data folder '{bad}' is empty"):
            resolve_data_dir(bad)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DataNotFoundError, match="is a file, not a folder"):
        resolve_data_dir(afile)


def test_train_cli_refuses_a_missing_data_dir_without_downloading(project, tmp_path, capsys, monkeypatch):
    from hiercls.train import main

    calls = []
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive",
                        lambda *a, **k: calls.append(a))
    status = main(["--data-dir", str(tmp_path / "nowhere"), "--out_folder", str(tmp_path / "run"),
                   "--epochs", "1", "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == EXIT_INPUT and calls == [] and not (tmp_path / "nowhere").exists()
    assert len(err) == 1 and f"data folder '{tmp_path / 'nowhere'}' does not exist" in err[0]
