"""report.json: what a package holds, how well it does, and where it came from.

`release publish` reads it: each `release_info` entry is an `edgeops.schemas.ReleaseInfo`
dumped by alias without `version`, which publish assigns.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from edgeops.errors import PackagingError
from edgeops.packaging.evaluate import PairEvaluation
from edgeops.packaging.export import OUTPUT_NAME
from edgeops.packaging.quantize import QuantizationConfig
from edgeops.packaging.source import SourceModel
from edgeops.schemas import GoldenVectors, ModelFormat, MonitoringReference, ReleaseInfo
from edgeops.tasks.base import Task

REPORT_SCHEMA = 1
FORMATS: tuple[ModelFormat, ModelFormat] = ("fp32", "int8")
# Any valid version proves the rest of an entry round-trips; publish assigns the real one.
_PLACEHOLDER_VERSION = 1


def release_info_entry(
    task: Task,
    fmt: ModelFormat,
    golden: GoldenVectors,
    drift_reference: list[list[int]],
    monitoring: MonitoringReference | None = None,
) -> dict[str, Any]:
    """A ReleaseInfo for one model file, dumped by alias, without `version`.

    `monitoring` is the model's reference and calibration on the held-out split.

    Raises PackagingError if the result would not validate once publish adds a version.
    """
    try:
        info = ReleaseInfo(
            model=task.name,
            version=_PLACEHOLDER_VERSION,
            format=fmt,
            input=task.input_schema,
            output_name=OUTPUT_NAME,
            num_classes=task.num_classes,
            golden=golden,
            drift_reference=drift_reference,
            monitoring=monitoring,
        )
    except ValidationError as err:
        raise PackagingError(f"task {task.name!r} cannot make a valid release: {err}") from err
    entry = info.model_dump(mode="json", by_alias=True)
    del entry["version"]
    check_release_info_entry(entry)
    return entry


def check_release_info_entry(entry: dict[str, Any]) -> ReleaseInfo:
    """Validate an entry as publish will: with a version added."""
    if "version" in entry:
        raise PackagingError("a packaged release_info must not carry a version")
    try:
        return ReleaseInfo.model_validate({**entry, "version": _PLACEHOLDER_VERSION})
    except ValidationError as err:
        raise PackagingError(f"release_info does not round-trip: {err}") from err


def build_report(
    *,
    task: Task,
    task_spec: str,
    source: SourceModel,
    quantization: QuantizationConfig,
    calibration: dict[str, Any],
    accuracy_budget_pp: float,
    accuracy_drop_pp: float,
    evaluation: PairEvaluation,
    release_info: dict[str, dict[str, Any]],
    golden: dict[str, Any],
    files: dict[str, str],
    sha256: dict[str, str],
    torch_metrics: dict[str, float],
    data_fingerprint: str,
    code_version: str,
    training_run_id: int | None = None,
    drift_source: str = "train_split",
) -> dict[str, Any]:
    """The report.json document (schema 1)."""
    per_format = {"fp32": evaluation.fp32, "int8": evaluation.int8}
    metrics: dict[str, float] = {
        "fp32_accuracy": evaluation.fp32.accuracy,
        "int8_accuracy": evaluation.int8.accuracy,
        "accuracy_drop_pp": accuracy_drop_pp,
        "agreement": evaluation.agreement,
        "size_ratio": evaluation.size_ratio,
        "fp32_p50_latency_us": evaluation.fp32.p50_latency_us,
        "int8_p50_latency_us": evaluation.int8.p50_latency_us,
        **{f"torch_test_{name}": float(value) for name, value in torch_metrics.items()},
    }
    if source.train_loss is not None:
        metrics["train_loss"] = source.train_loss
    return {
        "schema": REPORT_SCHEMA,
        "model": task.name,
        "task": task_spec,
        "files": files,
        "sha256": sha256,
        "sizes_bytes": {fmt: per_format[fmt].size_bytes for fmt in FORMATS},
        "size_ratio": evaluation.size_ratio,
        "accuracy": {fmt: per_format[fmt].accuracy for fmt in FORMATS},
        "agreement": evaluation.agreement,
        "p50_latency_us": {fmt: per_format[fmt].p50_latency_us for fmt in FORMATS},
        "quantization": {
            **quantization.describe(),
            "accuracy_budget_pp": accuracy_budget_pp,
            "calibration": calibration,
        },
        "release_info": release_info,
        "metrics": metrics,
        "training": {
            "origin": source.origin,
            "config": asdict(source.train_config) if source.train_config else None,
            "training_run_id": training_run_id,
            "drift_reference": drift_source,
        },
        "lineage": {
            "data_fingerprint": data_fingerprint,
            "code_version": code_version,
            "training_run_id": training_run_id,
            "parent_version": None,
            "checkpoint_sha256": source.checkpoint_sha256,
        },
        "golden": golden,
    }
