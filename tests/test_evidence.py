"""One validation split per search and the per-image evidence of a run: ``split_seed`` fixes the validation
images and the training subset while ``seed`` varies the rest; ``val_split_sha256`` names the split in
``config.yaml`` and every record; the saved predictions recompute every recorded validation metric bit for
bit, for every loss family. Synthetic data only (fast lane)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from inprocess import synthetic_cifar

from hiercls.config import TrainConfig
from hiercls.data import make_splits
from hiercls.engine import DataError, build_run, fit
from hiercls.evidence import (
    EvidenceError,
    kept_epochs,
    load_predictions,
    per_image,
    predictions_path,
    recompute_metrics,
    saved_epochs,
    split_sha256,
)
from hiercls.hierarchy import load_cifar100_hierarchy
from hiercls.registry import LOSSES


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar()


def tiny(out: Path, **changes) -> TrainConfig:
    values = dict(architecture="speednet", width=8, val_size=100, epochs=3, batch_size=25, eval_batch_size=30,
                  evaluate_test=False, device="cpu", out_folder=str(out), num_threads=1,
                  hierarchy="cifar100-l5", lr=0.05)
    values.update(changes)
    return TrainConfig.from_dict(values)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ---------------------------------------------------------------------------------------------- splits
def test_split_seed_fixes_the_validation_images_and_the_training_subset(data):
    runs = [build_run(tiny(Path("unused"), seed=seed, split_seed=7, val_size=50, max_train_samples=100), data)
            for seed in (1, 2)]
    a, b = runs
    assert torch.equal(a.val_indices, b.val_indices)
    assert torch.equal(a.train_loader.images, b.train_loader.images)
    assert a.config.val_split_sha256 == b.config.val_split_sha256 == split_sha256(a.val_indices)
    # the weights still follow the trial's own seed
    assert not torch.equal(a.model.conv_stem.weight if hasattr(a.model, "conv_stem") else
                           next(a.model.parameters()), next(b.model.parameters()))
    # without split_seed the split follows seed, as before
    plain = [build_run(tiny(Path("unused"), seed=seed, val_size=50), data) for seed in (1, 2)]
    assert not torch.equal(plain[0].val_indices, plain[1].val_indices)
    assert torch.equal(plain[0].val_indices, make_splits(data, val_size=50, seed=1).val.indices)


def test_the_split_hash_is_of_the_sorted_positions():
    idx = torch.tensor([5, 1, 3])
    assert split_sha256(idx) == split_sha256(np.array([1, 3, 5]))
    import hashlib

    assert split_sha256(idx) == hashlib.sha256(np.array([1, 3, 5], dtype="<i8").tobytes()).hexdigest()
    assert split_sha256(None) is None


def test_the_split_identity_is_in_config_yaml_and_every_record(data, tmp_path):
    result = fit(tiny(tmp_path / "run", split_seed=3), data=data, progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["split_seed"] == 3 and len(saved["val_split_sha256"]) == 64
    assert {r["val_split_sha256"] for r in result["history"]} == {saved["val_split_sha256"]}
    # a config that records another split is refused before training
    other = tiny(tmp_path / "other", split_seed=4, val_split_sha256=saved["val_split_sha256"])
    with pytest.raises(DataError, match="val_split_sha256"):
        fit(other, data=data, progress=False)


def test_an_old_config_yaml_without_split_seed_loads_and_resumes(data, tmp_path):
    config = tiny(tmp_path / "old", epochs=2)
    reference = fit(config.replace(out_folder=str(tmp_path / "reference")), data=data, progress=False)

    class Stop(Exception):
        pass

    def stop(record, folder):
        raise Stop

    with pytest.raises(Stop):  # interrupted after epoch 1 (its last.pth written)
        fit(config, stop, data=data, progress=False)
    # as an earlier hiercls wrote it: no split keys in config.yaml or in the checkpoint's config
    path = tmp_path / "old" / "config.yaml"
    values = {k: v for k, v in yaml.safe_load(path.read_text()).items()
              if k not in ("split_seed", "val_split_sha256")}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    last = tmp_path / "old" / "checkpoints" / "last.pth"
    ckpt = torch.load(last, weights_only=True)
    ckpt["config"] = values
    torch.save(ckpt, last)
    assert TrainConfig.from_dict({**values, "split_seed": None}).data_split_seed == config.seed
    resumed = fit(config, data=data, progress=False, resume=True)
    assert resumed["history"][-1]["val_top1_error"] == reference["history"][-1]["val_top1_error"]
    assert resumed["history"][-1]["val_split_sha256"] == reference["history"][-1]["val_split_sha256"]


def test_a_continued_run_keeps_the_split_of_the_run_it_continues(data, tmp_path):
    """PB2's exploit step (fit continue_from): the new run takes the donor's seed and keeps its split."""
    donor = fit(tiny(tmp_path / "donor", seed=1, split_seed=9), data=data, progress=False)

    class Stop(Exception):
        pass

    def stop_after_one(record, folder):
        raise Stop

    with pytest.raises(Stop):
        fit(tiny(tmp_path / "partial", seed=1, split_seed=9), stop_after_one, data=data, progress=False)
    result = fit(tiny(tmp_path / "member", seed=2, split_seed=9, lr=0.02), data=data, progress=False,
                 continue_from=tmp_path / "partial" / "checkpoints" / "last.pth")
    shas = {r["val_split_sha256"] for r in result["history"]}
    assert shas == {donor["history"][-1]["val_split_sha256"]}
    # another split_seed is a different run: refused
    with pytest.raises(Exception, match="split_seed"):
        fit(tiny(tmp_path / "other", seed=2, split_seed=10), data=data, progress=False,
            continue_from=tmp_path / "partial" / "checkpoints" / "last.pth")


# ---------------------------------------------------------------------------------------------- evidence
@pytest.mark.parametrize("loss", LOSSES.names())
def test_saved_predictions_recompute_every_recorded_metric_exactly(data, tmp_path, loss):
    changes = {"loss": loss}
    if loss in ("cosine-distance", "cosine-plus-xent", "ranking-loss"):
        changes["barzdenzler"] = True
    result = fit(tiny(tmp_path / loss, **changes), data=data, progress=False)
    hierarchy = load_cifar100_hierarchy("cifar100-l5")
    epochs = saved_epochs(tmp_path / loss)
    assert epochs and epochs[-1] == 3
    for epoch in epochs:
        pred = load_predictions(predictions_path(tmp_path / loss, epoch))
        assert pred.epoch == epoch and len(pred) == 100 and pred.topk.dtype == np.uint8
        record = result["history"][epoch - 1]
        assert pred.val_split_sha256 == record["val_split_sha256"]
        recomputed = recompute_metrics(pred, hierarchy)
        metric_keys = [k for k in record if k.startswith("val_") and k not in ("val_loss",
                                                                                "val_split_sha256")]
        assert sorted(recomputed) == sorted(metric_keys)
        differing = {k: (record[k], recomputed[k]) for k in metric_keys
                     if not same(record[k], recomputed[k])}
        assert not differing, differing
        # the per-image terms give the same numbers (what the bootstrap resamples)
        terms = per_image(pred, hierarchy)
        num, den = terms["val_mistake_severity"]
        assert float(num.sum() / den.sum()) == pytest.approx(record["val_mistake_severity"], rel=1e-12)
        top1 = float(terms["val_top1_error"][0].mean())
        assert top1 == pytest.approx(record["val_top1_error"], rel=1e-12)
    # the losses whose scores are no class distribution (the embedding losses) have no CRM ranking
    no_crm = math.isnan(result["history"][-1]["val_crm/top1_error"])
    assert (load_predictions(predictions_path(tmp_path / loss, 3)).crm_topk is None) == no_crm
    assert no_crm == (loss in ("cosine-distance", "cosine-plus-xent", "ranking-loss"))


def test_a_run_keeps_the_last_and_the_best_epochs_predictions(data, tmp_path):
    history = [{"epoch": 1, "status": "ok", "val_top1_error": 0.5, "val_hdist@1": 2.0},
               {"epoch": 2, "status": "ok", "val_top1_error": 0.4, "val_hdist@1": 2.5},
               {"epoch": 3, "status": "ok", "val_top1_error": 0.45, "val_hdist@1": 2.6},
               {"epoch": 4, "status": "nan", "val_top1_error": math.nan}]
    top1 = lambda r: r["val_top1_error"]  # noqa: E731
    assert kept_epochs(history, [top1]) == {2, 3}
    assert kept_epochs(history, [top1, lambda r: r["val_hdist@1"]]) == {1, 2, 3}
    result = fit(tiny(tmp_path / "run", epochs=4), data=data, progress=False,
                 keep_predictions=(lambda r: r["val_hdist@1"],))
    by_top1 = min(result["history"], key=lambda r: (r["val_top1_error"], r["epoch"]))["epoch"]
    by_hdist = min(result["history"], key=lambda r: (r["val_hdist@1"], r["epoch"]))["epoch"]
    assert saved_epochs(tmp_path / "run") == sorted({4, by_top1, by_hdist})
    # --overwrite takes the replaced run's predictions with it
    fit(tiny(tmp_path / "run", epochs=1), data=data, progress=False, overwrite=True)
    assert saved_epochs(tmp_path / "run") == [1]


def test_a_damaged_predictions_file_is_named(tmp_path):
    path = tmp_path / "epoch_0001.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(EvidenceError, match="epoch_0001.npz"):
        load_predictions(path)
    np.savez(path, topk=np.zeros((2, 20), dtype=np.uint8))
    with pytest.raises(EvidenceError, match="lacks labels"):
        load_predictions(path)


def test_a_pickled_predictions_file_is_never_unpickled(tmp_path):
    path = tmp_path / "epoch_0001.npz"
    np.savez(path, topk=np.array([object()], dtype=object), labels=np.zeros(1, np.uint8),
             indices=np.zeros(1, np.int32), val_split_sha256=np.array("x"), epoch=np.array(1))
    with pytest.raises(EvidenceError):
        load_predictions(path)


def test_records_are_json(data, tmp_path):
    fit(tiny(tmp_path / "run", epochs=1), data=data, progress=False)
    records = json.loads((tmp_path / "run" / "all_epoch_results.json").read_text())
    assert isinstance(records[0]["val_split_sha256"], str)


# ------------------------------------------------------------------------------------ the final test score
def _count_test_passes(monkeypatch) -> list[int]:
    from hiercls import engine

    passes: list[int] = []
    evaluate = engine.Run.evaluate

    def counting(self, loader, ks=engine.VAL_KS, **kwargs):
        if ks == engine.TEST_KS:
            passes.append(len(loader.labels))
        return evaluate(self, loader, ks, **kwargs)

    monkeypatch.setattr(engine.Run, "evaluate", counting)
    return passes


def test_the_test_set_is_scored_once_when_the_last_epoch_is_the_best(data, tmp_path, monkeypatch):
    """The best checkpoint holds the last weights: its test results are the last model's, not a second
    pass over the test images."""
    passes = _count_test_passes(monkeypatch)
    result = fit(tiny(tmp_path / "run", epochs=1, evaluate_test=True), data=data, progress=False)
    assert passes == [100]
    test = json.loads((tmp_path / "run" / "final_test_results.json").read_text())
    assert result["best_epoch"] == 1 and test["best_val_model"]["epoch"] == 1
    assert test["best_val_model"]["metrics"] == test["metrics"]


def test_an_earlier_best_model_is_scored_on_its_own_weights(data, tmp_path, monkeypatch):
    """Best weights other than the last: a second pass with them, then the last weights back in the model
    (final_model.pth stays the last model)."""
    from hiercls import engine

    passes = _count_test_passes(monkeypatch)
    load = engine.load_checkpoint

    def other_best(path, **kwargs):  # the best checkpoint as if an earlier epoch had other weights
        state = load(path, **kwargs)
        state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
        return state

    monkeypatch.setattr(engine, "load_checkpoint", other_best)
    run = tmp_path / "run"
    fit(tiny(run, epochs=1, evaluate_test=True), data=data, progress=False)
    assert passes == [100, 100]
    final = torch.load(run / "final_model.pth", weights_only=True)
    best = load(run / "checkpoints" / "best.pth")["model"]
    assert all(torch.equal(final[k], best[k]) for k in best)  # the last (= saved best) weights, put back
    test = json.loads((run / "final_test_results.json").read_text())
    assert test["best_val_model"]["metrics"] != test["metrics"]


def test_a_finished_run_resumed_keeps_its_test_results_and_scores_nothing_again(data, tmp_path, monkeypatch):
    """A run interrupted after its test but before a search recorded its end is restarted from its last
    checkpoint: nothing left to train, its test results stand, no second pass over the test images. A
    results file that is missing or of another length is scored (once)."""
    passes = _count_test_passes(monkeypatch)
    run = tmp_path / "run"
    first = fit(tiny(run, epochs=1, evaluate_test=True), data=data, progress=False)
    assert passes == [100]
    written = (run / "final_test_results.json").read_bytes()
    again = fit(tiny(run, epochs=1, evaluate_test=True), data=data, progress=False, resume=True)
    assert passes == [100] and again["test"] == first["test"] and again["epochs_run"] == 1
    assert (run / "final_test_results.json").read_bytes() == written
    stale = json.loads(written)
    stale["epoch"] = 7  # of another length: not this run's last model
    (run / "final_test_results.json").write_text(json.dumps(stale))
    assert fit(tiny(run, epochs=1, evaluate_test=True), data=data, progress=False,
               resume=True)["test"] == first["test"]
    assert passes == [100, 100]
    (run / "final_test_results.json").write_text("{torn")
    fit(tiny(run, epochs=1, evaluate_test=True), data=data, progress=False, resume=True)
    assert passes == [100, 100, 100] and json.loads((run / "final_test_results.json").read_bytes()) == \
        json.loads(written)


# ---------------------------------------------------------------------------------------------- real data
def test_a_real_search_trains_and_validates_every_trial_on_one_split(smoke_search, cifar):
    """The smoke search on the real data: one val_split_sha256 for all its trials (config.yaml and every
    record), identical training subsets, distinct trial seeds, and each trial's saved predictions on the
    split it names."""
    folder = smoke_search["outcome"].experiment_dir
    trials = sorted(folder.glob("trial_*"))
    configs = [yaml.safe_load((t / "config.yaml").read_text()) for t in trials]
    assert len(configs) >= 6
    assert len({c["val_split_sha256"] for c in configs}) == 1
    assert {c["split_seed"] for c in configs} == {smoke_search["spec"].seed}
    assert len({c["seed"] for c in configs}) == len(configs)
    subsets = {tuple(make_splits(cifar, val_size=c["val_size"], seed=c["split_seed"],
                                 max_train_samples=c["max_train_samples"]).train.indices.tolist())
               for c in configs}
    assert len(subsets) == 1
    for trial, config in zip(trials, configs):
        records = json.loads((trial / "all_epoch_results.json").read_text())
        assert {r["val_split_sha256"] for r in records} == {config["val_split_sha256"]}
        for epoch in saved_epochs(trial):
            saved = load_predictions(predictions_path(trial, epoch))
            assert saved.val_split_sha256 == config["val_split_sha256"]
