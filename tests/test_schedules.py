"""Tests for hiercls.schedules: exact values, torch references, resume reproducibility, CLI, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from hiercls.schedules import SCHEDULES, STEP_KEY, build_schedule, learning_rate
from hiercls.schedules.plot import main

# a configuration per registered schedule, short enough to cover restarts / milestones / cycles
CONFIGS = {
    "constant": {},
    "cosine": {"t0": 1, "t_mult": 2, "eta_min": 1e-4},
    "cyclic": {"min_lr": 1e-3, "step_size": 1.5},
    "cutout": {"milestones": [2, 4, 5]},
    "onecycle": {"warmup_fraction": 0.25},
}


def _optimizer(lr: float = 0.123) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=lr, momentum=0.9)


def test_every_schedule_has_a_config():
    assert set(CONFIGS) == set(SCHEDULES.names())


def test_cosine_values():
    expected = [0.5, 0.5, 0.25, 0.5, 0.426777, 0.25, 0.073223, 0.5, 0.480970]
    got = [learning_rate("cosine", e, base_lr=0.5, epochs=8, t0=1, t_mult=2, eta_min=0) for e in range(9)]
    assert got == pytest.approx(expected, abs=1e-6)


def test_cosine_matches_torch_warm_restarts():
    opt = _optimizer(0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=1e-3)
    spe = 7
    for k in range(30 * spe):
        e = k / spe
        ours = learning_rate("cosine", e, base_lr=0.1, epochs=30, t0=3, t_mult=2, eta_min=1e-3)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), k
        ref.step((k + 1) / spe)


def test_cosine_t_mult_one_and_defaults():
    lr = [learning_rate("cosine", e, base_lr=1.0, epochs=10, t0=2, t_mult=1, eta_min=0) for e in (0, 1, 2, 3)]
    assert lr == pytest.approx([1.0, 0.5, 1.0, 0.5], abs=1e-12)
    # original defaults: t0=12, t_mult=2, eta_min=1e-6 -> restart at 12 and 36
    assert learning_rate("cosine", 12, base_lr=0.1, epochs=200) == pytest.approx(0.1)
    assert learning_rate("cosine", 36, base_lr=0.1, epochs=200) == pytest.approx(0.1)
    assert learning_rate("cosine", 35.999999, base_lr=0.1, epochs=200) == pytest.approx(1e-6, abs=1e-9)


@pytest.mark.parametrize("spe", [1, 4, 13])
def test_cyclic_matches_torch_cycliclr(spe):
    base_lr, min_lr, step_size = 0.2, 1e-3, 2
    opt = _optimizer(base_lr)
    ref = torch.optim.lr_scheduler.CyclicLR(
        opt,
        base_lr=min_lr,
        max_lr=base_lr,
        step_size_up=step_size * spe,
        mode="triangular2",
        cycle_momentum=False,
    )
    for k in range(5 * 2 * step_size * spe + 3):
        ours = learning_rate(
            "cyclic", k / spe, base_lr=base_lr, epochs=100, min_lr=min_lr, step_size=step_size
        )
        assert ours == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12, rel=1e-12), k
        opt.step()
        ref.step()


def test_cyclic_shape():
    f = lambda e: learning_rate("cyclic", e, base_lr=1.0, epochs=50, min_lr=0.0, step_size=10)  # noqa: E731
    assert f(0) == 0.0
    assert f(10) == 1.0
    assert f(20) == 0.0
    assert f(30) == 0.5
    assert f(50) == 0.25
    # default lower bound is the original project's 1e-6
    assert learning_rate("cyclic", 0, base_lr=0.1, epochs=50) == pytest.approx(1e-6)


def test_cutout_original_milestones():
    kw = dict(base_lr=0.1, epochs=200, milestones=[60, 120, 160], gamma=0.2)
    for e, n in [
        (0, 0),
        (59.99, 0),
        (60, 1),
        (60.5, 1),
        (119.9, 1),
        (120, 2),
        (159.99, 2),
        (160, 3),
        (199.9, 3),
    ]:
        assert learning_rate("cutout", e, **kw) == pytest.approx(0.1 * 0.2**n, rel=1e-12), e
    # defaults (fractions 0.3/0.6/0.8, gamma 0.2) reproduce the original 200-epoch schedule exactly
    for e in [0, 59, 60, 119, 120, 159, 160, 199.5]:
        assert learning_rate("cutout", e, base_lr=0.1, epochs=200) == learning_rate("cutout", e, **kw)


def test_cutout_matches_torch_multisteplr():
    opt = _optimizer(0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120, 160], gamma=0.2)
    for epoch in range(200):
        ours = learning_rate("cutout", epoch + 0.5, base_lr=0.1, epochs=200, milestones=[60, 120, 160])
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        opt.step()
        ref.step()


def test_cutout_fractions_scale_with_run_length():
    kw = dict(base_lr=1.0, epochs=50, milestone_fractions=[0.5, 0.9], gamma=0.5)
    # milestones round(25) = 25, round(45) = 45
    assert learning_rate("cutout", 24.99, **kw) == 1.0
    assert learning_rate("cutout", 25, **kw) == 0.5
    assert learning_rate("cutout", 44.9, **kw) == 0.5
    assert learning_rate("cutout", 45, **kw) == 0.25
    # default fractions on a 30-epoch run: 9, 18, 24
    vals = [learning_rate("cutout", e, base_lr=1.0, epochs=30) for e in (8.9, 9, 17.9, 18, 23.9, 24)]
    assert vals == pytest.approx([1, 0.2, 0.2, 0.04, 0.04, 0.008], rel=1e-12)


def test_onecycle_endpoints():
    kw = dict(base_lr=0.4, epochs=20, warmup_fraction=0.2)
    assert learning_rate("onecycle", 0, **kw) == 0.0
    assert learning_rate("onecycle", 2, **kw) == pytest.approx(0.2)
    assert learning_rate("onecycle", 4, **kw) == pytest.approx(0.4)
    assert learning_rate("onecycle", 12, **kw) == pytest.approx(0.2)
    assert learning_rate("onecycle", 20, **kw) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate("onecycle", 25, **kw) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate("onecycle", 0, base_lr=0.4, epochs=20, warmup_fraction=0) == pytest.approx(0.4)


def test_constant():
    assert learning_rate("constant", 17.3, base_lr=0.05, epochs=20) == 0.05


def test_schedule_object_positions():
    opt = _optimizer()
    sched = build_schedule("onecycle", opt, base_lr=1.0, epochs=2, steps_per_epoch=4, warmup_fraction=0.5)
    assert sched.epoch == 0 and sched.lr == 0.0
    assert all(g["lr"] == 0.0 for g in opt.param_groups)  # fresh optimiser: set for epoch 0
    for _ in range(3):
        sched.step()
    assert sched.epoch == 0.75
    assert sched.step_count == 3
    assert all(g["lr"] == pytest.approx(0.75) for g in opt.param_groups)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("k", [0, 1, 5, 17, 29])
def test_resume_reproduces_uninterrupted_sequence(name, k):
    spe, epochs, total = 6, 6, 6 * 6 + 5
    kw = dict(base_lr=0.3, epochs=epochs, steps_per_epoch=spe, **CONFIGS[name])

    opt = _optimizer()
    sched = build_schedule(name, opt, **kw)
    full = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        full.append(opt.param_groups[0]["lr"])

    opt1 = _optimizer()
    sched1 = build_schedule(name, opt1, **kw)
    for _ in range(k):
        opt1.step()
        sched1.step()
    state, opt_state = sched1.state_dict(), opt1.state_dict()

    # fresh optimiser and schedule; load_state_dict alone sets the restored learning rate
    opt2 = _optimizer(lr=99.0)
    sched2 = build_schedule(name, opt2, **kw)
    sched2.load_state_dict(state)
    assert sched2.step_count == k and sched2.epoch == k / spe
    assert all(g["lr"] == pytest.approx(full[k], abs=1e-12) for g in opt2.param_groups)
    resumed = [opt2.param_groups[0]["lr"]]
    for _ in range(total - k):
        opt2.step()
        sched2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == pytest.approx(full[k:], abs=1e-12)

    # optimiser state restored *before* building the schedule: construction must not reset the lr
    opt3 = _optimizer()
    opt3.load_state_dict(opt_state)
    sched3 = build_schedule(name, opt3, **kw)
    assert opt3.param_groups[0]["lr"] == pytest.approx(full[k], abs=1e-12)
    assert sched3.step_count == k
    sched3.load_state_dict(state)
    assert opt3.param_groups[0]["lr"] == pytest.approx(full[k], abs=1e-12)
    opt3.step()
    sched3.step()
    assert opt3.param_groups[0]["lr"] == pytest.approx(full[k + 1], abs=1e-12)


def test_state_dict_round_trips_through_json_and_torch(tmp_path):
    import json

    opt = _optimizer()
    sched = build_schedule("cutout", opt, base_lr=0.1, epochs=10, steps_per_epoch=3, milestones=(3, 6))
    for _ in range(10):
        sched.step()
    state = json.loads(json.dumps(sched.state_dict()))
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ck.pt")
    loaded = torch.load(tmp_path / "ck.pt")
    for st in (state, loaded["sched"]):
        opt2 = _optimizer()
        sched2 = build_schedule("cutout", opt2, base_lr=0.1, epochs=10, steps_per_epoch=3, milestones=(3, 6))
        sched2.load_state_dict(st)
        assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.2)
    assert STEP_KEY in loaded["opt"]["param_groups"][0]


def test_load_state_dict_rejects_mismatched_config():
    opt = _optimizer()
    state = build_schedule("cosine", opt, base_lr=0.1, epochs=10, steps_per_epoch=3).state_dict()
    other = build_schedule("cosine", _optimizer(), base_lr=0.1, epochs=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        other.load_state_dict(state)
    other = build_schedule("cosine", _optimizer(), base_lr=0.2, epochs=10, steps_per_epoch=3)
    with pytest.raises(ValueError, match="base_lr"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)
    assert other.step_count == 0
    with pytest.raises(ValueError, match="step"):
        other.load_state_dict({**state, "step": -1})


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("nope", {}, "valid: constant, cosine, cutout, cyclic, onecycle"),
        ("cosine", {"T_0": 3}, r"'T_0'.*valid parameters: eta_min, t0, t_mult"),
        ("constant", {"gamma": 0.1}, "valid parameters: none"),
        ("cosine", {"t0": 0}, r"t0=0 .*\(0.0, inf\)"),  # inf is refused: the range is open there
        ("cosine", {"t_mult": 0.5}, r"t_mult=0.5 .*\[1.0, inf\)"),
        ("cosine", {"eta_min": -1e-3}, "eta_min"),
        ("cyclic", {"step_size": -1}, "step_size"),
        ("cyclic", {"min_lr": 0.5}, r"min_lr=0.5 .*\[0.0, 0.1\]"),
        ("cutout", {"milestones": [60], "milestone_fractions": [0.5]}, "not both"),
        ("cutout", {"milestones": [60.5]}, "whole epoch"),
        ("cutout", {"milestone_fractions": [1.5]}, "milestone_fractions entry"),
        ("cutout", {"gamma": 0}, "gamma=0"),
        ("onecycle", {"warmup_fraction": 1.0}, "warmup_fraction"),
        ("constant", {"base_lr": -0.1}, "base_lr=-0.1"),
        ("constant", {"epochs": 0}, "epochs=0"),
        ("constant", {"epoch": -1}, "epoch=-1"),
        ("cosine", {"t0": "12"}, "not a number"),
    ],
)
def test_bad_params(name, kwargs, match):
    kw = {"base_lr": 0.1, "epochs": 10, "epoch": 1.0, **kwargs}
    epoch = kw.pop("epoch")
    with pytest.raises(ValueError, match=match):
        learning_rate(name, epoch, **kw)
    if "epoch" not in kwargs:
        with pytest.raises(ValueError, match=match):
            build_schedule(name, _optimizer(), steps_per_epoch=4, **kw)


def test_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_schedule("constant", _optimizer(), base_lr=0.1, epochs=3, steps_per_epoch=0)


def test_plot_cli_writes_png(tmp_path):
    import matplotlib.image

    out = tmp_path / "lr.png"
    assert (
        main(
            [
                "plot",
                "--schedule",
                "cutout",
                "--epochs",
                "20",
                "--base-lr",
                "0.1",
                "--out",
                str(out),
                "--set",
                "milestones=6,12,16",
                "--set",
                "gamma=0.2",
                "--steps-per-epoch",
                "5",
            ]
        )
        == 0
    )
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)


def test_plot_cli_as_module(tmp_path):
    # A subprocess on purpose: the ``python -m hiercls.schedules`` entry itself (the package's __main__.py
    # and its exit status); the test above runs the same CLI's main() in-process.
    out = tmp_path / "cos.png"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "hiercls.schedules",
            "plot",
            "--schedule",
            "cosine",
            "--epochs",
            "40",
            "--base-lr",
            "0.1",
            "--out",
            str(out),
            "--set",
            "t0=12",
            "--steps-per-epoch",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (400, 800)


def test_plot_cli_rejects_bad_param(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "plot",
                "--schedule",
                "cosine",
                "--epochs",
                "10",
                "--base-lr",
                "0.1",
                "--out",
                str(tmp_path / "x.png"),
                "--set",
                "warmup=3",
            ]
        )
    assert "warmup" in capsys.readouterr().err


def test_learning_rate_is_finite_everywhere():
    for name, cfg in CONFIGS.items():
        for k in range(0, 400):
            v = learning_rate(name, k / 10, base_lr=0.3, epochs=30, **cfg)
            assert math.isfinite(v) and v >= 0.0, (name, k)
