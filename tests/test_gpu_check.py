"""benchmarks/gpu_check.py in its quick CPU mode: every section runs and reports real figures; its argument
checks, through its main() in this process."""

from __future__ import annotations

import json
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
    sections = ("environment", "matmul_peak", "throughput", "packing", "bf16_vs_fp32", "determinism",
                "resume")
    for name in sections:
        assert name in report, name
        entries = report[name] if isinstance(report[name], list) else [report[name]]
        assert all("error" not in e and "skipped" not in e for e in entries), report[name]
    assert report["matmul_peak"]["tflops"] > 0
    (entry,) = report["throughput"]
    assert entry["architecture"] == "plainnet" and entry["images_per_second"] > 0 and entry["tflops"] > 0
    assert entry["kernels_per_step"] > 100 and entry["syncs_per_step"] is None
    for count in (1, 2):
        assert report["packing"][f"processes_{count}"]["aggregate_images_per_second"] > 0
    bf16 = report["bf16_vs_fp32"]
    assert bf16["forward_dtypes"] == ["torch.float32", "torch.bfloat16"]
    assert bf16["loss_relative_difference"] < 0.05 and bf16["gradient_cosine"] > 0.9
    assert bf16["evaluate_equal_with_outer_autocast"] and bf16["evaluate_logits_dtypes"] == ["torch.float32"]
    assert report["determinism"]["refused_ops"] == {}
    assert report["resume"]["deterministic_true"] == {"records_equal": True, "weights_equal": True}
    assert all(t["measured"] is None and t["met"] is None for t in report["targets"].values())
    assert "report:" in proc.stdout and "plainnet eager b32.images_per_second" in proc.stdout


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
