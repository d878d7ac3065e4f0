"""Packaging the digits task for real: torch -> ONNX -> int8 -> onnxruntime.

One model is trained per test process (packaging_support); each test packages it again
from that checkpoint, which costs seconds, not a training run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edgeops
from edgeops.errors import ConfigError, QuantizationGateError
from edgeops.packaging import (
    FP32_FILE,
    INT8_FILE,
    OUTPUT_NAME,
    REPORT_FILE,
    PackageReport,
    export_onnx,
    load_checkpoint,
    package_model,
)
from edgeops.schemas import ReleaseInfo
from edgeops.tasks import Task, load_task
from tests.edgeops.packaging_support import write_digits_checkpoint

pytestmark = [pytest.mark.pipeline, pytest.mark.integration]

REPORT_KEYS = {
    "schema",
    "model",
    "task",
    "files",
    "sha256",
    "sizes_bytes",
    "size_ratio",
    "accuracy",
    "agreement",
    "p50_latency_us",
    "quantization",
    "release_info",
    "metrics",
    "training",
    "lineage",
    "golden",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def checkpoint(workdir: Path) -> Path:
    return write_digits_checkpoint(workdir / "digits.pt")


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("digits")


@pytest.fixture(scope="module")
def packaged(workdir: Path, checkpoint: Path) -> PackageReport:
    return package_model("digits", workdir / "package-digits", checkpoint=checkpoint)


@pytest.fixture
def onnxruntime_session() -> Iterator[type]:
    import onnxruntime

    yield onnxruntime.InferenceSession


# Acceptance on digits -------------------------------------------------------------------


def test_int8_is_small_accurate_and_agrees_with_fp32(packaged: PackageReport) -> None:
    report = packaged.data

    assert report["sizes_bytes"]["int8"] <= 0.35 * report["sizes_bytes"]["fp32"]
    assert report["accuracy"]["fp32"] >= 0.9
    assert report["accuracy"]["int8"] >= report["accuracy"]["fp32"] - 0.01
    assert report["agreement"] >= 0.98
    assert report["p50_latency_us"]["fp32"] > 0 and report["p50_latency_us"]["int8"] > 0


def test_package_holds_exactly_the_two_models_and_the_report(packaged: PackageReport) -> None:
    assert sorted(p.name for p in packaged.out_dir.iterdir()) == sorted(
        [FP32_FILE, INT8_FILE, REPORT_FILE]
    )
    assert json.loads(packaged.report_path.read_text()) == packaged.data


def test_report_has_the_shape_release_publish_reads(
    packaged: PackageReport, checkpoint: Path, task: Task
) -> None:
    report = packaged.data

    assert set(report) == REPORT_KEYS
    assert report["schema"] == 1 and report["model"] == "digits" and report["task"] == "digits"
    for fmt, path in (("fp32", packaged.fp32_path), ("int8", packaged.int8_path)):
        assert report["sizes_bytes"][fmt] == path.stat().st_size
        assert report["sha256"][fmt] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["size_ratio"] == pytest.approx(
        report["sizes_bytes"]["int8"] / report["sizes_bytes"]["fp32"]
    )
    assert report["quantization"]["method"] == "static"
    assert report["quantization"]["accuracy_budget_pp"] == 1.0
    lineage = report["lineage"]
    assert lineage["data_fingerprint"] == task.load_data().fingerprint()
    assert lineage["code_version"].startswith(edgeops.__version__)
    assert lineage["training_run_id"] is None and lineage["parent_version"] is None
    assert lineage["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert all(isinstance(value, float) for value in report["metrics"].values())


@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_release_info_round_trips_once_publish_adds_a_version(
    packaged: PackageReport, task: Task, fmt: str
) -> None:
    entry = packaged.data["release_info"][fmt]

    assert "version" not in entry
    info = ReleaseInfo.model_validate({**entry, "version": 1})
    assert info.model == "digits" and info.format == fmt
    assert info.input == task.input_schema
    assert info.output_name == OUTPUT_NAME and info.num_classes == 10
    assert info.drift_reference is not None
    assert np.asarray(info.drift_reference).shape == (64, task.input_schema.num_bins)
    assert np.asarray(info.drift_reference).sum(axis=1).tolist() == [1347] * 64


@pytest.mark.parametrize(("fmt", "filename"), [("fp32", FP32_FILE), ("int8", INT8_FILE)])
def test_golden_vectors_reproduce_on_a_fresh_session(
    packaged: PackageReport, task: Task, fmt: str, filename: str, onnxruntime_session: type
) -> None:
    info = ReleaseInfo.model_validate({**packaged.data["release_info"][fmt], "version": 1})
    session = onnxruntime_session(
        str(packaged.out_dir / filename), providers=["CPUExecutionProvider"]
    )
    inputs = np.asarray(info.golden.inputs, dtype=np.float32)

    (outputs,) = session.run([info.output_name], {info.input.name: inputs})

    assert len(inputs) == 8
    assert np.array_equal(inputs, task.load_data().x_test[:8])
    assert info.golden.atol >= {"fp32": 1e-4, "int8": 1e-3}[fmt]
    assert np.max(np.abs(outputs - np.asarray(info.golden.outputs))) <= info.golden.atol


def test_int8_output_differs_from_fp32_more_than_the_fp32_atol(packaged: PackageReport) -> None:
    # The golden check must tell the formats apart, or it would not catch a swapped file.
    fp32 = np.asarray(packaged.data["release_info"]["fp32"]["golden"]["outputs"])
    int8 = np.asarray(packaged.data["release_info"]["int8"]["golden"]["outputs"])
    assert np.max(np.abs(fp32 - int8)) > packaged.data["release_info"]["fp32"]["golden"]["atol"]


# The exported model ---------------------------------------------------------------------


def test_exported_model_has_named_io_dynamic_batch_and_probabilities(
    packaged: PackageReport, onnxruntime_session: type
) -> None:
    import onnx

    model = onnx.load(str(packaged.fp32_path))
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    batch_dim = graph_input.type.tensor_type.shape.dim[0]
    session = onnxruntime_session(str(packaged.fp32_path), providers=["CPUExecutionProvider"])
    x = load_task("digits").load_data().x_test[:5]

    assert graph_input.name == "input" and graph_output.name == OUTPUT_NAME
    assert batch_dim.dim_param and not batch_dim.dim_value
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    for batch in (x[:1], x):
        (probabilities,) = session.run(None, {"input": batch})
        assert probabilities.shape == (len(batch), 10)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_export_is_deterministic(
    tmp_path: Path, packaged: PackageReport, checkpoint: Path, task: Task
) -> None:
    model = load_checkpoint(task, checkpoint).model

    again = export_onnx(model, task.input_schema, tmp_path / "again.onnx")

    assert again.read_bytes() == packaged.fp32_path.read_bytes()


# The gate and failure modes ---------------------------------------------------------------


def test_gate_refuses_int8_calibrated_on_zeros_and_writes_nothing(
    tmp_path: Path, checkpoint: Path
) -> None:
    out = tmp_path / "package"
    out.mkdir()  # an existing empty folder is accepted as the target, and stays empty
    zeros = np.zeros((256, 64), dtype=np.float32)

    with pytest.raises(QuantizationGateError) as refused:
        package_model("digits", out, checkpoint=checkpoint, calibration_override=zeros)

    message = str(refused.value)
    assert "int8 accuracy" in message and "fp32 accuracy" in message
    assert "budget of 1.00 pp" in message and str(out) in message
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]  # no build left behind


def test_dynamic_quantization_replaces_a_non_empty_dir_with_overwrite(
    tmp_path: Path, checkpoint: Path
) -> None:
    out = tmp_path / "package"
    out.mkdir()
    (out / "old.txt").write_text("stale")

    result = package_model(
        "digits", out, checkpoint=checkpoint, quantization="dynamic", overwrite=True
    )

    assert sorted(p.name for p in out.iterdir()) == sorted([FP32_FILE, INT8_FILE, REPORT_FILE])
    assert result.data["quantization"]["method"] == "dynamic"
    assert result.data["quantization"]["calibration"]["samples"] == 0
    assert result.data["size_ratio"] <= 0.35
    assert result.data["accuracy"]["int8"] >= result.data["accuracy"]["fp32"] - 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]


def test_corrupt_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ConfigError, match="corrupt.pt.* is not a readable torch state_dict"):
        package_model("digits", tmp_path / "out", checkpoint=corrupt)
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_model_is_a_config_error(tmp_path: Path) -> None:
    import torch

    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(ConfigError, match="does not fit the 'digits' model"):
        package_model("digits", tmp_path / "out", checkpoint=other)


def test_checkpoint_that_is_not_a_state_dict_is_a_config_error(tmp_path: Path) -> None:
    import torch

    not_state = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_state)
    with pytest.raises(ConfigError, match="holds a list, not a state_dict"):
        package_model("digits", tmp_path / "out", checkpoint=not_state)


def test_checkpoint_wrapped_in_a_state_dict_key_loads(
    checkpoint: Path, tmp_path: Path, task: Task
) -> None:
    import torch

    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": torch.load(checkpoint, weights_only=True), "epoch": 3}, wrapped)
    assert load_checkpoint(task, wrapped).origin == "checkpoint"
