"""The accelerated path on the CPU: bf16 autocast and channels_last, fp32 metrics, deterministic mode,
compile, checkpoint_every, ops CUDA cannot run deterministically, packing defaults and host copies.

A GPU takes these branches with ``amp``/``channels_last`` at ``auto``; here they are switched on with
``true`` so CI runs the same code."""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import weakref
from pathlib import Path

import pytest
import torch
import yaml

import hiercls.engine as engine
from hiercls.config import ConfigError, TrainConfig, read_saved_config, upgrade_saved_values
from hiercls.data import Cifar100, DeviceLoader
from hiercls.engine import RunExistsError, evaluate, fit, load_checkpoint
from hiercls.evaluate import evaluate_saved
from hiercls.hierarchy import cifar100_superclass_labels, load_cifar100_hierarchy
from hiercls.losses import LOSSES, build_loss
from hiercls.metrics import MetricAccumulator
from hiercls.models import MODELS, build_model
from hiercls.numerics import refused_ops
from hiercls.tune.runner import cluster_capacity
from hiercls.tune.spec import SearchSpec

TIMING = ("epoch_seconds", "images_per_second", "compile_seconds")


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def _interrupt_in_epoch(monkeypatch, epoch_index: int, after_batches: int) -> None:
    """Make the training loader raise KeyboardInterrupt after ``after_batches`` batches of epoch
    ``epoch_index`` (0-based): a Ctrl-C in the middle of that epoch."""
    original = DeviceLoader.epoch

    def interrupted(self, epoch):
        batches = original(self, epoch)
        if self.train and epoch == epoch_index:
            return itertools.chain(itertools.islice(batches, after_batches), _raise())
        return batches

    monkeypatch.setattr(DeviceLoader, "epoch", interrupted)


def _raise():
    raise KeyboardInterrupt
    yield  # pragma: no cover


class _Spy:
    """Records the dtype of the model's output and the memory format of its input, by mode."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, torch.dtype, bool]] = set()

    def hook(self, module, inputs, output) -> None:  # noqa: ARG002
        x = inputs[0]
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.seen.add(("train" if module.training else "eval", output.dtype, channels_last))


def _spy_models(monkeypatch) -> _Spy:
    spy = _Spy()

    def build(name, num_classes=100, **head):
        model = build_model(name, num_classes, **head)
        model.register_forward_hook(spy.hook)
        return model

    monkeypatch.setattr(engine, "build_model", build)
    return spy


# ------------------------------------------------------------------------------------ amp + channels_last
def test_bf16_and_channels_last_on_the_cpu_resume_equals_uninterrupted(
    tiny_run, cifar, tmp_path, monkeypatch
):
    """The issue's check: plainnet, 200 images, batch 100, amp and channels_last on the CPU; a run
    interrupted during epoch 2 and resumed gives the uninterrupted run's records (timings aside)."""
    spy = _spy_models(monkeypatch)
    accelerated = {"amp": "true", "channels_last": "true", "batch_size": 100, "epochs": 2}
    reference = fit(tiny_run(out_folder=str(tmp_path / "a"), **accelerated), data=cifar)
    # the branches a GPU takes really ran: bf16 logits in training, fp32 in evaluation, NHWC inputs
    assert spy.seen == {("train", torch.bfloat16, True), ("eval", torch.float32, True)}

    config = tiny_run(out_folder=str(tmp_path / "b"), **accelerated)
    _interrupt_in_epoch(monkeypatch, epoch_index=1, after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        fit(config, data=cifar)
    monkeypatch.undo()
    assert len(json.loads((Path(config.out_folder) / "all_epoch_results.json").read_text())) == 1
    resumed = fit(config, resume=True, data=cifar)
    assert without_timing(resumed["history"]) == without_timing(reference["history"])
    a = torch.load(tmp_path / "a" / "final_model.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "final_model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # bf16 really changed the training numbers (the switch is not a no-op on the CPU)
    plain = fit(tiny_run(out_folder=str(tmp_path / "c"), batch_size=100, epochs=2), data=cifar)
    assert plain["history"][0]["train_loss"] != reference["history"][0]["train_loss"]
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["amp"] == "true" and saved["channels_last"] == "true"  # as to_dict has them
    assert read_saved_config(tmp_path / "b" / "config.yaml").amp == "true"


def test_cpu_defaults_take_the_fp32_path(tiny_run, cifar, monkeypatch):
    spy = _spy_models(monkeypatch)
    fit(tiny_run(), data=cifar)
    assert spy.seen == {("train", torch.float32, False), ("eval", torch.float32, False)}


def test_validation_metrics_come_from_fp32_logits(tiny_run, cifar, tmp_path):
    """A run trained with bf16: its validation report equals an fp32 rescoring of the saved model, and
    evaluate() gives the same numbers inside an autocast block as outside (it turns autocast off)."""
    config = tiny_run(amp="true", out_folder=str(tmp_path / "r"))
    result = fit(config, data=cifar)
    scored = evaluate_saved(tmp_path / "r", split="val")
    last = result["history"][-1]
    for key in ("top1_error", "mistake_severity", "hdist@5", "crm/top1_error"):
        assert scored[key] == last[f"val_{key}"], key

    hierarchy = load_cifar100_hierarchy("cifar100-l5")
    torch.manual_seed(0)
    model = build_model("plainnet").eval()
    loader = DeviceLoader(cifar.test_images[:300], cifar.test_labels[:300], batch_size=128, train=False)
    criterion = build_loss("cross-entropy", hierarchy)
    plain = evaluate(model, loader, hierarchy, criterion)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate(model, loader, hierarchy, criterion)
    assert inside == plain


def test_switch_values_and_old_config_files(tmp_path):
    assert TrainConfig.from_dict({"amp": True, "channels_last": "off"}).to_dict()["amp"] == "true"
    config = TrainConfig.from_dict({"amp": "auto", "channels_last": False})
    assert config.use_amp("cuda") and not config.use_amp("cpu") and not config.use_channels_last("cuda")
    with pytest.raises(ConfigError, match="amp='fast' must be one of auto, true, false"):
        TrainConfig.from_dict({"amp": "fast"})
    with pytest.raises(ConfigError, match="checkpoint_every=0 is out of range"):
        TrainConfig.from_dict({"checkpoint_every": 0}).validate()
    # a config.yaml written before these keys: amp true meant "bf16 on CUDA only"
    old = {k: v for k, v in TrainConfig().to_dict().items()
           if k not in ("channels_last", "deterministic", "compile", "checkpoint_every")}
    old["amp"] = True
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert read_saved_config(tmp_path / "config.yaml").amp == "auto"
    assert upgrade_saved_values({**old, "channels_last": "auto"})["amp"] is True  # a new file: unchanged


def test_resume_of_a_run_written_before_the_switches(tiny_run, cifar):
    """An older run folder (config.yaml without channels_last, amp: true) resumes with today's defaults."""
    config = tiny_run(epochs=2)
    fit(config.replace(epochs=1), data=cifar)
    path = Path(config.out_folder) / "config.yaml"
    values = yaml.safe_load(path.read_text())
    for key in ("channels_last", "deterministic", "compile", "checkpoint_every"):
        values.pop(key)
    values["amp"] = True
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    with pytest.raises(ConfigError, match="epochs: saved 1 vs now 2"):
        fit(config, resume=True, data=cifar)
    assert fit(config.replace(epochs=1), resume=True, data=cifar)["status"] == "ok"


# ------------------------------------------------------------------------------------ deterministic mode
def test_deterministic_mode_sets_the_flags_during_the_run_only(tiny_run, cifar, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []

    def reporter(record, folder):  # noqa: ARG001
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")))

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    result = fit(tiny_run(deterministic=True), reporter, data=cifar)
    assert result["status"] == "ok"
    assert seen == [(True, True, False, ":4096:8")]
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    assert after == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_mode_gives_the_same_results_on_the_cpu(tiny_run, cifar, tmp_path):
    a = fit(tiny_run(deterministic=True, out_folder=str(tmp_path / "a")), data=cifar)
    b = fit(tiny_run(out_folder=str(tmp_path / "b")), data=cifar)
    assert without_timing(a["history"]) == without_timing(b["history"])


def test_no_model_loss_or_metric_uses_an_op_cuda_cannot_run_deterministically():
    """Every registered model (forward and backward, fp32 and bf16), every loss and the metrics avoid the
    ops ``torch.use_deterministic_algorithms(True)`` refuses on CUDA (found on the CPU by dispatch)."""
    hierarchy = load_cifar100_hierarchy("cifar100-l5")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    labels = torch.tensor([3, 71])
    found = {}
    for name in MODELS.names():
        model = build_model(name).train()
        for amp in (False, True):
            def step(model=model, amp=amp):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    out = model(images)
                out.float().sum().backward()
            found[(name, amp)] = refused_ops(step)
    for name in LOSSES.names():
        loss = build_loss(name, hierarchy)
        logits = torch.randn(8, loss.num_outputs, generator=g, requires_grad=True)
        targets = torch.randint(0, 100, (8,), generator=g)
        found[name] = refused_ops(lambda f=loss, x=logits, t=targets: f(x, t).backward())
        found[f"{name} scores"] = refused_ops(lambda f=loss, x=logits: f.scores(x.detach()))
    acc = MetricAccumulator(hierarchy, (1, 5, 20), cifar100_superclass_labels())
    found["metrics"] = refused_ops(lambda: (acc.update(torch.randn(8, 100, generator=g), labels.repeat(4)),
                                            acc.compute()))
    assert {k: v for k, v in found.items() if v} == {}
    # the scan is real: torch's own cross-entropy and the general adaptive pooling are caught
    x = torch.randn(4, 10, requires_grad=True)
    assert "nll_loss_forward" in refused_ops(
        lambda: torch.nn.functional.cross_entropy(x, torch.tensor([1, 2, 3, 4])).backward()
    )
    y = torch.randn(1, 2, 6, 6, requires_grad=True)
    assert "_adaptive_avg_pool2d_backward" in refused_ops(
        lambda: torch.nn.AdaptiveAvgPool2d(2)(y).sum().backward()
    )


# ------------------------------------------------------------------------------------ checkpoint_every
def test_checkpoint_every_two_epochs_resumes_exactly(tiny_run, cifar, tmp_path, monkeypatch):
    every_epoch = fit(tiny_run(epochs=4, out_folder=str(tmp_path / "a")), data=cifar)
    folders = []
    config = tiny_run(epochs=4, checkpoint_every=2, out_folder=str(tmp_path / "b"))
    _interrupt_in_epoch(monkeypatch, epoch_index=3, after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        fit(config, lambda record, folder: folders.append(folder), data=cifar)
    monkeypatch.undo()
    ckpt = Path(config.out_folder) / "checkpoints"
    assert folders == [None, ckpt, None]  # last.pth written after epochs 2 (and 4), reported then only
    assert load_checkpoint(ckpt / "last.pth")["epoch"] == 2
    assert len(json.loads((Path(config.out_folder) / "all_epoch_results.json").read_text())) == 3
    with pytest.raises(RunExistsError):
        fit(config, data=cifar)
    resumed = fit(config, resume=True, data=cifar)  # recomputes epoch 3, then epoch 4
    assert without_timing(resumed["history"]) == without_timing(every_epoch["history"])
    best = load_checkpoint(ckpt / "best.pth")
    assert best["epoch"] == resumed["best_epoch"] == every_epoch["best_epoch"]
    reference_best = load_checkpoint(tmp_path / "a" / "checkpoints" / "best.pth")
    assert all(torch.equal(best["model"][k], reference_best["model"][k]) for k in best["model"])


def test_interrupted_before_the_first_checkpoint_resume_starts_again(tiny_run, cifar, tmp_path, monkeypatch):
    """checkpoint_every 3, Ctrl-C in epoch 2: one epoch record and no checkpoint. --resume starts the same
    run again from epoch 1 (no refusal) and ends equal to an uninterrupted run; a changed config is still
    refused, and the interrupt message says where a resume continues."""
    from hiercls.train import _resume_point

    reference = fit(tiny_run(epochs=3, out_folder=str(tmp_path / "a")), data=cifar)
    config = tiny_run(epochs=3, checkpoint_every=3, out_folder=str(tmp_path / "b"))
    _interrupt_in_epoch(monkeypatch, epoch_index=1, after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        fit(config, data=cifar)
    monkeypatch.undo()
    out = Path(config.out_folder)
    assert len(json.loads((out / "all_epoch_results.json").read_text())) == 1
    assert not list((out / "checkpoints").glob("*.pth"))
    assert _resume_point(config) == ("no epoch was checkpointed yet (checkpoint_every: 3), so --resume "
                                     "starts at epoch 1")
    with pytest.raises(ConfigError, match=r"differs in 1 key\(s\): lr: saved 0.05 vs now 0.01"):
        fit(config.replace(lr=0.01), resume=True, data=cifar)
    resumed = fit(config, resume=True, data=cifar)
    assert without_timing(resumed["history"]) == without_timing(reference["history"])
    assert _resume_point(config) == "all 3 epochs are checkpointed, so --resume only writes the final results"
    assert _resume_point(config.replace(epochs=5, checkpoint_every=2)) == (
        "checkpoints are written every 2 epochs, so --resume continues from epoch 3")
    assert _resume_point(config.replace(epochs=5, checkpoint_every=1)) == (
        "checkpoints are written every epoch, so --resume continues from epoch 4")


def test_checkpoint_every_and_num_threads_may_change_on_resume(tiny_run, cifar):
    config = tiny_run(epochs=2, checkpoint_every=2)
    fit(config.replace(epochs=2), data=cifar)
    assert fit(config.replace(checkpoint_every=1, num_threads=1), resume=True, data=cifar)["status"] == "ok"
    # amp is compared as what it means on the device: auto is off on the CPU, so "false" matches, "true" not
    assert fit(config.replace(amp="false"), resume=True, data=cifar)["status"] == "ok"
    with pytest.raises(ConfigError, match=r"amp: saved 'off' vs now 'on' \(amp compared as on/off on this "
                                          r"device: --set amp=true or =false matches the saved run\)"):
        fit(config.replace(amp="true"), resume=True, data=cifar)


# ------------------------------------------------------------------------------------ compile
@pytest.mark.slow
def test_compiled_run_reports_compile_time_saves_plain_weights_and_resumes_eagerly(
    tiny_run, cifar, tmp_path, monkeypatch
):
    """One compile of plainnet on the CPU (about a minute on 2 cores): training batches of the full size
    run the compiled graph, the last partial batch (250 = 2 x 100 + 50) the same weights eagerly; the
    checkpoint holds the plain module's keys, so an eager run resumes it; compile time is reported apart."""
    common = {"max_train_samples": 250, "batch_size": 100, "epochs": 2, "lr": 0.01}
    eager = fit(tiny_run(out_folder=str(tmp_path / "eager"), **common), data=cifar)
    config = tiny_run(out_folder=str(tmp_path / "compiled"), compile=True, **common)
    _interrupt_in_epoch(monkeypatch, epoch_index=1, after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        fit(config, data=cifar)
    monkeypatch.undo()
    first = json.loads((tmp_path / "compiled" / "all_epoch_results.json").read_text())[0]
    assert first["compile_seconds"] > 0 and first["epoch_seconds"] > 0
    state = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pth")
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    assert set(state["model"]) == set(build_model("plainnet").state_dict())
    resumed = fit(config.replace(compile=False), resume=True, data=cifar)  # compiled -> eager
    assert resumed["history"][1]["compile_seconds"] == 0.0
    assert resumed["history"][0] == first  # epoch 1 as the compiled run reported it
    assert resumed["status"] == "ok" and math.isfinite(resumed["history"][1]["val_loss"])
    # the same math with other kernels: inductor's reductions round differently (conv-bias gradients,
    # sums with heavy cancellation, differ by about 0.2 % after one step) and training amplifies it,
    # so the first epoch's mean loss (three steps from the same weights) is close, not equal
    assert first["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-2)


def test_compiled_models_run_a_partial_batch_eagerly():
    model = build_model("plainnet")
    wrapped = torch.compile(model)  # nothing is compiled until called
    assert engine.eager_for(wrapped, 100, 100) is wrapped
    assert engine.eager_for(wrapped, 50, 100) is model
    assert engine.eager_for(model, 50, 100) is model


# ------------------------------------------------------------------------------------ packing
def test_max_concurrent_defaults_to_what_the_cluster_runs():
    assert cluster_capacity(1, 0.25, [(16, 8)]) == 16  # CPUs bound it
    assert cluster_capacity(0.5, 0.25, [(16, 8)]) == 32  # eight GPUs, four trials each
    assert cluster_capacity(2, 0, [(2, 0), (16, 0)]) == 9
    assert cluster_capacity(1, 1, [(8, 0), (8, 2)]) == 2
    assert cluster_capacity(4, 0, [(2, 0)]) == 1  # never below one (check_resources refuses earlier)
    spec = SearchSpec.load("search_spaces/default.yaml")
    assert spec.max_concurrent is None and spec.validate() is not None


def test_gpu_trials_keep_no_host_copy_of_the_data(tmp_path, monkeypatch):
    from hiercls.tune import trainable

    setup = trainable.TrialSetup(base={"data_dir": str(tmp_path)}, experiment_dir=str(tmp_path))
    made = []

    def fake_load(data_dir, download, cache_dir):  # noqa: ARG001
        made.append(object())
        return made[-1]

    monkeypatch.setattr("hiercls.data.load_cifar100", fake_load)
    trainable._DATA_CACHE.clear()
    kept = trainable._load_data(setup, keep=True)
    assert trainable._load_data(setup, keep=True) is kept and len(made) == 1  # CPU trials share it
    gpu = trainable._load_data(setup, keep=False)
    assert gpu is kept and trainable._DATA_CACHE == {}  # handed over, no reference left in the process
    trainable._load_data(setup, keep=False)
    assert len(made) == 2

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    assert trainable.cap_gpu_memory(0.25, "cuda:0") and calls == [(0.25, torch.device("cuda:0"))]
    assert not trainable.cap_gpu_memory(1.0, "cuda:0") and not trainable.cap_gpu_memory(0.5, "cpu")
    assert len(calls) == 1


def test_a_device_run_drops_its_host_copies(tiny_run, monkeypatch):
    """On a non-CPU device (the meta device stands in for CUDA) the run keeps no reference to the decoded
    set nor to the host splits once the loaders hold the images on the device; the test split is there too."""
    g = torch.Generator().manual_seed(0)
    data = Cifar100(
        train_images=torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.arange(1000) % 100,
        test_images=torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.arange(200) % 100,
    )
    host = weakref.ref(data.train_images)
    monkeypatch.setattr(engine, "resolve_device", lambda name: torch.device("meta"))
    run = engine._Run(tiny_run(evaluate_test=True).resolved(), data)
    del data
    gc.collect()
    assert host() is None
    assert run.train_loader.images.device.type == "meta" and run.test_loader().images.device.type == "meta"
    assert run._test_split is None
