"""Value schedules (the engine side of population-based training): ``value_schedule`` in the config and on
the command line, the loss and learning rate changed in place at the start of an epoch, the values in
every epoch record, ``fit(continue_from=...)`` and :func:`value_schedule_from_history`.

The runs train plainnet on a small synthetic CIFAR-100 held in memory (random images, every class in
both sets: 100 training and 100 validation images, two steps of 50 per epoch), so they need no data
folder; bit-exact comparisons hold on the CPU."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from inprocess import run_main, synthetic_cifar, without_timing

from hiercls import engine
from hiercls.build import check_config
from hiercls.config import ConfigError, TrainConfig, fill_added_keys, load_config, read_saved_config
from hiercls.data import Cifar100, DeviceLoader
from hiercls.engine import CheckpointError, fit, load_checkpoint, value_schedule_from_history
from hiercls.evaluate import evaluate_saved
from hiercls.hierarchy import load_cifar100_hierarchy
from hiercls.losses import build_loss
from hiercls.registry import TRAINING_PARAMS, Param
from hiercls.schedules import LR_SCALE_KEY, build_schedule, learning_rate
from hiercls.train import build_parser, config_from_args
from hiercls.value_schedule import all_variable_keys, upgrade_record, value_schedule_problems, variable_keys


@pytest.fixture(scope="module")
def data() -> Cifar100:
    return synthetic_cifar()


def tiny(out: Path, **changes) -> TrainConfig:
    """A small CPU run on :func:`data`: 100 training images (val_size 100 of 200), batches of 50."""
    values = dict(val_size=100, epochs=3, batch_size=50, eval_batch_size=100, evaluate_test=False,
                  device="cpu", out_folder=str(out))
    values.update(changes)
    return TrainConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------- config
SCHEDULE_TEXT = "{1: {lambda_coarse: 0.0}, 3: {lambda_coarse: 1.0, lr: 0.05}}"
SCHEDULE = {1: {"lambda_coarse": 0.0}, 3: {"lambda_coarse": 1.0, "lr": 0.05}}


def test_command_line_yaml_and_config_yaml_round_trip(tmp_path) -> None:
    parse = build_parser().parse_args
    config = config_from_args(parse(["--loss", "simple-hierarchy", "--epochs", "4",
                                     "--value_schedule", SCHEDULE_TEXT]))
    assert config.value_schedule == SCHEDULE
    config.validate()
    # defaults < YAML < flags < --set, as for every key
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("loss: simple-hierarchy\nepochs: 4\nvalue_schedule:\n  2:\n    lr: 0.01\n")
    from_file = config_from_args(parse(["--config", str(yaml_file)]))
    assert from_file.value_schedule == {2: {"lr": 0.01}}
    flag = ["--config", str(yaml_file), "--value-schedule", "{4: {lr: 0.2}}"]
    assert config_from_args(parse(flag)).value_schedule == {4: {"lr": 0.2}}
    set_wins = config_from_args(parse([*flag, "--set", "value_schedule={1: {lambda_fine: 0.5}}"]))
    assert set_wins.value_schedule == {1: {"lambda_fine": 0.5}}
    # the written config.yaml: int epoch keys in YAML, read back equal; a JSON round trip (keys become
    # text) reads back equal too
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    assert "value_schedule:\n  1:\n    lambda_coarse: 0.0\n  3:\n" in config.to_yaml()
    assert yaml.safe_load(config.to_yaml())["value_schedule"] == SCHEDULE
    assert load_config(tmp_path / "config.yaml") == config
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # a YAML 1.1 exponent without a dot is read as text by YAML: still a number here
    assert TrainConfig.from_dict({"value_schedule": "{2: {lr: 1e-3}}"}).value_schedule == {2: {"lr": 0.001}}
    # no entry, or entries that set nothing, is no schedule
    assert TrainConfig.from_dict({"value_schedule": {}}).value_schedule is None
    assert TrainConfig.from_dict({"value_schedule": {3: {}}}).value_schedule is None
    # to_dict hands out a copy: changing it leaves the config alone
    config.to_dict()["value_schedule"][1]["lambda_coarse"] = 9.0
    assert config.value_schedule == SCHEDULE


def test_a_config_yaml_without_the_key_reads_with_no_schedule(tmp_path) -> None:
    values = TrainConfig.from_dict({"loss": "soft-labels", "beta": 5.0}).to_dict()
    del values["value_schedule"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    old = read_saved_config(tmp_path / "config.yaml")
    assert old.value_schedule is None and old.beta == 5.0
    # a file of hiercls 0.3 lacks the embedding keys too; a torn one (its end cut off) is left as it is
    older = {k: v for k, v in values.items() if k not in ("use_2fc", "lr_fc")}
    assert fill_added_keys(older)["value_schedule"] is None and fill_added_keys(older)["use_2fc"] is False
    torn = {k: v for k, v in values.items() if k not in ("value_schedule", "seed", "device")}
    assert "value_schedule" not in fill_added_keys(torn)


def test_values_at_is_piecewise_constant() -> None:
    schedule = {2: {"alpha": 0.5}, 4: {"lr": 0.01}, 5: {"alpha": 0.0}}
    config = TrainConfig.from_dict({"loss": "hierarchical-cross-entropy", "alpha": 0.2, "lr": 0.1,
                                    "epochs": 6, "value_schedule": schedule})
    assert [config.values_at(e) for e in range(1, 7)] == [
        {"lr": 0.1, "alpha": 0.2},  # before any entry: the config's own values
        {"lr": 0.1, "alpha": 0.5},
        {"lr": 0.1, "alpha": 0.5},  # the latest entry at or before the epoch that sets the key
        {"lr": 0.01, "alpha": 0.5},
        {"lr": 0.01, "alpha": 0.0},
        {"lr": 0.01, "alpha": 0.0},
    ]
    assert TrainConfig.from_dict({"loss": "simple-hierarchy"}).values_at(1) == {
        "lr": 0.05, "lambda_fine": 1.0, "lambda_coarse": 1.0}  # unset: the loss's defaults
    assert TrainConfig().values_at(3) == {"lr": 0.05}  # cross-entropy has no variable parameter
    with pytest.raises(ValueError, match="epoch=0 is out of range; valid: whole epochs from 1"):
        config.values_at(0)


FIRST = "(1-based: 1 is the first epoch)"


@pytest.mark.parametrize(
    ("loss", "schedule", "problem"),
    [
        ("soft-labels", {0: {"beta": 5.0}},
         f"value_schedule epoch 0 is out of range; valid: whole epochs 1..4 {FIRST}"),
        ("soft-labels", {5: {"beta": 5.0}},
         f"value_schedule epoch 5 is out of range; valid: whole epochs 1..4 {FIRST}"),
        ("soft-labels", {"two": {"beta": 5.0}},
         f"value_schedule key 'two' is not an epoch; valid: whole epochs from 1 {FIRST}"),
        ("soft-labels", {1.5: {"beta": 5.0}},
         f"value_schedule key 1.5 is not an epoch; valid: whole epochs from 1 {FIRST}"),
        ("soft-labels", {2: {"alpha": 0.4}},
         "value_schedule epoch 2: 'alpha' is not a value loss 'soft-labels' can change during training; "
         "valid: lr, beta"),
        ("simple-hierarchy", {2: {"coarse_loss_start_epoch": 1.0}},
         "value_schedule epoch 2: 'coarse_loss_start_epoch' is not a value loss 'simple-hierarchy' can "
         "change during training; valid: lr, lambda_fine, lambda_coarse"),
        ("cross-entropy", {2: {"alpha": 0.4}},
         "value_schedule epoch 2: 'alpha' is not a value loss 'cross-entropy' can change during training; "
         "valid: lr"),
        ("soft-labels", {2: {"beta": 0.0}},  # the declared range of beta: (0, inf)
         "value_schedule epoch 2: beta=0.0 is out of range; valid range (0.0, inf)"),
        ("hierarchical-cross-entropy", {2: {"alpha": -0.5}},
         "value_schedule epoch 2: alpha=-0.5 is out of range; valid range [0.0, inf)"),
        ("simple-hierarchy", {3: {"lambda_fine": -1}},
         "value_schedule epoch 3: lambda_fine=-1.0 is out of range; valid range [0.0, inf)"),
        ("soft-labels", {2: {"lr": 0}},
         "value_schedule epoch 2: lr=0.0 is out of range; valid: a positive number"),
        ("soft-labels", {2: {"lr": "fast"}}, "value_schedule epoch 2: lr='fast' is not a number"),
        ("soft-labels", {2: 0.1},
         "value_schedule epoch 2: 0.1 is not a mapping of keys to values; valid: e.g. {lr: 0.05}"),
        ("soft-labels", [0.1, 0.2],
         "value_schedule=[0.1, 0.2] is not a mapping of epochs to values; valid: e.g. "
         "{1: {lambda_coarse: 0.0}, 3: {lambda_coarse: 1.0, lr: 0.05}}"),
        ("soft-labels", {1: {"lr": 0.1}, "1": {"lr": 0.2}},
         "value_schedule sets epoch 1 twice (keys 1 and '1')"),
    ],
)
def test_a_bad_schedule_is_refused_with_one_line(loss, schedule, problem) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"loss": loss, "epochs": 4, "value_schedule": schedule}).validate()
    assert err.value.problems == [problem]
    assert str(err.value) == f"invalid config: {problem}"


def test_every_problem_is_listed_and_the_lr_schedule_checks_every_scheduled_rate() -> None:
    schedule = {0: {"beta": 5.0}, 2: {"beta": -1.0, "gamma": 1.0}}
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"loss": "soft-labels", "epochs": 4, "lr": -1.0,
                               "value_schedule": schedule}).validate()
    assert err.value.problems == [
        "lr=-1.0 is out of range; valid: a positive number",
        f"value_schedule epoch 0 is out of range; valid: whole epochs 1..4 {FIRST}",
        "value_schedule epoch 2: beta=-1.0 is out of range; valid range (0.0, inf)",
        "value_schedule epoch 2: 'gamma' is not a value loss 'soft-labels' can change during training; "
        "valid: lr, beta",
    ]
    assert str(err.value).count("\n  ") == 4
    cyclic = TrainConfig.from_dict({"lr_schedule": "cyclic", "min_lr": 0.01, "lr": 0.1, "epochs": 4,
                                    "value_schedule": {3: {"lr": 0.001}}})
    with pytest.raises(ConfigError) as err:
        check_config(cyclic)
    assert err.value.problems == [
        "value_schedule epoch 3: lr=0.001 with lr_schedule 'cyclic': min_lr=0.01 is out of range; "
        "valid range [0.0, 0.001] (at most base_lr)"]


def test_the_command_line_refuses_a_bad_schedule_with_status_2(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    proc = run_main(["--loss", "soft-labels", "--epochs", "3", "--value_schedule", "{5: {beta: 0}}",
                     "--data-dir", str(tmp_path / "nowhere"), "--out_folder", str(out)], capsys=capsys)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "python -m hiercls.train: error: invalid config:",
        "  value_schedule epoch 5 is out of range; valid: whole epochs 1..3 (1-based: 1 is the first epoch)",
        "  value_schedule epoch 5: beta=0.0 is out of range; valid range (0.0, inf)",
    ]
    assert not out.exists()
    broken = run_main(["--value_schedule", "{1: {lr: 0.1}", "--data-dir", str(tmp_path / "nowhere"),
                       "--out_folder", str(out)], capsys=capsys)
    assert broken.returncode == 2 and "value_schedule is not valid YAML" in broken.stderr


# ---------------------------------------------------------------------------------------- lr's declaration
def test_lr_is_declared_like_every_other_parameter() -> None:
    lr = TRAINING_PARAMS["lr"]
    assert (lr.name, lr.kind, lr.default, lr.role, lr.variable) == ("lr", "float", 0.05, "rate", True)
    assert TrainConfig().lr == lr.default and lr.help and lr.unit and "Goyal" in lr.source
    assert lr.range_text() == "(0.0, inf)" and lr.valid_text() == "a positive number"
    assert lr.check(1e-4) == 1e-4
    with pytest.raises(ValueError, match=r"^lr=0 is out of range; valid: a positive number$"):
        lr.check(0)
    # the keys a value schedule may set: the variable run-level parameters, then the loss's
    assert variable_keys("simple-hierarchy") == ["lr", "lambda_fine", "lambda_coarse"]
    assert variable_keys("cross-entropy") == ["lr"]
    assert all_variable_keys()[0] == "lr" and all_variable_keys().count("lr") == 1
    with pytest.raises(ValueError, match="role 'pace' is unknown; valid: weight, start, rate"):
        Param("x", "float", 1.0, "x", role="pace")


def _flag_help(flag: str) -> str:
    """The ``--help`` text of ``flag`` (argparse's wrapping undone)."""
    text = " ".join(build_parser().format_help().split())
    start = text.index(f"{flag} {flag.lstrip('-').upper()} ") + len(flag) * 2
    return text[start:text.index(" --", start)].strip()


def test_the_declaration_of_lr_drives_the_flag_the_config_check_and_the_schedule_check(monkeypatch) -> None:
    assert _flag_help("--lr") == ("base learning rate, which lr_schedule shapes step by step (a positive "
                                  "number, absolute: not rescaled with batch_size; default: 0.05)")
    narrower = dataclasses.replace(TRAINING_PARAMS["lr"], help="step size of the test", high=1.0,
                                   valid="a number in (0, 1]", unit="")
    monkeypatch.setitem(TRAINING_PARAMS, "lr", narrower)
    assert _flag_help("--lr") == "step size of the test (a number in (0, 1]; default: 0.05)"
    assert config_from_args(build_parser().parse_args(["--lr", "0.25"])).lr == 0.25
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"lr": 2.0}).validate()
    assert err.value.problems == ["lr=2.0 is out of range; valid: a number in (0, 1]"]
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"loss": "soft-labels", "epochs": 4,
                               "value_schedule": {2: {"lr": 1.5}}}).validate()
    assert err.value.problems == ["value_schedule epoch 2: lr=1.5 is out of range; valid: a number in (0, 1]"]
    # the run-level keys are checked even where the loss is unknown (reported elsewhere)
    assert value_schedule_problems({2: {"lr": 1.5, "alpha": -1.0}}, "focal", 4) == [
        "value_schedule epoch 2: lr=1.5 is out of range; valid: a number in (0, 1]"]


def test_set_values_routes_each_value_by_its_declarations_role(monkeypatch) -> None:
    calls = []
    run = SimpleNamespace(schedule=SimpleNamespace(set_base_lr=lambda v: calls.append(("schedule", v))),
                          criterion=SimpleNamespace(set_values=lambda **v: calls.append(("loss", v))))
    engine.Run.set_values(run, {"lr": 0.02, "lambda_fine": 0.5, "lambda_coarse": 0.25})
    assert calls == [("schedule", 0.02), ("loss", {"lambda_fine": 0.5, "lambda_coarse": 0.25})]
    # a variable run-level parameter of another role: scheduled and checked like lr, but no run can set it
    momentum = Param("momentum", "float", 0.9, "momentum", low=0.0, high=1.0, high_open=True, variable=True)
    monkeypatch.setitem(TRAINING_PARAMS, "momentum", momentum)
    assert variable_keys("soft-labels") == ["lr", "momentum", "beta"]
    assert TrainConfig.from_dict({"loss": "soft-labels"}).values_at(1) == {"lr": 0.05, "momentum": 0.9,
                                                                           "beta": 10.0}
    assert value_schedule_problems({2: {"momentum": 1.0}}, "soft-labels", 4) == [
        "value_schedule epoch 2: momentum=1.0 is out of range; valid range [0.0, 1.0)"]
    with pytest.raises(ValueError, match="momentum is not a value a run can change from one epoch to the"):
        engine.Run.set_values(run, {"momentum": 0.5})


def test_upgrade_record_reads_every_spelling_in_todays() -> None:
    new = {"epoch": 2, "scheduled_lr": 0.04, "lr": 0.05, "alpha": 0.3, "train_loss": 1.0}
    assert upgrade_record(new) == new and upgrade_record(new) is not new
    # before lr had one spelling: base_lr the value, lr the scheduled rate; renamed in place
    old = {"epoch": 2, "lr": 0.04, "base_lr": 0.05, "alpha": 0.3, "train_loss": 1.0}
    assert upgrade_record(old) == new and list(upgrade_record(old)) == list(new)
    # an engine record from before the values were recorded: its lr was the scheduled rate
    oldest = {"epoch": 2, "lr": 0.04, "train_loss": 1.0}
    assert list(upgrade_record(oldest).items()) == [("epoch", 2), ("scheduled_lr", 0.04), ("train_loss", 1.0)]
    # a report with only the values (the search's toy trainable): its lr is the value, kept
    toy = {"epoch": 2, "lr": 0.05, "val_top1_error": 0.5}
    assert upgrade_record(toy) == toy


# ---------------------------------------------------------------------------------------------- losses
HIERARCHY = load_cifar100_hierarchy("cifar100-l5")


@pytest.mark.parametrize(
    ("loss", "before", "after"),
    [
        ("hierarchical-cross-entropy", {"alpha": 0.1}, {"alpha": 0.7}),
        ("hierarchical-cross-entropy", {"alpha": 0.1, "normalize": True}, {"alpha": 0.0}),
        ("yolo-v2", {"alpha": 0.1}, {"alpha": 1.5}),
        ("soft-labels", {"beta": 10.0}, {"beta": 3.0}),
        ("simple-hierarchy", {"lambda_coarse": 1.0, "coarse_loss_start_epoch": 0.5},
         {"lambda_fine": 0.25, "lambda_coarse": 2.0}),
    ],
)
def test_set_values_equals_a_loss_built_with_the_new_values(loss, before, after) -> None:
    criterion = build_loss(loss, HIERARCHY, **before)
    buffers = {name: (b.data_ptr(), b.clone()) for name, b in criterion.named_buffers()}
    criterion.set_values(**after)
    fresh = build_loss(loss, HIERARCHY, **{**before, **after})
    assert criterion.current_values() == fresh.current_values() == {**criterion.current_values(), **after}
    changed = False
    for (name, buffer), (_, expected) in zip(criterion.named_buffers(), fresh.named_buffers(), strict=True):
        assert torch.equal(buffer, expected), name
        assert buffer.data_ptr() == buffers[name][0], name  # changed in place: the same storage
        changed |= not torch.equal(buffer, buffers[name][1])
    assert changed or loss == "simple-hierarchy"  # the lambdas are plain floats, no buffer
    g = torch.Generator().manual_seed(1)
    outputs = torch.randn(16, criterion.num_outputs, generator=g)
    targets = torch.randint(0, 100, (16,), generator=g)
    for epoch in (0.0, 1.0):
        criterion.set_epoch(epoch)
        fresh.set_epoch(epoch)
        assert torch.equal(criterion(outputs, targets), fresh(outputs, targets))
    old = build_loss(loss, HIERARCHY, **before)
    old.set_epoch(1.0)
    assert not torch.equal(criterion(outputs, targets), old(outputs, targets))


def test_set_values_refuses_what_the_loss_cannot_change() -> None:
    hxe = build_loss("hierarchical-cross-entropy", HIERARCHY, alpha=0.3)
    assert list(hxe.variable_params()) == ["alpha"]
    with pytest.raises(ValueError, match="loss 'hierarchical-cross-entropy' has no variable parameter "
                                         "'beta'; valid: alpha"):
        hxe.set_values(beta=2.0)
    with pytest.raises(ValueError, match=r"alpha=-1 is out of range; valid range \[0.0, inf\)"):
        hxe.set_values(alpha=-1)
    with pytest.raises(ValueError, match="has no variable parameter 'normalize'"):
        hxe.set_values(normalize=True)
    assert hxe.current_values() == {"alpha": 0.3}
    unchanged = build_loss("hierarchical-cross-entropy", HIERARCHY, alpha=0.3)
    assert torch.equal(hxe.path_weights, unchanged.path_weights)
    with pytest.raises(ValueError, match="'cross-entropy' has no variable parameter 'alpha'; valid: none"):
        build_loss("cross-entropy", HIERARCHY).set_values(alpha=0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss", "before", "after"),
    [
        ("hierarchical-cross-entropy", {"alpha": 0.1}, {"alpha": 0.7}),  # a buffer changed in place
        ("simple-hierarchy", {"lambda_coarse": 1.0}, {"lambda_coarse": 0.25}),  # a float attribute: guarded
    ],
)
def test_a_compiled_loss_follows_a_value_change(loss, before, after) -> None:
    """The engine compiles only the model, so its loss runs eagerly; a compiled loss (about 20 s to compile
    on 2 CPU cores) also leaves no stale constant: a buffer is read at every call, a float is guarded."""
    torch._dynamo.reset()
    criterion = build_loss(loss, HIERARCHY, **before)
    compiled = torch.compile(criterion)
    g = torch.Generator().manual_seed(2)
    outputs, targets = torch.randn(8, 100, generator=g), torch.randint(0, 100, (8,), generator=g)
    first = compiled(outputs, targets)
    assert torch.allclose(first, build_loss(loss, HIERARCHY, **before)(outputs, targets), rtol=1e-6, atol=0)
    criterion.set_values(**after)
    second = compiled(outputs, targets)
    expected = build_loss(loss, HIERARCHY, **after)(outputs, targets)
    assert torch.allclose(second, expected, rtol=1e-6, atol=0) and not torch.allclose(second, first)


# -------------------------------------------------------------------------------------------- schedule
def test_set_base_lr_keeps_the_schedule_shape_and_the_head_scale() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), LR_SCALE_KEY: 2.0}]
    constant = build_schedule("constant", torch.optim.SGD(groups, lr=0.1), base_lr=0.1, epochs=4,
                              steps_per_epoch=3)
    constant.step()
    constant.set_base_lr(0.02)
    assert [g["lr"] for g in constant.optimizer.param_groups] == [0.02, 0.02 * 2.0]
    assert constant.state_dict()["base_lr"] == 0.02 and constant.step_count == 1
    model_b = torch.nn.Linear(2, 2)
    cosine = build_schedule("cosine", torch.optim.SGD(model_b.parameters(), lr=0.1), base_lr=0.1, epochs=4,
                            steps_per_epoch=3, t0=2.0)
    for _ in range(4):
        cosine.step()
    cosine.set_base_lr(0.3)
    rate = learning_rate("cosine", 4 / 3, base_lr=0.3, epochs=4, t0=2.0)
    assert cosine.lr == rate == cosine.optimizer.param_groups[0]["lr"] and rate != 0.3
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    cyclic = build_schedule("cyclic", optimizer, base_lr=0.1, epochs=4, steps_per_epoch=3, min_lr=0.01)
    with pytest.raises(ValueError, match="min_lr=0.01 is out of range"):
        cyclic.set_base_lr(0.001)
    assert cyclic.base_lr == 0.1


# ---------------------------------------------------------------------------------------------- runs
RUNS = {
    # loss: (the config's own values, value_schedule, expected values in epochs 1, 2, 3)
    "simple-hierarchy": (
        {"lambda_coarse": 0.5},
        {2: {"lambda_coarse": 0.0, "lr": 0.02}, 3: {"lambda_fine": 0.5, "lambda_coarse": 2.0}},
        [{"lr": 0.05, "lambda_fine": 1.0, "lambda_coarse": 0.5},
         {"lr": 0.02, "lambda_fine": 1.0, "lambda_coarse": 0.0},
         {"lr": 0.02, "lambda_fine": 0.5, "lambda_coarse": 2.0}],
    ),
    "hierarchical-cross-entropy": (
        {"alpha": 0.1, "lr_fc": 0.1}, {2: {"alpha": 0.6, "lr": 0.02}, 3: {"alpha": 0.0}},
        [{"lr": 0.05, "alpha": 0.1}, {"lr": 0.02, "alpha": 0.6}, {"lr": 0.02, "alpha": 0.0}],
    ),
    "soft-labels": (
        {"beta": 10.0}, {2: {"beta": 4.0, "lr": 0.02}, 3: {"beta": 30.0}},
        [{"lr": 0.05, "beta": 10.0}, {"lr": 0.02, "beta": 4.0}, {"lr": 0.02, "beta": 30.0}],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(RUNS))
def test_a_run_applies_and_records_the_scheduled_values(data, tmp_path, monkeypatch, loss) -> None:
    own, schedule, expected = RUNS[loss]
    config = tiny(tmp_path / "run", loss=loss, lr_schedule="constant", value_schedule=schedule, **own)
    seen = []
    original = engine.Run.train_epoch

    def spy(run, epoch, progress):  # what the epoch trains with, before its first step
        g = torch.Generator().manual_seed(epoch)  # its own generator: the run's random stream is untouched
        outputs = torch.randn(8, run.criterion.num_outputs, generator=g)
        targets = torch.randint(0, 100, (8,), generator=g)
        seen.append({"values": run.criterion.current_values(),
                     "lrs": [group["lr"] for group in run.optimizer.param_groups],
                     "loss": run.criterion(outputs, targets), "batch": (outputs, targets)})
        return original(run, epoch, progress)

    monkeypatch.setattr(engine.Run, "train_epoch", spy)
    result = fit(config, data=data)
    assert result["status"] == "ok"
    history = result["history"]
    resolved = config.resolved().loss_kwargs()
    for epoch, (record, values, step) in enumerate(zip(history, expected, seen, strict=True), start=1):
        loss_values = {k: v for k, v in values.items() if k != "lr"}
        assert record["epoch"] == epoch
        assert {k: record[k] for k in ("lr", "scheduled_lr", *loss_values)} == {
            "lr": values["lr"], "scheduled_lr": values["lr"], **loss_values}  # constant: the rate is the base
        assert list(record)[:3 + len(loss_values)] == ["epoch", "scheduled_lr", "lr", *loss_values]
        assert "base_lr" not in record
        assert step["values"] == loss_values
        head = [values["lr"] * (0.1 / 0.05)] if "lr_fc" in own else []  # the head keeps lr_fc / lr
        assert step["lrs"] == [values["lr"], *head]
        fresh = build_loss(loss, HIERARCHY, **{**resolved, **loss_values})
        assert torch.equal(step["loss"], fresh(*step["batch"]))
    saved = json.loads((Path(config.out_folder) / "all_epoch_results.json").read_text())
    assert saved == history
    assert read_saved_config(Path(config.out_folder) / "config.yaml").value_schedule == schedule
    # rescoring the saved model uses the loss values of its last epoch, not the config's own
    monkeypatch.setattr(engine, "_load_data", lambda _config: data)
    rescored = evaluate_saved(config.out_folder, split="val")
    assert rescored["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_records_are_the_same_whether_a_value_is_the_configs_or_scheduled(data, tmp_path) -> None:
    hxe = {"epochs": 2, "loss": "hierarchical-cross-entropy"}
    scalar = fit(tiny(tmp_path / "a", alpha=0.3, lr=0.02, **hxe), data=data)
    scheduled = fit(tiny(tmp_path / "b", value_schedule={1: {"alpha": 0.3, "lr": 0.02}}, **hxe), data=data)
    assert scalar["history"][0]["alpha"] == 0.3 and scalar["history"][0]["lr"] == 0.02
    assert without_timing(scheduled["history"]) == without_timing(scalar["history"])


@pytest.mark.slow
def test_records_hold_the_value_of_lr_and_the_rate_of_the_epochs_first_step(data, tmp_path,
                                                                             monkeypatch) -> None:
    config = tiny(tmp_path / "run", epochs=4, t0=3.0, lr_fc=0.1, value_schedule={3: {"lr": 0.02}})
    first_step = []
    original = engine.Run.train_epoch

    def spy(run, epoch, progress):  # the optimiser's rates before the epoch's first step
        first_step.append([group["lr"] for group in run.optimizer.param_groups])
        return original(run, epoch, progress)

    monkeypatch.setattr(engine.Run, "train_epoch", spy)
    history = fit(config, data=data)["history"]
    assert [r["lr"] for r in history] == [config.values_at(e)["lr"] for e in (1, 2, 3, 4)] == [
        0.05, 0.05, 0.02, 0.02]
    assert [r["scheduled_lr"] for r in history] == [rates[0] for rates in first_step]
    assert [r["scheduled_lr"] for r in history] == [
        learning_rate("cosine", r["epoch"] - 1.0, base_lr=r["lr"], epochs=4, t0=3.0) for r in history]
    assert history[1]["scheduled_lr"] < history[1]["lr"]  # cosine: the shape applies on top of the value
    assert all(rates[1] == pytest.approx(rates[0] * 0.1 / 0.05) for rates in first_step)  # the head's scale
    assert all("base_lr" not in r for r in history)
    saved = json.loads((Path(config.out_folder) / "all_epoch_results.json").read_text())
    assert saved == history
    assert all(f" | lr {r['scheduled_lr']:.4g} | " in engine._log_line(r, 4) for r in history)  # the rate


# -------------------------------------------------------------------------------------------- continuation
@pytest.fixture(scope="module")
def lineage(data, tmp_path_factory):
    """Run A: simple-hierarchy, 4 epochs, cosine restarting after 3 epochs (so the rate is not the base);
    its epoch-2 ``last.pth`` kept aside as a later run's donor (as the search's reporter keeps it)."""
    root = tmp_path_factory.mktemp("lineage")
    donor = root / "donor" / "last.pth"

    def keep(record, folder):
        if record["epoch"] == 2:
            donor.parent.mkdir()
            shutil.copy2(folder / "last.pth", donor)

    config = tiny(root / "a", loss="simple-hierarchy", epochs=4, t0=3.0, seed=7)
    return {"root": root, "config": config, "a": fit(config, keep, data=data), "donor": donor}


@pytest.fixture(scope="module")
def continued(lineage, data):
    """Run B: continues A's epoch-2 checkpoint with another lr and lambda_coarse (and its own seed)."""
    config = lineage["config"].replace(out_folder=str(lineage["root"] / "b"), seed=99, lr=0.02,
                                       lambda_coarse=0.25)
    return config, fit(config, data=data, continue_from=lineage["donor"])


@pytest.mark.slow
def test_continuing_with_the_same_values_equals_the_uninterrupted_run(lineage, data) -> None:
    root, a = lineage["root"], lineage["a"]
    # the donor as a hiercls before the value records wrote it (its lr the scheduled rate, no values):
    # its records get the values of its config
    state = load_checkpoint(lineage["donor"])
    assert [r["lambda_coarse"] for r in state["history"]] == [1.0, 1.0]
    state["history"] = [{("lr" if k == "scheduled_lr" else k): v for k, v in record.items()
                         if k not in ("lr", "lambda_fine", "lambda_coarse")} for record in state["history"]]
    old = root / "old" / "last.pth"
    old.parent.mkdir()
    torch.save(state, old)
    config = lineage["config"].replace(out_folder=str(root / "same"), seed=3)
    same = fit(config, data=data, continue_from=old)
    assert without_timing(same["history"]) == without_timing(a["history"])  # bit-exact on the CPU
    weights_a = torch.load(root / "a" / "final_model.pth", weights_only=True)
    weights_same = torch.load(root / "same" / "final_model.pth", weights_only=True)
    assert all(torch.equal(weights_a[k], weights_same[k]) for k in weights_a)
    # the run took A's seed (its initialisation, split and data order), and says so
    assert read_saved_config(root / "same" / "config.yaml").seed == 7


@pytest.mark.slow
def test_continuing_with_new_values(lineage, continued, data) -> None:
    a = lineage["a"]["history"]
    config, b = continued
    history = b["history"]
    assert b["status"] == "ok" and b["epochs_run"] == 4 and [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert without_timing(history[:2]) == without_timing(a[:2])  # A's records, A's values
    assert [(r["lr"], r["lambda_fine"], r["lambda_coarse"]) for r in history] == [
        (0.05, 1.0, 1.0), (0.05, 1.0, 1.0), (0.02, 1.0, 0.25), (0.02, 1.0, 0.25)]
    for record in history[2:]:  # the rate of the epoch's first step: cosine on the new base
        rate = learning_rate("cosine", record["epoch"] - 1.0, base_lr=0.02, epochs=4, t0=3.0)
        assert record["scheduled_lr"] == rate
    assert history[2]["train_loss"] != a[2]["train_loss"]
    assert b["best_epoch"] in (None, 3, 4)  # this run's own epochs
    # the optimiser really runs on the new rate: the checkpoint's base and every group's rate
    state = load_checkpoint(Path(config.out_folder) / "checkpoints" / "last.pth")
    assert state["schedule"]["base_lr"] == 0.02 and state["epoch"] == 4
    assert state["optimizer"]["param_groups"][0]["lr"] == learning_rate("cosine", 4.0, base_lr=0.02, epochs=4,
                                                                         t0=3.0)
    saved = read_saved_config(Path(config.out_folder) / "config.yaml")
    assert (saved.lr, saved.lambda_coarse, saved.seed) == (0.02, 0.25, 7)
    # resume keeps refusing a changed config
    with pytest.raises(ConfigError, match=r"differs in 1 key\(s\): lr: saved 0.02 vs now 0.03"):
        fit(saved.replace(lr=0.03), resume=True, data=data)


@pytest.mark.slow
def test_a_continuation_interrupted_in_its_first_epoch_resumes_from_where_it_started(
    lineage, continued, data, monkeypatch
) -> None:
    config, b = continued
    out = lineage["root"] / "interrupted"
    original_epoch = DeviceLoader.epoch

    def interrupted(self, epoch):
        batches = original_epoch(self, epoch)
        if self.train and epoch == 2:  # epoch 3 of the lineage, this run's first: stop after one batch
            return itertools.chain(itertools.islice(batches, 1), _raise_interrupt())
        return batches

    monkeypatch.setattr(DeviceLoader, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config.replace(out_folder=str(out)), data=data, continue_from=lineage["donor"])
    monkeypatch.setattr(DeviceLoader, "epoch", original_epoch)
    state = load_checkpoint(out / "checkpoints" / "last.pth")
    assert state["epoch"] == 2 and state["config"]["lr"] == 0.02 and state["config"]["seed"] == 7
    resumed = fit(read_saved_config(out / "config.yaml"), resume=True, data=data)
    assert without_timing(resumed["history"]) == without_timing(b["history"])


def _old_spelling(history):
    """Records as a hiercls before one spelling wrote them: ``lr`` the scheduled rate, ``base_lr`` the
    value."""
    out = []
    for record in history:
        old = {}
        for key, value in record.items():
            if key == "scheduled_lr":
                old["lr"], old["base_lr"] = value, record["lr"]
            elif key != "lr":
                old[key] = value
        out.append(old)
    return out


@pytest.mark.slow
def test_continuing_a_donor_with_records_of_the_old_spelling_gives_records_of_todays(lineage, data) -> None:
    root, a = lineage["root"], lineage["a"]
    state = load_checkpoint(lineage["donor"])
    state["history"] = _old_spelling(state["history"])
    assert list(state["history"][0])[:5] == ["epoch", "lr", "base_lr", "lambda_fine", "lambda_coarse"]
    old = root / "old-spelling" / "last.pth"
    old.parent.mkdir()
    torch.save(state, old)
    out = root / "respelled"
    result = fit(lineage["config"].replace(out_folder=str(out)), data=data, continue_from=old)
    assert without_timing(result["history"]) == without_timing(a["history"])  # bit-exact on the CPU
    for record, own in zip(result["history"], a["history"], strict=True):
        assert list(record) == list(own) and "base_lr" not in record  # today's keys, in today's order
    assert [r["lr"] for r in result["history"]] == [0.05] * 4
    assert json.loads((out / "all_epoch_results.json").read_text()) == result["history"]
    assert load_checkpoint(out / "checkpoints" / "last.pth")["history"] == result["history"]


@pytest.mark.slow
def test_a_resumed_run_reads_its_records_of_the_old_spelling_in_todays(lineage, data) -> None:
    root, a = lineage["root"], lineage["a"]
    out = root / "resumed-old"
    config = lineage["config"].replace(out_folder=str(out))
    state = load_checkpoint(lineage["donor"])  # A's epoch-2 checkpoint, as a hiercls before wrote it
    state["history"] = _old_spelling(state["history"])
    (out / "checkpoints").mkdir(parents=True)
    torch.save(state, out / "checkpoints" / "last.pth")
    (out / "all_epoch_results.json").write_text(json.dumps(state["history"]))
    (out / "config.yaml").write_text(config.resolved().to_yaml())
    resumed = fit(config, resume=True, data=data)
    assert without_timing(resumed["history"]) == without_timing(a["history"])
    assert all(list(r) == list(own) for r, own in zip(resumed["history"], a["history"], strict=True))
    assert json.loads((out / "all_epoch_results.json").read_text()) == resumed["history"]


def _raise_interrupt():
    raise KeyboardInterrupt
    yield  # pragma: no cover


@pytest.mark.slow
def test_replaying_the_history_as_a_schedule_reproduces_the_run(lineage, continued, data) -> None:
    config, b = continued
    schedule = value_schedule_from_history(b["history"], "simple-hierarchy")
    assert schedule == {1: {"lr": 0.05, "lambda_fine": 1.0, "lambda_coarse": 1.0},
                        3: {"lr": 0.02, "lambda_coarse": 0.25}}
    saved = read_saved_config(Path(config.out_folder) / "config.yaml")
    replay = fit(saved.replace(value_schedule=schedule, out_folder=str(lineage["root"] / "replay")),
                 data=data)

    def values(history):
        keys = ("epoch", "lr", "scheduled_lr", "lambda_fine", "lambda_coarse")
        return [{k: r[k] for k in keys} for r in history]

    assert values(replay["history"]) == values(b["history"])
    assert without_timing(replay["history"]) == without_timing(b["history"])  # the whole run, on the CPU


def test_value_schedule_from_history_is_minimal() -> None:
    values = ((1, 0.1, 10.0), (2, 0.1, 10.0), (3, 0.1, 5.0), (4, 0.02, 5.0), (5, 0.02, 5.0))
    records = [{"epoch": e, "scheduled_lr": 0.1 * e, "lr": base, "beta": beta, "train_loss": 1.0}
               for e, base, beta in values]
    expected = {1: {"lr": 0.1, "beta": 10.0}, 3: {"beta": 5.0}, 4: {"lr": 0.02}}
    assert value_schedule_from_history(records, "soft-labels") == expected
    # records written before lr had one spelling: base_lr the value, lr the scheduled rate
    old = [{"epoch": e, "lr": 0.1 * e, "base_lr": base, "beta": beta, "train_loss": 1.0}
           for e, base, beta in values]
    assert value_schedule_from_history(old, "soft-labels") == expected
    assert value_schedule_from_history([], "soft-labels") == {}
    # an engine record from before the values were recorded: its lr was the scheduled rate, no value
    with pytest.raises(ValueError, match="the record of epoch 1 has no lr, beta"):
        value_schedule_from_history([{"epoch": 1, "lr": 0.1, "train_loss": 1.0}], "soft-labels")
    # a report that holds only the values (the search's toy trainable): its lr is the value
    with pytest.raises(ValueError, match="the record of epoch 1 has no beta "):
        value_schedule_from_history([{"epoch": 1, "lr": 0.1}], "soft-labels")
    with pytest.raises(ValueError, match="history record 2 is epoch 3; expected the records of epochs 1, 2"):
        value_schedule_from_history([records[0], records[2]], "soft-labels")
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        value_schedule_from_history(records, "focal")


@pytest.mark.slow
def test_a_continuation_that_cannot_be_is_refused_before_anything_is_written(lineage, data, tmp_path) -> None:
    config, donor = lineage["config"], lineage["donor"]
    out = tmp_path / "c"
    expected = (r"differs from this config in 2 key\(s\) that must stay the same: epochs: saved 4 vs now 5, "
                r"weight_decay: saved 0.0005 vs now 0.001 \(only alpha, beta, checkpoint_every, compile, "
                r"lambda_coarse, lambda_fine, lr, num_threads, out_folder, seed, value_schedule may differ\)")
    with pytest.raises(ConfigError, match=expected):
        fit(config.replace(out_folder=str(out), epochs=5, weight_decay=1e-3), continue_from=donor, data=data)
    with pytest.raises(ConfigError, match="continue_from and resume exclude each other"):
        fit(config.replace(out_folder=str(out)), resume=True, continue_from=donor, data=data)
    last_a = lineage["root"] / "a" / "checkpoints" / "last.pth"
    with pytest.raises(ConfigError, match="it has completed all 4 epochs"):
        fit(config.replace(out_folder=str(out)), continue_from=last_a, data=data)
    with pytest.raises(ConfigError, match="it is in this run's checkpoint folder, which overwrite empties"):
        fit(config, continue_from=last_a, overwrite=True, data=data)
    (tmp_path / "not.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot continue: .*not.pth' is corrupt or truncated"):
        fit(config.replace(out_folder=str(out)), continue_from=tmp_path / "not.pth", data=data)
    assert not out.exists()
    assert last_a.is_file() and (lineage["root"] / "a" / "all_epoch_results.json").is_file()
