"""The training run on real CIFAR-100 (small subsets): reports, files, resume, NaN, checkpoints."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from hiercls.config import ConfigError, load_config
from hiercls.data import DeviceLoader
from hiercls.engine import DataError, RunExistsError, _Run, fit
from hiercls.evaluate import evaluate_saved
from hiercls.losses import LOSSES
from hiercls.schedules import SCHEDULES
from hiercls.storage import _umask

TIMING = ("epoch_seconds", "images_per_second")


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def test_reports_and_files(tiny_run, cifar) -> None:
    reports = []
    config = tiny_run(epochs=2)
    result = fit(config, lambda record, ckpt: reports.append((record, ckpt)), data=cifar)
    out = Path(config.out_folder)
    assert result["status"] == "ok" and result["epochs_run"] == 2
    assert [r["epoch"] for r, _ in reports] == [1, 2]
    record = reports[-1][0]
    for key in ("epoch", "lr", "train_loss", "val_loss", "val_top1_error", "val_mistake_severity",
                "val_hdist@1", "val_hdist@5", "val_hdist@20", "val_coarse_error", "val_crm/top1_error",
                "val_crm/mistake_severity", "epoch_seconds", "images_per_second", "status"):
        assert key in record, key
    assert record["status"] == "ok"
    assert reports[0][0]["lr"] == pytest.approx(0.05)  # cosine at e = 0 starts at the base LR
    assert 0.0 <= record["val_top1_error"] <= 1.0
    assert record["val_hdist@1"] == pytest.approx(record["val_top1_error"] * record["val_mistake_severity"])
    assert all(ckpt == out / "checkpoints" for _, ckpt in reports)
    for name in ("config.yaml", "all_epoch_results.json", "final_model.pth", "checkpoints/last.pth",
                 "checkpoints/best.pth"):
        assert (out / name).is_file(), name
    assert not (out / "final_test_results.json").exists()  # evaluate_test is off
    saved = json.loads((out / "all_epoch_results.json").read_text())
    assert saved == [r for r, _ in reports]
    resolved = load_config(out / "config.yaml")
    assert len(resolved.val_split_sha256) == 64  # the run records its validation images
    assert resolved == config.resolved().replace(out_folder=config.out_folder,
                                                 val_split_sha256=resolved.val_split_sha256)
    assert resolved.t0 == 12 and resolved.t_mult == 2  # the schedule's defaults are written out
    assert result["best_epoch"] in (1, 2)
    best = min(saved, key=lambda r: r["val_top1_error"])
    assert result["best_val_top1_error"] == best["val_top1_error"]


def test_checkpoint_round_trip_and_evaluate(tiny_run, cifar) -> None:
    config = tiny_run(epochs=1)
    result = fit(config, data=cifar)
    out = Path(config.out_folder)
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["history"] == result["history"]
    fresh = _Run(config.resolved(), cifar)
    fresh.load(state)
    for name, tensor in fresh.model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    assert fresh.schedule.step_count == len(fresh.train_loader)
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(fresh.schedule.lr)
    # hiercls.evaluate rescoring the saved model reproduces the epoch's val report.
    scored = evaluate_saved(out, split="val")
    last = result["history"][-1]
    for key in ("top1_error", "mistake_severity", "hdist@5", "coarse_error", "crm/hdist@1"):
        assert scored[key] == pytest.approx(last[f"val_{key}"], abs=1e-6), key
    assert scored["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    from_file = evaluate_saved(out / "checkpoints" / "best.pth", split="val")
    assert from_file["num_samples"] == 100


def test_resume_after_interrupt_equals_uninterrupted(tiny_run, cifar, tmp_path, monkeypatch) -> None:
    reference = fit(tiny_run(epochs=2, out_folder=str(tmp_path / "a")), data=cifar)
    config = tiny_run(epochs=2, out_folder=str(tmp_path / "b"))
    original_epoch = DeviceLoader.epoch

    def interrupted(self, epoch):
        batches = original_epoch(self, epoch)
        if self.train and epoch == 1:  # epoch 2 of the run: stop after two of its four batches
            return itertools.chain(itertools.islice(batches, 2), _raise_interrupt())
        return batches

    monkeypatch.setattr(DeviceLoader, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config, data=cifar)
    monkeypatch.setattr(DeviceLoader, "epoch", original_epoch)
    assert len(json.loads((Path(config.out_folder) / "all_epoch_results.json").read_text())) == 1
    with pytest.raises(RunExistsError, match="--resume"):
        fit(config, data=cifar)
    resumed = fit(config, resume=True, data=cifar)
    assert without_timing(resumed["history"]) == without_timing(reference["history"])
    a = torch.load(tmp_path / "a" / "final_model.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "final_model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _raise_interrupt():
    raise KeyboardInterrupt
    yield  # pragma: no cover


def test_resume_refuses_a_changed_config(tiny_run, cifar) -> None:
    fit(tiny_run(), data=cifar)
    expected = r"differs in 2 key\(s\): batch_size: saved 50 vs now 25, lr: saved 0.05 vs now 0.02"
    with pytest.raises(ConfigError, match=expected):
        fit(tiny_run(batch_size=25, lr=0.02), resume=True, data=cifar)


def test_overwrite_replaces_results(tiny_run, cifar) -> None:
    config = tiny_run()
    fit(config, data=cifar)
    with pytest.raises(RunExistsError, match="already holds results"):
        fit(config, data=cifar)
    assert fit(config, overwrite=True, data=cifar)["status"] == "ok"


def test_nan_run_ends_with_status_nan(tiny_run, cifar) -> None:
    reports = []
    config = tiny_run(epochs=3, lr=1e6, evaluate_test=True)
    result = fit(config, lambda record, ckpt: reports.append(record), data=cifar)
    assert result["status"] == "nan"
    assert reports[-1]["status"] == "nan" and len(reports) < 3
    assert math.isnan(reports[-1]["val_top1_error"]) and math.isnan(reports[-1]["val_mistake_severity"])
    assert result["test"] is None
    assert not (Path(config.out_folder) / "final_test_results.json").exists()
    saved = json.loads((Path(config.out_folder) / "all_epoch_results.json").read_text())
    assert saved[-1]["status"] == "nan"


@pytest.mark.parametrize(("loss", "schedule"), list(itertools.product(LOSSES.names(), SCHEDULES.names())))
def test_every_loss_and_schedule_trains_one_epoch(tiny_run, cifar, loss, schedule) -> None:
    ramps = {"coarse_loss_start_epoch": 0.5, "coarse_loss_ramp_epochs": 0.25}
    extra = ramps if loss == "simple-hierarchy" else {}
    config = tiny_run(loss=loss, lr_schedule=schedule, epochs=1, **extra)
    result = fit(config, data=cifar)
    record = result["history"][-1]
    assert result["status"] == "ok"
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert 0.0 <= record["val_top1_error"] <= 1.0
    # every metric reported: finite, but CRM (which needs class probabilities) NaN for the embedding losses
    metrics = [k for k in record if k.startswith("val_") and not k.startswith("val_crm/")
               and k != "val_split_sha256"]
    assert all(math.isfinite(record[k]) for k in metrics)
    crm = [record["val_crm/" + k[4:]] for k in metrics if k != "val_loss"]
    probabilistic = LOSSES.get(loss).probabilistic
    assert all(math.isnan(v) for v in crm) if not probabilistic else all(map(math.isfinite, crm))
    saved = yaml.safe_load((Path(config.out_folder) / "config.yaml").read_text())
    assert saved["loss"] == loss and saved["lr_schedule"] == schedule


def test_parameters_of_another_loss_or_schedule_are_refused(tiny_run) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_run(alpha=0.4, milestones=[60, 120]).validate()
    text = str(err.value)
    assert "alpha=0.4 is set, but loss 'cross-entropy' does not take it" in text
    assert "milestones=(60, 120) is set, but lr_schedule 'cosine' does not take it" in text
    ok = tiny_run(loss="hierarchical-cross-entropy", alpha=0.4, lr_schedule="cutout", milestones="60,120")
    ok.validate()
    assert ok.milestones == (60, 120)


def test_a_failed_start_leaves_nothing_behind(tiny_run, cifar, tmp_path) -> None:
    bad = tiny_run(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError, match="nowhere"):
        fit(bad)
    assert not (Path(bad.out_folder) / "config.yaml").exists()
    good = fit(tiny_run(), data=cifar)  # the same folder, no --overwrite needed
    assert good["status"] == "ok"
    mode = (Path(bad.out_folder) / "config.yaml").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()  # results are as readable as any file the user writes
