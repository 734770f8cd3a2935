"""Tests of hiercls.models: registry, output shapes, parameter counts, and (for every registered model)
forward, backward and a float64 finite-difference check of the gradient."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from hiercls.models import MODELS, PlainNet11, ResNetCifar, build_model, count_parameters

# Counts with 100 classes. ResNet-18 (CIFAR variant): 11,220,132 (the usual "11.2M");
# WRN-28-10: 36.5M in Zagoruyko & Komodakis (2016, Table 1); Plain-11: computed from its layout.
# speednet (width 64, depth 2): computed from its layout by speednet_params.
EXPECTED_PARAMS = {"plainnet": 3_381_796, "resnet18": 11_220_132, "wrn28-10": 36_500_000,
                   "speednet": 1_184_312}

# Every test below that runs a model loops over the registry, so a newly registered model is tested
# without editing this file (test_registry_names, which pins the list, reminds whoever adds one).
REGISTERED = MODELS.names()


def plain11_params(num_classes: int = 100) -> int:
    """Plain-11 parameters by hand: conv weights + biases, BN (2 per channel), fc512, output layer."""
    channels = [3, 64, 64, 128, 128, 128, 256, 256, 256, 512]
    total = sum(9 * c_in * c_out + c_out + 2 * c_out for c_in, c_out in zip(channels, channels[1:]))
    total += 512 * 512 + 512 + 2 * 512  # fc512 + BN1d
    return total + 512 * num_classes + num_classes


def speednet_params(width: int = 64, depth: int = 2, num_classes: int = 100) -> int:
    """speednet parameters by hand: the 2x2 stem (24 filters with bias), three groups of ``depth`` 3x3
    convolutions without bias plus BatchNorm (2 per channel), the linear head without bias."""
    total, c_in = 3 * 24 * 4 + 24, 24
    for c in (width, 2 * width, 4 * width):
        total += 9 * c_in * c + 2 * c + (depth - 1) * (9 * c * c + 2 * c)
        c_in = c
    return total + c_in * num_classes


@functools.cache
def built(name: str, num_classes: int = 100) -> torch.nn.Module:
    """Model ``name`` built once per module, always with seed 0's weights (whatever ran before), and never
    run: tests count or inspect it, or run a :func:`fresh` copy (a copy is much cheaper than a build,
    whose random initialisation of WRN-28-10's 36.5M weights takes about a second on 2 cores)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model(name, num_classes=num_classes)


def fresh(name: str) -> torch.nn.Module:
    """A copy of :func:`built` ``(name)`` that a test may run, train or convert."""
    return copy.deepcopy(built(name))


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    built.cache_clear()


def test_registry_names():
    assert MODELS.names() == ["plainnet", "resnet18", "speednet", "wrn28-10"]
    assert "ResNet18" in MODELS


# ---------------------------------------------------------------------------- every registered model
@pytest.mark.parametrize("name", REGISTERED)
def test_forward_backward_and_gradients(name):
    """float32 [2, 3, 32, 32] -> float32 logits [2, 100], finite in train and eval mode and not constant;
    a cross-entropy backward gives every trainable parameter a finite gradient, not all of them zero."""
    torch.manual_seed(0)
    model = fresh(name)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 100) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for param_name, p in trainable:
        assert p.grad is not None, f"{param_name} got no gradient"
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), param_name
    assert any(bool((p.grad != 0).any()) for _, p in trainable), "every gradient is zero"
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 100) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.std() > 0  # not a constant output


# The float64 check of the gradient: the model in eval mode (batch norm an affine map of its running
# statistics, so the loss is a fixed function of the weights whatever the batch) on a tiny input, 2
# images of 16x16 (every registered model pools globally; a model that needs 32x32 can get its own size
# here). One random direction d over all trainable parameters, each tensor's block scaled to unit norm
# so that a small tensor (a batch-norm bias) weighs as much as a big convolution; the central difference
# (L(w + h d) - L(w - h d)) / 2h is compared with the analytic directional derivative <grad L, d>.
#
# Where L is smooth along the step, the difference is off by its truncation error h^2 |L'''| / 6
# (covered by FD_RTOL) and its rounding error, about eps |L| / h (eps = 2.2e-16) times the error growth
# through the network: the allowed absolute error is 100 eps |L| / h, about 1e-7, 1e-6 and 1e-5 for the
# three steps (|L| ~ 5). Measured over 38 random directions (16 of Plain-11, 16 of ResNet-18, 6 of
# WRN-28-10), the errors without a kink were at most 1.4e-9, 2.6e-8 and 1.7e-7: 40x to 80x below.
# But L is only piecewise smooth (ReLU): the step crossed a unit's kink in 7 of the 38 directions at
# h = 1e-6 (errors 3e-7..2e-3), in 2 at h = 1e-7 and in none at h = 1e-8. A kink is crossed only by the
# steps long enough to reach it, whereas a wrong analytic gradient is off at every step: so the check
# passes when the difference at any of FD_STEPS agrees. A wrong gradient is found: the gradient of one
# tensor scaled by 1.5 or negated (tried on a bias or batch-norm weight of each model) moved <grad L, d>
# by 1.5e-3..7e-2, more than 100x the largest tolerance.
FD_INPUT = (2, 3, 16, 16)
# speednet at initialisation barely moves the loss in eval mode (its logits are scaled by 1/9 and its
# fresh running statistics leave the activations small: <grad L, d> = 2e-4, below the 1e-2 a measurable
# direction needs at h = 1e-8), so it is checked in training mode on 32x32 images: BatchNorm then uses the
# batch's statistics, still a fixed smooth function of the weights for a fixed batch (<grad L, d> = 0.088).
FD_TRAINING_MODE = {"speednet": (2, 3, 32, 32)}
FD_STEPS = (1e-6, 1e-7, 1e-8)
FD_RTOL = 1e-6
FD_ROUNDING = 100 * torch.finfo(torch.float64).eps


@pytest.mark.parametrize("name", REGISTERED)
def test_gradient_matches_finite_difference_in_float64(name):
    model = fresh(name).double().train(name in FD_TRAINING_MODE)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(FD_TRAINING_MODE.get(name, FD_INPUT), generator=gen, dtype=torch.float64)
    y = torch.tensor([3, 97])
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    direction = {}
    for n, p in params.items():
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        direction[n] = d / d.norm()

    def loss(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, values, (x,)), y)

    value = loss(params)
    assert value.dtype == torch.float64 and torch.isfinite(value)
    grads = torch.autograd.grad(value, list(params.values()))
    analytic = sum(float((g * direction[n]).sum()) for n, g in zip(params, grads))
    size = abs(float(value.detach()))
    # a direction the loss measurably changes along: 100x the tolerance at the smallest step
    assert abs(analytic) > 100 * FD_ROUNDING * size / FD_STEPS[-1], analytic
    tried = {}
    with torch.no_grad():
        for h in FD_STEPS:
            plus = loss({n: p + h * direction[n] for n, p in params.items()})
            minus = loss({n: p - h * direction[n] for n, p in params.items()})
            tried[h] = float((plus - minus) / (2 * h))
            if tried[h] == pytest.approx(analytic, rel=FD_RTOL, abs=FD_ROUNDING * size / h):
                break
        else:
            pytest.fail(f"{name}: <grad L, d> = {analytic!r} but the central differences are {tried}")


# ---------------------------------------------------------------------------- counts and structure
@pytest.mark.parametrize("name", REGISTERED)
def test_parameter_counts(name):
    n = count_parameters(built(name))
    assert abs(n - EXPECTED_PARAMS[name]) / EXPECTED_PARAMS[name] < 0.01, n


def test_exact_counts():
    assert count_parameters(built("plainnet")) == plain11_params(100)
    assert count_parameters(built("resnet18")) == 11_220_132
    assert count_parameters(built("plainnet", num_classes=10)) == plain11_params(10)
    assert count_parameters(built("speednet")) == speednet_params()
    small = build_model("speednet", num_classes=10, width=8, depth=3)
    assert count_parameters(small) == speednet_params(8, 3, 10)


def test_model_parameters_are_checked_against_their_declaration():
    """A model's declared parameters change it; one it does not declare, or out of range, is refused."""
    assert build_model("speednet", width=8).classifier.in_features == 32
    with pytest.raises(ValueError, match=r"unknown parameter 'width' for model 'plainnet'; valid: none"):
        build_model("plainnet", width=8)
    with pytest.raises(ValueError, match=r"depth=0 is out of range; valid range \[1, inf\)"):
        build_model("speednet", depth=0)


def test_alias_and_num_classes():
    model = build_model("ResNet18", num_classes=10)
    assert isinstance(model, ResNetCifar)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) == count_parameters(built("resnet18", num_classes=10))
    assert isinstance(built("plainnet"), PlainNet11)


def test_unknown_name_lists_registry():
    with pytest.raises(ValueError) as info:
        build_model("resnet1000")
    msg = str(info.value)
    assert "resnet1000" in msg and "plainnet" in msg and "resnet18" in msg and "wrn28-10" in msg


def test_resnet18_cifar_stem_keeps_resolution():
    model = fresh("resnet18")
    feats = model.stem(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 64, 32, 32)  # 3x3 stride-1 stem, no max-pool
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_wrn_widths():
    model = built("wrn28-10")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 25  # stem + 3 groups x 4 blocks x 2 convs (+ 3 1x1 shortcuts, not counted)
    assert sorted({c.out_channels for c in convs}) == [16, 160, 320, 640]
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_plainnet_backward():
    model = fresh("plainnet")
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
