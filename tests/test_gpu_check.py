"""benchmarks/gpu_check.py in its quick CPU mode: every section runs and reports real figures; its argument
checks, through its main() in this process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check():
    """benchmarks/gpu_check.py as a module (the script is not in a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


@pytest.mark.slow
def test_gpu_check_quick_mode_on_the_cpu(tmp_path):
    # A subprocess on purpose: the benchmark run as a user runs the script, from a checkout (its own
    # sys.path set-up) in a fresh process, with its own worker processes; run in this process it would
    # also leave torch's thread count and determinism settings changed for the tests after it.
    report_path = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--device", "cpu",
         "--report", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    sections = ("environment", "matmul_peak", "throughput", "packing", "speednet_packing", "bf16_vs_fp32",
                "determinism", "resume")
    for name in sections:
        assert name in report, name
        entries = report[name] if isinstance(report[name], list) else [report[name]]
        assert all("error" not in e and "skipped" not in e for e in entries), report[name]
    assert report["matmul_peak"]["tflops"] > 0
    entry, speed = report["throughput"]
    assert entry["architecture"] == "plainnet" and entry["images_per_second"] > 0 and entry["tflops"] > 0
    assert entry["kernels_per_step"] > 100 and entry["syncs_per_step"] is None
    # speednet as the speedrun recipe builds it (channels_last on; bf16 at auto: off on the CPU), narrow
    assert (speed["architecture"], speed["compiled"], speed["batch"]) == ("speednet", False, 32)
    assert (speed["recipe"], speed["width"]) == ("speedrun", 16)
    assert speed["channels_last"] is True and speed["amp"] is False
    assert all(positive(speed[k]) for k in ("images_per_second", "tflops", "fraction_of_peak"))
    assert speed["kernels_per_step"] > 50 and speed["syncs_per_step"] is None
    for count in (1, 2):
        assert report["packing"][f"processes_{count}"]["aggregate_images_per_second"] > 0
    check_speednet_packing(report["speednet_packing"])
    bf16 = report["bf16_vs_fp32"]
    assert bf16["forward_dtypes"] == ["torch.float32", "torch.bfloat16"]
    assert bf16["loss_relative_difference"] < 0.05 and bf16["gradient_cosine"] > 0.9
    assert bf16["evaluate_equal_with_outer_autocast"] and bf16["evaluate_logits_dtypes"] == ["torch.float32"]
    assert report["determinism"]["refused_ops"] == {}
    assert report["resume"]["deterministic_true"] == {"records_equal": True, "weights_equal": True}
    assert "speednet_trials_per_gpu_hour_4_epochs" in report["targets"]
    assert all(t["measured"] is None and t["met"] is None for t in report["targets"].values())
    assert "report:" in proc.stdout and "plainnet eager b32.images_per_second" in proc.stdout
    assert "speednet eager b32.images_per_second" in proc.stdout
    assert "projection.at_4_epochs.trials_per_gpu_hour_with_eval" in proc.stdout


def positive(value) -> bool:
    """A finite number above zero (not a bool, not NaN or infinity)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def check_speednet_packing(packed: dict) -> None:
    """The quick mode's speednet packing: 1 vs 2 narrow speedrun processes, one's validation pass, and the
    projection recomputed from the reported figures and the shipped space's fidelity."""
    from hiercls.tune.spec import SearchSpec

    assert (packed["architecture"], packed["recipe"], packed["width"], packed["batch"]) == (
        "speednet", "speedrun", 16, 32)
    one = packed["processes_1"]["aggregate_images_per_second"]
    two = packed["processes_2"]["aggregate_images_per_second"]
    assert positive(one) and positive(two)
    assert len(packed["processes_2"]["per_process_images_per_second"]) == 2
    assert packed["ratio"] == pytest.approx(two / one)
    scored = packed["eval"]
    assert positive(scored["images_per_second"])
    assert scored["flip_tta"] is True and scored["val_images"] == 200  # 2,000 synthetic images, 1/10 held out

    spec = SearchSpec.load("speedrun")
    val = spec.base_config().get("val_size", 5000)
    projection = packed["projection"]
    assert (projection["space"], projection["processes"]) == ("speedrun", 2)
    assert (projection["train_images"], projection["val_images"]) == (50_000 - val, val) == (45_000, 5000)
    assert projection["aggregate_images_per_second"] == two
    assert projection["eval_images_per_second"] == scored["images_per_second"]
    assert "start-up" in projection["assumes"]
    for label, epochs in (("at_space_epochs", spec.epochs), ("at_4_epochs", 4)):
        at = projection[label]
        assert at["epochs"] == epochs
        assert positive(at["trials_per_gpu_hour"]) and positive(at["trials_per_gpu_hour_with_eval"])
        assert at["trials_per_gpu_hour"] == pytest.approx(3600 * two / (epochs * (50_000 - val)))
        with_eval = 3600 / (epochs * ((50_000 - val) / two + val / scored["images_per_second"]))
        assert at["trials_per_gpu_hour_with_eval"] == pytest.approx(with_eval)
        assert at["trials_per_gpu_hour_with_eval"] < at["trials_per_gpu_hour"]
    assert spec.epochs == 6
    assert projection["at_4_epochs"]["trials_per_gpu_hour"] == pytest.approx(
        projection["at_space_epochs"]["trials_per_gpu_hour"] * 6 / 4)


def test_gpu_check_targets_are_read_from_the_report():
    report = {
        "throughput": [{"architecture": "resnet18", "compiled": False, "batch": 512, "fraction_of_peak": 0.9},
                       {"architecture": "resnet18", "compiled": True, "batch": 512, "fraction_of_peak": 0.3}],
        "packing": {"architecture": "resnet18", "processes_1": {}, "processes_4": {}, "ratio": 1.75},
    }
    found = gpu_check().targets(report)
    assert found["resnet18_compiled_b512_fraction_of_peak"]["measured"] == 0.3
    assert found["resnet18_compiled_b512_fraction_of_peak"]["met"] is False
    packing = found["packing_4_vs_1"]
    assert (packing["measured"], packing["target"], packing["met"]) == (1.75, 1.6, True)
    assert found["speednet_trials_per_gpu_hour_4_epochs"]["met"] is None  # not in the report


def test_gpu_check_speednet_target_is_the_packed_projection_with_evaluation():
    def report(processes: int, figure: float) -> dict:
        at = {"epochs": 4, "trials_per_gpu_hour": figure * 2, "trials_per_gpu_hour_with_eval": figure}
        return {"speednet_packing": {f"processes_{processes}": {}, "processes_1": {},
                                     "projection": {"processes": processes, "at_4_epochs": at}}}

    targets = gpu_check().targets
    found = targets(report(4, 1200.0))["speednet_trials_per_gpu_hour_4_epochs"]
    assert (found["measured"], found["target"], found["met"]) == (1200.0, 1000.0, True)
    assert targets(report(4, 900.0))["speednet_trials_per_gpu_hour_4_epochs"]["met"] is False
    quick = targets(report(2, 1200.0))["speednet_trials_per_gpu_hour_4_epochs"]  # the quick mode: 2 processes
    assert quick["measured"] is None and quick["met"] is None


def test_gpu_check_projection_formula_and_the_space_fidelity():
    module = gpu_check()
    assert module.trials_per_gpu_hour(50_000.0, 4, 45_000) == pytest.approx(1000.0)
    # with evaluation: 45,000 / 50,000 + 5,000 / 100,000 = 0.95 s per epoch
    assert module.trials_per_gpu_hour(50_000.0, 4, 45_000, 100_000.0, 5000) == pytest.approx(3600 / 3.8)
    fidelity = module.space_fidelity("speedrun")
    assert fidelity == {"space": "speedrun", "epochs": 6, "train_images": 45_000, "val_images": 5000,
                        "flip_tta": True}


def test_gpu_check_refuses_bad_arguments_with_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_check().main(["--device", "tpu", "--report", str(tmp_path / "r.json")])
    assert info.value.code == 2 and "--device 'tpu' is unknown" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_check_full_mode_without_cuda_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_check().main(["--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "the full check needs a CUDA device" in err
    assert "--quick --device cpu" in err and not (tmp_path / "r.json").exists()
