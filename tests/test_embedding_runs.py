"""The seed's embedding and cascade methods as a user runs them: Barz & Denzler, DeViSE on fastText word
vectors, yolo-v2; the reference code's head flags (two-layer head, its own learning rate and weight decay,
a frozen backbone for the first epochs); bad combinations refused before any work."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from fasttext_file import write_fasttext_bin
from inprocess import run_main

from hiercls.engine import build_run, fit
from hiercls.hierarchy import CIFAR100_CLASSES
from hiercls.models import backbone_parameters, head_parameters

BASE = ["--max-train-samples", "200", "--val-size", "100", "--batch_size", "50", "--no-test", "--device",
        "cpu"]
SMALL = [*BASE, "--epochs", "1"]


@pytest.fixture(scope="module")
def tiny_bin(tmp_path_factory) -> Path:
    """A tiny fastText model over the CIFAR-100 class words (every class then has a vector of its own
    words), written directly in fastText's format (``fasttext_file``: the trainer is not reliable on a
    corpus this small); no assertion depends on the vectors' values."""
    words = sorted({w for name in CIFAR100_CLASSES for w in name.split("_")})
    return write_fasttext_bin(tmp_path_factory.mktemp("fasttext") / "tiny.bin", words, dim=12)


def _train_cli(tmp_path: Path, capsys, *args: str):
    out = tmp_path / "run"
    result = run_main([*args, *SMALL, "--out_folder", str(out)], "hiercls.train", capsys)
    return result, out


@pytest.mark.parametrize("args", [
    ("--barzdenzler", "--loss", "cosine-distance"),
    ("--barzdenzler", "True", "--loss", "cosine-plus-xent"),
    ("--loss", "yolo-v2", "--hierarchy", "cifar100-wordnet"),
])
def test_seed_command_lines_run_as_written(tmp_path, capsys, cifar_dir, args) -> None:
    result, out = _train_cli(tmp_path, capsys, *args, "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loss"] == args[args.index("--loss") + 1]
    assert saved["barzdenzler"] is ("--barzdenzler" in args)
    record = json.loads((out / "all_epoch_results.json").read_text())[-1]
    assert math.isfinite(record["val_loss"]) and 0 <= record["val_top1_error"] <= 1
    assert math.isfinite(record["val_hdist@5"]) and math.isfinite(record["val_mistake_severity"])
    # CRM needs class probabilities: NaN for the embedding losses, computed for yolo-v2's leaf probabilities
    assert math.isnan(record["val_crm/top1_error"]) == (saved["loss"] != "yolo-v2")


def test_devise_with_a_fasttext_model(tmp_path, capsys, cifar_dir, tiny_bin) -> None:
    result, out = _train_cli(tmp_path, capsys, "--devise", "--loss", "ranking-loss", "--word_vectors",
                             str(tiny_bin), "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["devise"] is True and saved["word_vectors"] == str(tiny_bin)
    weights = torch.load(out / "final_model.pth", map_location="cpu", weights_only=True)
    state = weights.get("model", weights)
    import fasttext

    dim = fasttext.load_model(str(tiny_bin)).get_dimension()
    assert state["classifier.weight"].shape == (dim, 512)  # one output per word-vector dimension


@pytest.mark.parametrize(("args", "message"), [
    (("--barzdenzler", "--loss", "soft-labels"), "barzdenzler needs an embedding loss"),
    (("--devise", "--loss", "cosine-plus-xent", "--word_vectors", "{vec}"),
     "devise cannot use loss 'cosine-plus-xent'"),
    (("--devise", "--loss", "ranking-loss"), "devise needs word_vectors FILE"),
    (("--devise", "--loss", "ranking-loss", "--word_vectors", "{yaml}"), "expected a fastText .bin model"),
    (("--devise", "--loss", "ranking-loss", "--word_vectors", "{missing}"), "missing.bin"),
    (("--barzdenzler", "--devise", "--loss", "cosine-distance", "--word_vectors", "{vec}"),
     "barzdenzler and devise are both set"),
    (("--barzdenzler", "maybe", "--loss", "cosine-distance"), "barzdenzler='maybe' must be true or false"),
    (("--loss", "cosine-distance", "--embedding_size", "300"),
     "embedding_size=300 conflicts with the Barz & Denzler embedding's 100 dimensions"),
    (("--loss", "soft-labels", "--word_vectors", "{vec}"), "is set, but devise is not"),
    (("--use_fc_batchnorm",), "use_fc_batchnorm needs use_2fc"),
    (("--train_backbone_after", "5"), "train_backbone_after=5 is out of range"),
])
def test_bad_combinations_are_refused_before_any_work(tmp_path, capsys, args, message) -> None:
    (tmp_path / "w.vec").write_text("1 2\napple 1 0\n")
    (tmp_path / "w.yaml").write_text("loss: ranking-loss\n")
    files = {"vec": tmp_path / "w.vec", "yaml": tmp_path / "w.yaml", "missing": tmp_path / "missing.bin"}
    args = [a.format(**files) for a in args]
    # a data folder that does not exist: a check that came after the data would fail on it instead
    result, out = _train_cli(tmp_path, capsys, *args, "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_frozen_backbone_for_the_first_epochs(tiny_run, cifar) -> None:
    config = tiny_run(epochs=2, train_backbone_after=2, use_2fc=True, fc_inner_dim=64, use_fc_batchnorm=True)
    initial = build_run(config, data=cifar).model
    start = {k: v.clone() for k, v in initial.state_dict().items()}
    backbone = {id(p) for p in backbone_parameters(initial)}
    names = {n for n, p in initial.named_parameters() if id(p) in backbone}
    head = {n for n, p in initial.named_parameters() if id(p) not in backbone}
    assert head == {"classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias",
                    "classifier.3.weight", "classifier.3.bias"}
    fit(config, data=cifar)
    trained = torch.load(Path(config.out_folder) / "final_model.pth", map_location="cpu", weights_only=True)
    trained = trained.get("model", trained)
    for name in names:  # every backbone parameter unchanged
        assert torch.equal(trained[name], start[name]), name
    assert all(not torch.equal(trained[n], start[n]) for n in head if n.endswith("weight"))
    # BatchNorm statistics still update in the frozen backbone
    assert not torch.equal(trained["features.2.running_mean"], start["features.2.running_mean"])
    # one epoch more than the freeze: the backbone trains in the third
    later = tiny_run(epochs=3, train_backbone_after=2, use_2fc=True, fc_inner_dim=64,
                     out_folder=str(Path(config.out_folder).parent / "later"))
    fit(later, data=cifar)
    moved = torch.load(Path(later.out_folder) / "final_model.pth", map_location="cpu", weights_only=True)
    moved = moved.get("model", moved)
    assert not torch.equal(moved["features.0.weight"], start["features.0.weight"])


def test_head_learning_rate_and_weight_decay_are_a_second_group(tiny_run, cifar) -> None:
    run = build_run(tiny_run(lr=0.05, lr_fc=0.01, weight_decay_fc=0.0, epochs=2), data=cifar)
    backbone_group, head_group = run.optimizer.param_groups
    assert {id(p) for p in head_group["params"]} == {id(p) for p in head_parameters(run.model)}
    assert len(backbone_group["params"]) == len(backbone_parameters(run.model))
    assert head_group["weight_decay"] == 0.0 and backbone_group["weight_decay"] == 5e-4
    assert head_group["lr"] == pytest.approx(0.01) and backbone_group["lr"] == pytest.approx(0.05)
    for _ in range(len(run.train_loader)):  # the schedule scales both: lr_fc / lr stays 0.2
        run.schedule.step()
    assert head_group["lr"] == pytest.approx(0.2 * backbone_group["lr"]) and backbone_group["lr"] < 0.05


def _cifar_vec(path: Path, seed: int, dim: int = 5) -> Path:
    """A hand-made ``.vec`` file with a random vector for every word of the CIFAR-100 class names."""
    words = sorted({w for name in CIFAR100_CLASSES for w in name.split("_")})
    rng = random.Random(seed)
    rows = [f"{w} " + " ".join(f"{rng.uniform(-1, 1):.5f}" for _ in range(dim)) for w in words]
    path.write_text(f"{len(words)} {dim}\n" + "\n".join(rows) + "\n")
    return path


def test_word_vectors_recorded_absolute_and_a_changed_file_is_refused(tmp_path, capsys, cifar_dir,
                                                                      monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _cifar_vec(work / "words.vec", seed=1)
    monkeypatch.chdir(work)
    args = ("--devise", "--loss", "ranking-loss", "--devise_single_negative", "--word_vectors", "words.vec",
            "--data-dir", str(cifar_dir), *BASE, "--epochs", "2", "--out_folder", str(work / "run"))
    result = run_main(args, "hiercls.train", capsys)
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert saved["word_vectors"] == str(work / "words.vec") and len(saved["word_vectors_sha256"]) == 64
    assert saved["devise_single_negative"] is True  # given bare
    recorded = json.loads((work / "run" / "all_epoch_results.json").read_text())[-1]

    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded absolute path is read
    scored = run_main([str(work / "run"), "--split", "val"], "hiercls.evaluate", capsys)
    assert scored.returncode == 0, scored.stderr
    scores = json.loads(scored.stdout)
    # the single negative's draw is seeded at every evaluation: the run's own val loss again
    assert scores["loss"] == pytest.approx(recorded["val_loss"], rel=1e-6)
    assert scores["top1_error"] == recorded["val_top1_error"]

    _cifar_vec(work / "words.vec", seed=2)  # the file changes under the run
    refused = run_main([str(work / "run"), "--split", "val"], "hiercls.evaluate", capsys)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "give other class vectors" in refused.stderr and "the file changed since the run" in refused.stderr
    monkeypatch.chdir(work)
    resumed = run_main([*args, "--resume"], "hiercls.train", capsys)
    assert resumed.returncode == 2
    assert "word_vectors_sha256: saved" in resumed.stderr and "gives other class vectors" in resumed.stderr


def test_barzdenzler_is_recorded_so_the_flag_may_be_added_on_resume(tmp_path, capsys, cifar_dir) -> None:
    out = tmp_path / "run"
    first = run_main(["--loss", "cosine-distance", "--data-dir", str(cifar_dir), *SMALL, "--out_folder",
                      str(out)], "hiercls.train", capsys)
    assert first.returncode == 0, first.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["barzdenzler"] is True
    again = run_main(["--barzdenzler", "--loss", "cosine-distance", "--data-dir", str(cifar_dir), *SMALL,
                      "--out_folder", str(out), "--resume"], "hiercls.train", capsys)
    assert again.returncode == 0, again.stderr
