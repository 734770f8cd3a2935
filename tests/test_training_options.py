"""The speedrun recipe's training options, each general and tested on its values: label smoothing, the
moving average of the weights, the alternating flip, flip test-time augmentation, the whitening
initialisation, the random crop's padding; model parameters as config keys; recipes by name; a run of
speednet with every option on resumes exactly. Synthetic data only (fast lane)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from inprocess import run_main, synthetic_cifar, without_timing
from torch import nn

from hiercls import engine
from hiercls.config import ConfigError, TrainConfig, fill_added_keys, load_config, shipped_recipes
from hiercls.data import DeviceLoader
from hiercls.engine import build_run, evaluate, fit
from hiercls.hierarchy import load_cifar100_hierarchy
from hiercls.losses import build_loss
from hiercls.models import build_model, first_conv
from hiercls.registry import LOSSES, MODELS
from hiercls.weights import WeightAverage, ema_decay_at, patch_whitening, whiten_first_conv


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar()


def tiny(out: Path, **changes) -> TrainConfig:
    """A small CPU run of speednet on :func:`data`: 100 training images, batches of 25, width 8."""
    values = dict(architecture="speednet", width=8, val_size=100, epochs=2, batch_size=25, eval_batch_size=50,
                  evaluate_test=False, device="cpu", out_folder=str(out), num_threads=1)
    values.update(changes)
    return TrainConfig.from_dict(values)


# ---------------------------------------------------------------------------------------- label smoothing
def test_label_smoothing_is_the_smoothed_target_cross_entropy():
    """(1 - eps) CE + eps mean_c(-log p_c), by hand on one sample, and equal to torch's own."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    log_p = torch.log_softmax(logits, dim=1)[0]
    by_hand = -(0.9 * log_p[0] + 0.1 * log_p.mean())  # target (1 - 0.1) onehot + 0.1 / 3
    loss = build_loss("cross-entropy", None, label_smoothing=0.1)
    assert float(loss(logits, target)) == pytest.approx(float(by_hand), abs=1e-6)
    g = torch.Generator().manual_seed(0)
    many, labels = torch.randn(16, 100, generator=g), torch.randint(0, 100, (16,), generator=g)
    smoothed = build_loss("cross-entropy", None, label_smoothing=0.2)(many, labels)
    reference = F.cross_entropy(many, labels, label_smoothing=0.2)
    assert float(smoothed) == pytest.approx(float(reference), abs=1e-6)
    plain = build_loss("cross-entropy", None)(many, labels)
    assert torch.equal(plain, build_loss("cross-entropy", None, label_smoothing=0.0)(many, labels))


def test_label_smoothing_is_a_cross_entropy_parameter_only(tmp_path):
    with pytest.raises(ConfigError, match=r"label_smoothing=0.1 is set, but loss 'soft-labels' does not"):
        tiny(tmp_path, loss="soft-labels", label_smoothing=0.1).validate()
    with pytest.raises(ConfigError, match=r"label_smoothing=1.0 is out of range; valid range \[0.0, 1.0\)"):
        tiny(tmp_path, label_smoothing=1.0).validate()


# ---------------------------------------------------------------------------------------- weight average
def test_weight_average_equals_the_hand_computed_average():
    """Three updates of a 1-weight model: avg = d_t avg + (1 - d_t) w with d_t = min(0.9, (1+t)/(10+t))."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = WeightAverage(model, 0.9)
    expected = 1.0
    for t, w in enumerate([2.0, 4.0, 8.0]):
        with torch.no_grad():
            model.weight.fill_(w)
        average.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * w
    assert [ema_decay_at(0.9, t) for t in (0, 1, 2, 100)] == [0.1, 2 / 11, 3 / 12, 0.9]
    assert float(average.module.weight) == pytest.approx(expected, rel=1e-6)
    # by hand: 0.1 * 1 + 0.9 * 2 = 1.9; (2/11) 1.9 + (9/11) 4 = 3.618..; 0.25 * 3.618.. + 0.75 * 8 = 6.9045..
    assert expected == pytest.approx(0.25 * (2 / 11 * 1.9 + 9 / 11 * 4) + 0.75 * 8, rel=1e-12)
    state = average.state_dict()
    other = WeightAverage(model, 0.9)
    other.load_state_dict(state)
    assert other.step == 3 and torch.equal(other.module.weight, average.module.weight)
    with pytest.raises(ValueError, match=r"ema_decay=1.0 is out of range"):
        WeightAverage(model, 1.0)


def test_weight_average_counts_batchnorm_statistics_and_copies_integers():
    model = nn.BatchNorm1d(2)
    average = WeightAverage(model, 0.5)
    model.train()
    model(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))  # running_mean 0 -> 0.1 * mean = [0.2, 0.4]
    average.update(model)  # d = min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * [0.2, 0.4]
    assert average.module.running_mean.tolist() == pytest.approx([0.18, 0.36])
    assert int(average.module.num_batches_tracked) == 1


def test_a_run_with_ema_evaluates_and_saves_the_average(data, tmp_path):
    """The validation metrics are the average's, best.pth and final_model.pth hold it, last.pth both."""
    config = tiny(tmp_path / "ema", ema_decay=0.8, epochs=1)
    result = fit(config, data=data)
    run = build_run(config, data)
    final = torch.load(tmp_path / "ema" / "final_model.pth", weights_only=True)
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.pth", weights_only=True)
    assert last["ema"]["step"] == 4  # 100 images in batches of 25
    assert all(torch.equal(final[k], last["ema"]["weights"][k]) for k in final)
    assert not all(torch.equal(final[k], last["model"][k]) for k in final)
    run.model.load_state_dict(final)
    again = evaluate(run.model, run.val_loader, run.hierarchy, run.criterion)
    assert again["top1_error"] == result["history"][-1]["val_top1_error"]
    assert again["loss"] == pytest.approx(result["history"][-1]["val_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------- flips
def _flipped(loader: DeviceLoader, epoch: int, originals: torch.Tensor) -> torch.Tensor:
    """bool [N] by image index: whether epoch ``epoch`` showed image i mirrored (no crop, so exactly)."""
    shown = torch.zeros(originals.shape[0], dtype=torch.bool)
    order = []
    for images, _ in loader.epoch(epoch):
        raw = (images * loader._std + loader._mean).round().to(torch.uint8)
        for img in raw:
            same = (originals == img).flatten(1).all(1)
            mirrored = (originals.flip(3) == img).flatten(1).all(1)
            i = int(torch.nonzero(same | mirrored)[0])
            shown[i] = bool(mirrored[i]) and not bool(same[i])
            order.append(i)
    assert sorted(order) == list(range(originals.shape[0]))
    return shown


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(40)
    loader = DeviceLoader(images, labels, batch_size=16, train=True, seed=3, crop_padding=0, flip="alternate")
    epochs = [_flipped(loader, k, images) for k in range(4)]
    assert torch.equal(epochs[0], loader.first_flips())
    assert torch.equal(epochs[1], ~epochs[0]) and torch.equal(epochs[2], epochs[0])
    assert torch.equal(epochs[3], ~epochs[0])
    assert 10 < int(epochs[0].sum()) < 30  # a fair coin per image
    random = DeviceLoader(images, labels, batch_size=16, train=True, seed=3, crop_padding=0, flip="random")
    r = [_flipped(random, k, images) for k in range(4)]
    assert not all(torch.equal(r[k + 1], ~r[k]) for k in range(3))  # random: no alternation
    none = DeviceLoader(images, labels, batch_size=16, train=True, seed=3, crop_padding=0, flip="none")
    assert not _flipped(none, 0, images).any()
    # the same order and crops as flip=random (only the flips differ), so resume positions are alike
    a = [y for _, y in loader.epoch(2)]
    b = [y for _, y in random.epoch(2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match=r"flip='sometimes' is unknown; valid: random, alternate, none"):
        DeviceLoader(images, labels, batch_size=16, train=True, flip="sometimes")


def test_crop_padding_bounds_the_shift():
    """With crop_padding 2 a bright image shows at most 2 black (padded) rows and columns on a side, and
    over a few epochs both shifts occur; with 0 there is no crop at all."""
    images = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    widest = 0
    for padding in (2, 0):
        loader = DeviceLoader(images, torch.arange(64), batch_size=64, train=True, crop_padding=padding,
                              flip="none")
        for epoch in range(3):
            x, _ = next(iter(loader.epoch(epoch)))
            black = (x * loader._std + loader._mean).round()[:, 0] == 0  # [B, 8, 8] padded pixels
            rows = black.all(dim=2).sum(dim=1)  # black rows of each image
            cols = black.all(dim=1).sum(dim=1)
            assert int(rows.max()) <= padding and int(cols.max()) <= padding
            widest = max(widest, int(rows.max()), int(cols.max()))
            if padding == 0:
                assert not black.any()
    assert widest == 2


# ---------------------------------------------------------------------------------------- flip TTA
def test_flip_tta_scores_the_mean_of_both_views(data, tmp_path):
    run = build_run(tiny(tmp_path, flip_tta=True, loss="soft-labels"), data)
    plain = evaluate(run.model, run.val_loader, run.hierarchy, run.criterion)
    tta = evaluate(run.model, run.val_loader, run.hierarchy, run.criterion, tta=True)
    run.model.eval()
    with torch.no_grad():
        images = torch.cat([x for x, _ in run.val_loader])
        labels = torch.cat([y for _, y in run.val_loader])
        mean = (run.model(images) + run.model(images.flip(3))) / 2
    top1 = (mean.argmax(1) != labels).float().mean()
    assert tta["top1_error"] == pytest.approx(float(top1))
    assert tta["loss"] == pytest.approx(float(run.criterion(mean, labels)), rel=1e-5)
    assert tta["loss"] != plain["loss"]
    assert run.evaluate(run.val_loader)["loss"] == pytest.approx(tta["loss"], rel=1e-9)  # flip_tta is on


# ---------------------------------------------------------------------------------------- whitening
def test_patch_whitening_decorrelates_patches():
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.3, 0.0, 1.0]])
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 12, 12, generator=g))
    filters = patch_whitening(images, 2, 12, eps=0.0)
    assert filters.shape == (24, 3, 2, 2) and torch.equal(filters[12:], -filters[:12])
    out = F.conv2d(images.double(), filters[:12].double()).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(out.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match=r"pairs=13 is out of range; valid: 1..12"):
        patch_whitening(images, 2, 13)


@pytest.mark.parametrize("architecture", ["speednet", "plainnet"])
def test_whiten_init_sets_and_freezes_the_first_convolution(data, tmp_path, architecture):
    config = tiny(tmp_path, architecture=architecture, whiten_init=True,
                  **({"width": 8} if architecture == "speednet" else {"width": None}))
    run = build_run(config, data)
    conv = first_conv(run.model)
    sample = run.train_loader.normalise(run.train_loader.images[:5000])
    k = conv.kernel_size[0]
    expected = patch_whitening(sample, k, min(conv.out_channels // 2, 3 * k * k))
    assert torch.allclose(conv.weight[: expected.shape[0]], expected)
    assert not conv.weight.requires_grad
    before, bias = conv.weight.clone(), None if conv.bias is None else conv.bias.clone()
    run.freeze_backbone(True)
    run.freeze_backbone(False)  # train_backbone_after never unfreezes it
    for images, labels in itertools.islice(run.train_loader.epoch(0), 2):
        run.train_step(images, labels)
    assert torch.equal(conv.weight, before)
    if bias is not None:
        assert not torch.equal(conv.bias, bias)  # its bias trains


def test_whitening_a_first_convolution_with_few_filters_uses_the_leading_directions():
    model = build_model("wrn28-10")
    g = torch.Generator().manual_seed(0)
    conv = whiten_first_conv(model, torch.randn(16, 3, 8, 8, generator=g))
    assert conv.out_channels == 16 and torch.equal(conv.weight[8:], -conv.weight[:8])


# ---------------------------------------------------------------------------------------- recipes, keys
def test_the_speedrun_recipe_by_name_and_its_errors(tmp_path):
    assert "speedrun" in shipped_recipes()
    config = load_config("speedrun", {"epochs": 2})
    config.validate()
    assert (config.architecture, config.model_params, config.loss_params["label_smoothing"]) == (
        "speednet", {"width": 64, "depth": 2}, 0.2)
    assert (config.flip, config.whiten_init, config.flip_tta, config.epochs) == ("alternate", True, True, 2)
    with pytest.raises(ConfigError, match=r"config file 'speedrunn' does not exist \(and is not a shipped "
                                          r"recipe: speedrun\)"):
        load_config("speedrunn")
    bad = tmp_path / "bad.yaml"
    bad.write_text("architecture: speednet\nwidht: 32\n")
    with pytest.raises(ConfigError, match=r"unknown key 'widht'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"width=32 is set, but architecture 'plainnet' does not take it"):
        load_config("speedrun", {"architecture": "plainnet", "width": 32, "depth": None}).validate()


def test_cli_refuses_an_option_that_does_not_apply_in_one_line(tmp_path, capsys):
    done = run_main(["--config", "speedrun", "--loss", "hierarchical-cross-entropy", "--out_folder",
                     str(tmp_path / "x"), "--check"], capsys=capsys)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "label_smoothing=0.2 is set, but loss 'hierarchical-cross-entropy'" in lines[0]
    assert not (tmp_path / "x").exists()
    done = run_main(["--config", "nosuchrecipe", "--check"], capsys=capsys)
    assert done.returncode == 2 and "is not a shipped recipe: speedrun" in done.stderr
    done = run_main(["--architecture", "plainnet", "--depth", "3", "--check"], capsys=capsys)
    assert done.returncode == 2
    assert "depth=3 is set, but architecture 'plainnet' does not take it" in done.stderr
    done = run_main(["--flip", "sideways", "--check"], capsys=capsys)
    assert done.returncode == 2
    assert "flip='sideways' is out of range; valid: random, alternate, none" in done.stderr


def test_a_config_yaml_written_before_the_options_reads_with_their_defaults():
    saved = TrainConfig().to_dict()
    for key in ("crop_padding", "flip", "ema_decay", "whiten_init", "flip_tta"):
        saved.pop(key)
    filled = TrainConfig.from_dict(fill_added_keys(saved))
    assert (filled.crop_padding, filled.flip, filled.ema_decay, filled.whiten_init, filled.flip_tta) == (
        4, "random", 0.0, False, False)


# ---------------------------------------------------------------------------------------- exact resume
def test_speednet_with_every_option_resumes_exactly(data, tmp_path, monkeypatch):
    """Interrupted during epoch 2 and resumed: the same records and the same saved weights (raw and
    averaged) as the uninterrupted run, with EMA, whitening, the alternating flip, TTA, label smoothing."""
    options = dict(ema_decay=0.7, whiten_init=True, flip="alternate", flip_tta=True, label_smoothing=0.2,
                   crop_padding=2, lr_schedule="onecycle", epochs=3)
    whole = fit(tiny(tmp_path / "a", **options), data=data)
    config = tiny(tmp_path / "b", **options)
    original = engine.Run.train_epoch

    def interrupted(run, epoch, progress):
        if epoch == 1:
            batches = run.train_loader.epoch(epoch)
            for images, labels in itertools.islice(batches, 2):
                run.train_step(images, labels)
            raise KeyboardInterrupt
        return original(run, epoch, progress)

    monkeypatch.setattr(engine.Run, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config, data=data)
    monkeypatch.setattr(engine.Run, "train_epoch", original)
    assert len(json.loads((tmp_path / "b" / "all_epoch_results.json").read_text())) == 1
    resumed = fit(config, resume=True, data=data)
    assert without_timing(resumed["history"]) == without_timing(whole["history"])
    assert all(math.isfinite(r["val_loss"]) for r in whole["history"])
    for name in ("final_model.pth", "checkpoints/last.pth"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / name, weights_only=True)
        if "model" in a:
            assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
            a, b = a["ema"]["weights"], b["ema"]["weights"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_cli_scores_the_average_and_uses_tta(data, tmp_path, monkeypatch):
    """hiercls.evaluate of a last.pth scores the weight average with flip TTA, as the run validated."""
    from hiercls.evaluate import evaluate_saved

    config = tiny(tmp_path / "r", ema_decay=0.8, flip_tta=True, epochs=1)
    result = fit(config, data=data)
    monkeypatch.setattr(engine, "_load_data", lambda _config: data)
    monkeypatch.setattr(engine, "_data_dir", lambda config, fetch=True: "synthetic")
    for target in (tmp_path / "r", tmp_path / "r" / "checkpoints" / "last.pth"):
        scored = evaluate_saved(target, split="val")
        assert scored["top1_error"] == result["history"][-1]["val_top1_error"]
        assert scored["loss"] == pytest.approx(result["history"][-1]["val_loss"], rel=1e-6)


@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_family_trains_on_speednet(data, tmp_path, loss):
    """speednet's output size follows every loss (class logits, an embedding, YOLO-v2's nodes) and a
    step with the recipe's options is finite."""
    hierarchy = load_cifar100_hierarchy("cifar100-l5")
    config = load_config("speedrun", {"width": 8, "val_size": 100, "batch_size": 25, "eval_batch_size": 50,
                                      "device": "cpu", "evaluate_test": False, "loss": loss,
                                      "label_smoothing": 0.1 if loss == "cross-entropy" else None})
    run = build_run(config, data)
    assert run.model.classifier.out_features == int(getattr(run.criterion, "num_outputs", None)
                                                    or hierarchy.num_classes)
    images, labels = next(iter(run.train_loader.epoch(0)))
    assert torch.isfinite(run.train_step(images, labels))
    assert math.isfinite(run.evaluate(run.val_loader)["top1_error"])


@pytest.mark.parametrize("architecture", MODELS.names())
def test_every_model_takes_the_accelerated_path_options_on_the_cpu(data, tmp_path, architecture):
    """bf16 autocast and channels_last (what CUDA runs by default) with the recipe's general options on
    every registered model: weights in NHWC, a finite step, fp32 evaluation outputs."""
    config = tiny(tmp_path, architecture=architecture, amp="true", channels_last="true", batch_size=2,
                  whiten_init=True, ema_decay=0.9, flip="alternate", flip_tta=True,
                  width=8 if architecture == "speednet" else None)
    run = build_run(config, data)
    assert run.amp and first_conv(run.model).weight.is_contiguous(memory_format=torch.channels_last)
    images, labels = next(iter(run.train_loader.epoch(1)))
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(run.train_step(images, labels))
    assert run.ema.step == 1
    with torch.no_grad():
        assert run.eval_net(images).dtype == torch.float32
