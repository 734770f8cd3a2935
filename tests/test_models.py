"""Tests of hiercls.models: registry, output shapes and parameter counts."""

from __future__ import annotations

import pytest
import torch

from hiercls.models import MODELS, PlainNet11, ResNetCifar, build_model, count_parameters

# Counts with 100 classes. ResNet-18 (CIFAR variant): 11,220,132 (the usual "11.2M");
# WRN-28-10: 36.5M in Zagoruyko & Komodakis (2016, Table 1); Plain-11: computed from its layout.
EXPECTED_PARAMS = {"plainnet": 3_381_796, "resnet18": 11_220_132, "wrn28-10": 36_500_000}


def plain11_params(num_classes: int = 100) -> int:
    """Plain-11 parameters by hand: conv weights + biases, BN (2 per channel), fc512, output layer."""
    channels = [3, 64, 64, 128, 128, 128, 256, 256, 256, 512]
    total = sum(9 * c_in * c_out + c_out + 2 * c_out for c_in, c_out in zip(channels, channels[1:]))
    total += 512 * 512 + 512 + 2 * 512  # fc512 + BN1d
    return total + 512 * num_classes + num_classes


def test_registry_names():
    assert MODELS.names() == ["plainnet", "resnet18", "wrn28-10"]
    assert "ResNet18" in MODELS


@pytest.mark.parametrize("name", ["plainnet", "resnet18", "wrn28-10"])
def test_forward_gives_finite_logits(name):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 100) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    assert out.std() > 0  # not a constant output


@pytest.mark.parametrize("name", ["plainnet", "resnet18", "wrn28-10"])
def test_parameter_counts(name):
    n = count_parameters(build_model(name))
    assert abs(n - EXPECTED_PARAMS[name]) / EXPECTED_PARAMS[name] < 0.01, n


def test_exact_counts():
    assert count_parameters(build_model("plainnet")) == plain11_params(100)
    assert count_parameters(build_model("resnet18")) == 11_220_132
    assert count_parameters(build_model("plainnet", num_classes=10)) == plain11_params(10)


def test_alias_and_num_classes():
    model = build_model("ResNet18", num_classes=10)
    assert isinstance(model, ResNetCifar)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) == count_parameters(build_model("resnet18", num_classes=10))
    assert isinstance(build_model("plainnet"), PlainNet11)


def test_unknown_name_lists_registry():
    with pytest.raises(ValueError) as info:
        build_model("resnet1000")
    msg = str(info.value)
    assert "resnet1000" in msg and "plainnet" in msg and "resnet18" in msg and "wrn28-10" in msg


def test_resnet18_cifar_stem_keeps_resolution():
    model = build_model("resnet18")
    feats = model.stem(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 64, 32, 32)  # 3x3 stride-1 stem, no max-pool
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_wrn_widths():
    model = build_model("wrn28-10")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 25  # stem + 3 groups x 4 blocks x 2 convs (+ 3 1x1 shortcuts, not counted)
    assert sorted({c.out_channels for c in convs}) == [16, 160, 320, 640]
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_plainnet_backward():
    model = build_model("plainnet")
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
