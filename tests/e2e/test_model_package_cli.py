"""`edgeops model package` as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeops.exit_codes import ExitCode
from server.cli.model import format_summary
from tests.cli_support import run_edgeops
from tests.edgeops.packaging_support import write_digits_checkpoint

pytestmark = [pytest.mark.pipeline, pytest.mark.e2e]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_checkpoint(tmp_path_factory.mktemp("checkpoint") / "digits.pt")


def test_package_trains_exports_quantizes_and_reports(tmp_path: Path) -> None:
    done = run_edgeops(
        "model",
        "package",
        "--task",
        "digits",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--json",
        cwd=tmp_path,
    )

    assert done.returncode == ExitCode.OK, done.stderr
    summary = json.loads(done.stdout)
    package = tmp_path / "package-digits"  # the default --out
    assert Path(summary["out_dir"]) == Path("package-digits")
    assert sorted(p.name for p in package.iterdir()) == [
        "model.fp32.onnx",
        "model.int8.onnx",
        "report.json",
    ]
    assert summary["size_ratio"] <= 0.35
    report = json.loads((package / "report.json").read_text())
    assert report["sizes_bytes"] == summary["sizes_bytes"]
    assert report["training"]["config"]["epochs"] == 3 and report["training"]["config"]["seed"] == 1
    for step in ("training", "exporting", "quantizing", "evaluating"):
        assert step in done.stderr


def test_gate_refusal_exits_4_and_writes_nothing(tmp_path: Path, checkpoint: Path) -> None:
    np.save(tmp_path / "zeros.npy", np.zeros((64, 64), dtype=np.float32))

    done = run_edgeops(
        "model",
        "package",
        "--task",
        "digits",
        "--checkpoint",
        str(checkpoint),
        "--calibration",
        "zeros.npy",
        "--out",
        "pkg",
        cwd=tmp_path,
    )

    assert done.returncode == ExitCode.GATE_REFUSED, done.stderr
    assert "error: int8 accuracy" in done.stderr
    assert "below fp32 accuracy" in done.stderr and "budget of 1.00 pp" in done.stderr
    assert "nothing was written" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zeros.npy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "no_such_module:task"], "cannot import task module 'no_such_module'"),
        (
            ["--task", "digits", "--checkpoint", "missing.pt"],
            "checkpoint 'missing.pt' does not exist",
        ),
        (
            ["--task", "digits", "--checkpoint", "corrupt.pt"],
            "checkpoint 'corrupt.pt' is not a readable torch state_dict",
        ),
        (
            ["--task", "digits", "--quantization", "fp16"],
            "--quantization must be one of static, dynamic",
        ),
        (
            ["--task", "digits", "--calibration", "missing.npy"],
            "calibration file 'missing.npy' does not exist",
        ),
        (["--task", "digits", "--out", "full"], "'full' exists and is not empty"),
    ],
)
def test_bad_input_exits_3_naming_what_is_wrong(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage" * 20)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")

    done = run_edgeops("model", "package", *args, cwd=tmp_path)

    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "package-digits").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_checkpoint_with_epochs_is_refused(tmp_path: Path) -> None:
    done = run_edgeops(
        "model",
        "package",
        "--task",
        "digits",
        "--checkpoint",
        "x.pt",
        "--epochs",
        "3",
        cwd=tmp_path,
    )
    assert done.returncode == ExitCode.CONFIG
    assert "cannot be used with --checkpoint" in done.stderr


def test_help_teaches_the_options(tmp_path: Path) -> None:
    done = run_edgeops("model", "package", "--help", cwd=tmp_path)
    assert done.returncode == ExitCode.OK
    for option in (
        "--task",
        "--checkpoint",
        "--out",
        "--quantization",
        "--accuracy-budget-pp",
        "--epochs",
        "--seed",
        "--overwrite",
        "--json",
        "--calibration",
    ):
        assert option in done.stdout


def test_human_summary_is_a_small_table() -> None:
    report = {
        "model": "digits",
        "sizes_bytes": {"fp32": 677760, "int8": 188447},
        "size_ratio": 0.278,
        "accuracy": {"fp32": 0.9733, "int8": 0.9711},
        "p50_latency_us": {"fp32": 30.5, "int8": 42.1},
        "agreement": 0.9978,
        "quantization": {"method": "static", "accuracy_budget_pp": 1.0},
    }

    text = format_summary(report, Path("package-digits"))

    assert "Packaged digits (static int8) into package-digits" in text
    assert "661.9 KiB" in text and "184.0 KiB" in text and "x0.278" in text
    assert "97.33%" in text and "97.11%" in text and "-0.22 pp (budget 1 pp)" in text
    assert "30.5 us" in text and "42.1 us" in text and "99.78%" in text
