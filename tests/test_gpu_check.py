"""benchmarks/gpu_check.py in its quick CPU mode: every section runs and reports real figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_mode_on_the_cpu(tmp_path):
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
    assert "report:" in proc.stdout and "plainnet eager b32.images_per_second" in proc.stdout


def test_gpu_check_refuses_bad_arguments_with_status_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "tpu", "--report", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--device 'tpu' is unknown" in proc.stderr
    assert not (tmp_path / "r.json").exists()
