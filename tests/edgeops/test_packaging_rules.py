"""Packaging rules that need no model: the gate, golden tolerances, argument checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeops
from edgeops.errors import ConfigError, QuantizationGateError, TaskError
from edgeops.packaging import (
    GOLDEN_ATOL_FLOOR,
    QuantizationConfig,
    check_accuracy_gate,
    golden_atol,
    package_model,
)
from edgeops.packaging.lineage import code_version
from edgeops.packaging.quantize import ArrayCalibrationReader

pytestmark = [pytest.mark.pipeline]


def test_importing_packaging_loads_no_torch_onnx_or_onnxruntime() -> None:
    code = (
        "import sys, edgeops.packaging; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("fp32", "int8", "budget_pp", "passes"),
    [
        (0.98, 0.98, 1.0, True),  # no loss
        (0.98, 0.99, 0.0, True),  # int8 better than fp32
        (0.98, 0.97, 1.0, True),  # exactly the budget passes
        (0.98, 0.9699, 1.0, False),  # just past it
        (0.9778, 0.7444, 1.0, False),  # a collapsed int8 model
        (0.98, 0.975, 0.0, False),  # zero budget refuses any loss
    ],
)
def test_accuracy_gate(fp32: float, int8: float, budget_pp: float, passes: bool) -> None:
    if passes:
        assert check_accuracy_gate(fp32, int8, budget_pp) == pytest.approx((fp32 - int8) * 100)
    else:
        with pytest.raises(QuantizationGateError):
            check_accuracy_gate(fp32, int8, budget_pp)


def test_gate_refusal_names_both_accuracies_and_the_budget() -> None:
    with pytest.raises(QuantizationGateError) as refused:
        check_accuracy_gate(0.9778, 0.7444, 1.0)
    message = str(refused.value)
    assert "int8 accuracy 74.44%" in message
    assert "fp32 accuracy 97.78%" in message
    assert "23.34 pp below" in message
    assert "budget of 1.00 pp" in message


def test_negative_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        check_accuracy_gate(0.9, 0.9, -0.5)


@pytest.mark.parametrize(
    ("fmt", "observed", "expected"),
    [
        ("fp32", 0.0, 1e-4),  # deterministic runs: the floor
        ("int8", 0.0, 1e-3),
        ("fp32", 1e-6, 1e-4),  # still under the floor after the safety factor
        ("int8", 4e-3, 4e-2),  # above the floor: 10x what was observed
    ],
)
def test_golden_atol(fmt: str, observed: float, expected: float) -> None:
    assert golden_atol(fmt, observed) == pytest.approx(expected)  # type: ignore[arg-type]


def test_golden_atol_floors_are_documented_values() -> None:
    assert GOLDEN_ATOL_FLOOR == {"fp32": 1e-4, "int8": 1e-3}
    with pytest.raises(ValueError):
        golden_atol("fp32", float("nan"))


def test_calibration_reader_batches_and_rewinds() -> None:
    samples = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    reader = ArrayCalibrationReader("input", samples, batch_size=4)

    batches = [reader.get_next() for _ in range(4)]

    assert len(reader) == 3
    assert [b["input"].shape[0] for b in batches[:3] if b] == [4, 4, 2]
    assert batches[3] is None
    reader.rewind()
    first = reader.get_next()
    assert first is not None and np.array_equal(first["input"], samples[:4])


def test_unknown_quantization_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown quantization method 'float16'"):
        QuantizationConfig(method="float16")  # type: ignore[arg-type]


# Argument errors are raised before any data is loaded or model trained, and write nothing.


def test_unknown_task_is_a_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        package_model("nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(ConfigError, match="checkpoint .*missing.pt.* does not exist"):
        package_model("digits", tmp_path / "out", checkpoint=missing)
    assert not (tmp_path / "out").exists()


def test_checkpoint_and_train_config_together_are_refused(tmp_path: Path) -> None:
    from edgeops.tasks import TrainConfig

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(ConfigError, match="not both"):
        package_model("digits", tmp_path / "out", checkpoint=checkpoint, train_config=TrainConfig())


def test_non_empty_out_dir_is_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        package_model("digits", out)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("out", [".", ".."])
def test_out_path_must_name_a_folder(out: str) -> None:
    with pytest.raises(ConfigError, match="must name a folder"):
        package_model("digits", out)


def test_out_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(ConfigError, match="not a directory"):
        package_model("digits", out)


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        (np.zeros((4, 3), dtype=np.float32), r"shape \(4, 3\); expected \(n, 64\)"),
        (np.zeros((0, 64), dtype=np.float32), "at least one sample"),
        ([["a"] * 64], "not a numeric array"),
    ],
)
def test_bad_calibration_override_is_refused(
    tmp_path: Path, calibration: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        package_model("digits", tmp_path / "out", calibration_override=calibration)


@pytest.mark.parametrize("budget", [-1.0, float("nan")])
def test_bad_budget_is_refused(tmp_path: Path, budget: float) -> None:
    with pytest.raises(ConfigError, match="accuracy budget"):
        package_model("digits", tmp_path / "out", accuracy_budget_pp=budget)


def test_code_version_starts_with_the_package_version() -> None:
    version = code_version()
    assert version == edgeops.__version__ or version.startswith(f"{edgeops.__version__}+g")
