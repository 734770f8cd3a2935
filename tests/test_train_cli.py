"""``python -m hiercls.train`` and ``python -m hiercls.evaluate`` as a user runs them: through their
``main(argv)`` in this process (tests/inprocess.py), and in a real process where that is what is tested
(a signal; the module entry and stdout of ``python -m hiercls.evaluate``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from inprocess import restored_process_state, run_main

from hiercls.train import build_parser, config_from_args, main

SMALL = ["--max-train-samples", "200", "--val-size", "100", "--batch_size", "50", "--epochs", "1",
         "--no-test", "--device", "cpu"]


def run_cli(*args: str, capsys=None) -> subprocess.CompletedProcess:
    """``python -m hiercls.train ARGS`` in this process (tests/inprocess.py): exit status, stdout, stderr."""
    return run_main(args, "hiercls.train", capsys)


def exit_status(argv: list[str]) -> int:
    """``main``'s exit status, whether it returns it or argparse exits (usage errors)."""
    with restored_process_state():
        try:
            return main(argv)
        except SystemExit as exit_info:
            return exit_info.code


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in history]


def test_original_flags_and_precedence(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("loss: soft-labels\nbeta: 5\nepochs: 30\nlr: 0.3\n")
    args = build_parser().parse_args([
        "--config", str(yaml_file), "--architecture", "ResNet18", "--lambda-fine", "0.5",
        "--coarse_loss_start_epoch", "3", "--data_path", "/x", "--out_folder", "o", "--epochs", "40",
        "--set", "lr=0.2", "--set", "milestones=[60, 120, 160]", "--lr_schedule", "cutout",
    ])
    config = config_from_args(args)
    assert config.loss == "soft-labels" and config.beta == 5.0  # from the YAML
    assert config.epochs == 40  # flag beats YAML
    assert config.lr == 0.2  # --set beats YAML
    assert config.architecture == "ResNet18" and config.lambda_fine == 0.5
    assert config.coarse_loss_start_epoch == 3.0 and config.data_dir == "/x" and config.out_folder == "o"
    assert config.milestones == (60, 120, 160) and config.lr_schedule == "cutout"
    hyphen = config_from_args(build_parser().parse_args(["--data-dir", "/y", "--batch-size", "7"]))
    assert hyphen.data_dir == "/y" and hyphen.batch_size == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--architecture", "vgg"],
         "architecture 'vgg' is unknown; valid: plainnet, resnet18, speednet, wrn28-10"),
        (["--loss", "focal"], "loss 'focal' is unknown; valid: cosine-distance, cosine-plus-xent, "
                              "cross-entropy"),
        (["--lr_schedule", "step"], "lr_schedule 'step' is unknown; valid: constant, cosine, cutout"),
        (["--epochs", "-3"], "epochs=-3 is out of range; valid: a positive integer"),
        (["--batch_size", "0"], "batch_size=0 is out of range; valid: a positive integer"),
        (["--hierarchy", "cifar100-l9"], "hierarchy 'cifar100-l9' is neither a built-in"),
        (["--set", "colour=red"], "unknown key 'colour'"),
        (["--loss", "hierarchical-cross-entropy", "--alpha", "-1"], "alpha"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, args, message) -> None:
    argv = [*args, "--data-dir", str(tmp_path / "nowhere"), "--out_folder", str(tmp_path / "o")]
    assert exit_status(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("lr: 0.1\nloss: soft-labels\n".encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"loss: soft-labels\nbeta: 5\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 25)"),
        (b"loss: soft-labels\nbeta: [5\n", "is not valid YAML (line 3, column 1: expected ',' or ']'"),
        (b"epochs: 3\n  lr: 0.1\n", "is not valid YAML (line 2, column 5: mapping values are not allowed"),
        (b"loss: !!python/object/apply:os.system [true]\n", "is not valid YAML (line 1, column 7: could not "
                                                          "determine a constructor"),
        (b"- loss\n- soft-labels\n", "must hold a mapping of keys to values, not a list"),
    ],
    ids=["utf-16", "latin-1", "unclosed-list", "bad-indent", "python-tag", "list"],
)
def test_a_config_file_that_is_not_utf8_yaml_is_one_line(tmp_path, capsys, content, problem) -> None:
    """``--config`` naming a file that is not UTF-8 or not YAML: one line naming the file and what is
    wrong, exit 2, no traceback (today: UnicodeDecodeError, or YAML's own multi-line error); also with
    ``--check``."""
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    for check in ([], ["--check"]):
        proc = run_cli("--config", str(config), "--out_folder", str(tmp_path / "o"), *check, capsys=capsys)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"python -m hiercls.train: error: config file {str(config)!r} {problem}")
    assert not (tmp_path / "o").exists()


def test_missing_data_folder(tmp_path, capsys) -> None:
    code = main(["--data-dir", str(tmp_path / "nowhere"), "--out_folder", str(tmp_path / "o"), *SMALL,
                 "--set", "download=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "ImageFolder" in err and "cifar-100-python" in err


def test_unreadable_image_is_named(tmp_path, capsys) -> None:
    for split in ("train", "val"):
        folder = tmp_path / "data" / split / "0"
        folder.mkdir(parents=True)
        (folder / "0_0.jpg").write_bytes(b"not a jpeg")
    assert main(["--data-dir", str(tmp_path / "data"), "--out_folder", str(tmp_path / "o"), *SMALL]) == 2
    assert "0_0.jpg" in capsys.readouterr().err


def test_existing_results_are_never_overwritten(cifar_dir, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "final_test_results.json").write_text('{"test_accuracy": 77.0}')
    assert main(["--data-dir", str(cifar_dir), "--out_folder", str(out), *SMALL]) == 2
    assert "already holds results (final_test_results.json)" in capsys.readouterr().err
    assert json.loads((out / "final_test_results.json").read_text()) == {"test_accuracy": 77.0}


def test_end_to_end_with_test_evaluation(cifar_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    proc = run_cli("--architecture", "plainnet", "--loss", "cross-entropy", "--epochs", "2",
                   "--max-train-samples", "200", "--val-size", "100", "--batch_size", "50",
                   "--data_path", str(cifar_dir), "--out_folder", str(out), capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stdout and "test: accuracy" in proc.stdout
    results = json.loads((out / "final_test_results.json").read_text())
    assert results["total_samples"] == 10_000 and results["topk"] == [1, 5, 10, 20, 100]
    m = results["metrics"]
    assert results["test_accuracy"] == pytest.approx(100 * (1 - m["top1_error"]))
    assert results["num_mistakes"] == round(m["top1_error"] * 10_000)
    assert results["hierarchical_distance_avg"][0] == pytest.approx(m["hdist@1"])
    assert results["hierarchical_distance_mistakes"][0] == pytest.approx(m["mistake_severity"])
    assert results["coarse_accuracy"] == pytest.approx(100 * (1 - m["coarse_error"]))
    assert results["hierarchical_distance_top"][-1] == 0.0  # the true class is always in the top 100
    assert results["epoch"] == 2 and results["best_val_model"]["epoch"] in (1, 2)
    # hiercls.evaluate rescores the saved model on the test set without retraining. A subprocess on
    # purpose: this is the one test of ``python -m hiercls.evaluate`` as a user runs it, the module
    # entry and a real process whose whole stdout is the JSON (a log line there would break a pipe into
    # a JSON reader); tests/test_faults_train.py calls its main() in-process.
    scored = subprocess.run([sys.executable, "-m", "hiercls.evaluate", str(out), "--split", "test"],
                            capture_output=True, text=True, timeout=900)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["top1_error"] == pytest.approx(m["top1_error"], abs=1e-9)


@pytest.mark.parametrize(
    "extra",
    [
        ["--loss", "hierarchical-cross-entropy", "--alpha", "0.4"],
        ["--loss", "soft-labels", "--beta", "10"],
        ["--loss", "simple-hierarchy", "--lambda_fine", "1", "--lambda_coarse", "0.5",
         "--coarse_loss_start_epoch", "0.5", "--coarse_loss_ramp_epochs", "0.2"],
    ],
)
def test_hierarchy_losses_on_wordnet(cifar_dir, tmp_path, capsys, extra) -> None:
    out = tmp_path / "run"
    proc = run_cli(*extra, "--hierarchy", "cifar100-wordnet", "--data_path", str(cifar_dir),
                   "--out_folder", str(out), *SMALL, capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    history = json.loads((out / "all_epoch_results.json").read_text())
    assert history[-1]["status"] == "ok"
    assert (out / "config.yaml").read_text().count("hierarchy: cifar100-wordnet") == 1


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir, tmp_path_factory):
    """The uninterrupted run, in this process (what the interrupted and resumed child process must equal)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_cli("--data_path", str(cifar_dir), "--out_folder", str(out), *_RESUME_ARGS)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "all_epoch_results.json").read_text())


_RESUME_ARGS = ["--max-train-samples", "1000", "--val-size", "100", "--batch_size", "50", "--epochs", "2",
                "--no-test", "--device", "cpu", "--num_threads", "1"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_epoch_2_then_resume(cifar_dir, tmp_path, capsys, uninterrupted, sig) -> None:
    # A subprocess on purpose: a real SIGINT/SIGTERM sent to the training process by another one, and
    # the exit status 130 of that process (the resume that follows needs no process of its own).
    out = tmp_path / "run"
    args = ["--data_path", str(cifar_dir), "--out_folder", str(out), *_RESUME_ARGS]
    proc = subprocess.Popen([sys.executable, "-m", "hiercls.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    results = out / "all_epoch_results.json"
    deadline = time.monotonic() + 900
    while not results.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside epoch 2 (an epoch of 1,000 images takes several seconds)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "checkpoints are written every epoch, so --resume continues from epoch 2" in stderr
    assert len(json.loads(results.read_text())) == 1
    resumed = run_cli(*args, "--resume", capsys=capsys)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert without_timing(json.loads(results.read_text())) == without_timing(uninterrupted)


def test_check_validates_and_prints_the_resolved_config_without_work(tmp_path, capsys, monkeypatch) -> None:
    """``--check``: every check a run makes before training, the resolved config (YAML) on stdout, and
    nothing written, extracted, downloaded or loaded; the statuses a run would exit with."""
    import yaml

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()  # exists, no CIFAR-100 in it: a run would have torchvision download into it
    argv = ["--loss", "hierarchical-cross-entropy", "--alpha", "0.4", "--data-dir", str(data),
            "--out_folder", str(out), "--epochs", "3", "--check"]
    proc = run_cli(*argv, capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved == config_from_args(build_parser().parse_args(argv)).resolved().to_dict()
    assert resolved["alpha"] == 0.4 and resolved["epochs"] == 3 and resolved["data_dir"] == str(data)
    assert "check: ok" in proc.stderr and "downloaded there by torchvision first" in proc.stderr
    assert not out.exists() and list(data.iterdir()) == []
    # no --data-dir: found as a run finds it (here $HIERCLS_DATA_DIR, a folder with the layout), recorded
    found = tmp_path / "found"
    for split in ("train", "val"):
        (found / split).mkdir(parents=True)
    monkeypatch.setenv("HIERCLS_DATA_DIR", str(found))
    proc = run_cli("--out_folder", str(out), "--check", capsys=capsys)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["data_dir"] == str(found.resolve())
    # what a run refuses, --check refuses with the run's status
    refused = [
        (["--data-dir", str(tmp_path / "nowhere")], 2, "does not exist"),
        (["--data-dir", str(data), "--set", "download=false"], 2, "holds no CIFAR-100 layout"),
        (["--loss", "focal"], 2, "loss 'focal' is unknown"),
        (["--out_folder", str(tmp_path / "file" / "sub")], 3, "is a regular file"),
        (["--resume", "--overwrite"], 2, "exclude each other"),
    ]
    (tmp_path / "file").write_text("x")
    for extra, status, message in refused:
        proc = run_cli("--out_folder", str(out), *extra, "--check", capsys=capsys)
        assert proc.returncode == status and message in proc.stderr, (extra, proc.stderr)
    # existing results: refused without --resume or --overwrite; --overwrite deletes nothing under --check
    out.mkdir()
    (out / "final_test_results.json").write_text("{}")
    assert run_cli("--out_folder", str(out), "--check", capsys=capsys).returncode == 2
    proc = run_cli("--out_folder", str(out), "--resume", "--check", capsys=capsys)
    assert proc.returncode == 2 and "no checkpoints/last.pth" in proc.stderr
    assert run_cli("--out_folder", str(out), "--overwrite", "--check", capsys=capsys).returncode == 0
    assert (out / "final_test_results.json").read_text() == "{}"
    assert "--check" in build_parser().format_help()
