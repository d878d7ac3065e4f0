"""The packaging pipeline: train or load -> ONNX fp32 -> int8 -> evaluate -> gate -> package.

A package is a directory holding model.fp32.onnx, model.int8.onnx and report.json. It is
built in a hidden temporary directory next to `out_dir` and renamed into place only when
every step, the accuracy gate included, has passed: a refused or failed run leaves nothing
in `out_dir` (a `kill -9` mid-run can leave a `.<name>.building-*` directory beside it).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edgeops.atomic_io import fsync_dir, fsync_path, write_json_atomic
from edgeops.errors import ConfigError, QuantizationGateError
from edgeops.packaging.evaluate import MIN_LATENCY_RUNS, PairEvaluation, evaluate_pair
from edgeops.packaging.export import export_onnx
from edgeops.packaging.gate import check_accuracy_gate
from edgeops.packaging.golden import GOLDEN_ATOL_FLOOR, SAFETY_FACTOR, build_golden
from edgeops.packaging.lineage import code_version
from edgeops.packaging.monitoring import monitoring_reference
from edgeops.packaging.quantize import QuantizationConfig, QuantizationMethod, quantize_onnx
from edgeops.packaging.report import FORMATS, build_report, release_info_entry
from edgeops.packaging.source import (
    SourceModel,
    check_checkpoint_path,
    file_sha256,
    load_checkpoint,
    train_model,
)
from edgeops.schemas import InputSchema
from edgeops.sketches import feature_histograms
from edgeops.tasks import load_task
from edgeops.tasks.base import Dataset, Task, TrainConfig

logger = logging.getLogger(__name__)

FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "report.json"
FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}
DIR_MODE = 0o755
FILE_MODE = 0o644

ProgressCallback = Callable[[str], None]
"""Called with a short description when a step starts (for progress output)."""


@dataclass(frozen=True)
class PackageReport:
    """A finished package: where it is, what report.json says, and the measurements."""

    out_dir: Path
    data: Mapping[str, Any]  # the content of report.json
    evaluation: PairEvaluation

    @property
    def fp32_path(self) -> Path:
        return self.out_dir / FP32_FILE

    @property
    def int8_path(self) -> Path:
        return self.out_dir / INT8_FILE

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE


@dataclass(frozen=True)
class _Plan:
    """The checked arguments of one packaging run."""

    task: Task
    task_spec: str
    out_dir: Path
    quantization: QuantizationConfig
    calibration_override: NDArray[np.float32] | None
    accuracy_budget_pp: float
    golden_count: int
    latency_runs: int
    training_run_id: int | None = None
    drift_reference: list[list[int]] | None = None


def package_model(
    task: Task | str,
    out_dir: Path | str,
    *,
    checkpoint: Path | str | None = None,
    train_config: TrainConfig | None = None,
    quantization: QuantizationMethod | QuantizationConfig = "static",
    accuracy_budget_pp: float = 1.0,
    calibration_override: ArrayLike | None = None,
    golden_count: int = 8,
    overwrite: bool = False,
    latency_runs: int = MIN_LATENCY_RUNS,
    task_spec: str | None = None,
    progress: ProgressCallback | None = None,
    training_run_id: int | None = None,
    drift_reference: ArrayLike | None = None,
) -> PackageReport:
    """Package a task's model as fp32 and int8 ONNX files with a report, or refuse.

    The model is trained with `task.train` (`train_config`, default TrainConfig()) unless
    `checkpoint` names a torch state_dict for the task's model. Static quantization
    calibrates on `task.calibration_data(dataset)` unless `calibration_override` gives other
    inputs. `task` may be a Task or a spec for `load_task`; `task_spec` is what report.json
    records (default: the spec given, else the task's name).

    Packaging a federated training run: `checkpoint` is the run's final weights,
    `training_run_id` goes into report.json's lineage, and `drift_reference` (features x
    bins counts, e.g. the fleet's securely aggregated histogram) replaces the histogram of
    the task's training split as the release's drift reference.

    Raises ConfigError for bad arguments (checked before any work), a missing or unfit
    checkpoint, or an `out_dir` that exists and is not empty (unless `overwrite`);
    QuantizationGateError when int8 accuracy falls more than `accuracy_budget_pp`
    percentage points below fp32; PackagingError when export, quantization or evaluation
    fails. On any error `out_dir` is left as it was.
    """
    say = progress or (lambda _message: None)
    if isinstance(task, str):
        task_spec = task_spec or task
        task = load_task(task)
    _check_arguments(accuracy_budget_pp, golden_count, checkpoint, train_config)
    plan = _Plan(
        task=task,
        task_spec=task_spec or task.name,
        out_dir=Path(out_dir),
        quantization=(
            quantization
            if isinstance(quantization, QuantizationConfig)
            else QuantizationConfig(method=quantization)
        ),
        calibration_override=(
            _as_calibration(calibration_override, task.input_schema)
            if calibration_override is not None
            else None
        ),
        accuracy_budget_pp=accuracy_budget_pp,
        golden_count=golden_count,
        latency_runs=latency_runs,
        training_run_id=training_run_id,
        drift_reference=(
            _as_drift_reference(drift_reference, task.input_schema)
            if drift_reference is not None
            else None
        ),
    )
    checkpoint_path = check_checkpoint_path(Path(checkpoint)) if checkpoint is not None else None
    _check_out_dir(plan.out_dir, overwrite)

    source: SourceModel | None = None
    if checkpoint_path is not None:  # before the data, so a bad checkpoint fails fast
        say(f"loading checkpoint {checkpoint_path}")
        source = load_checkpoint(task, checkpoint_path)
    say(f"loading the {task.name} data")
    dataset = task.load_data()
    if source is None:
        config = train_config or TrainConfig()
        say(f"training the {task.name} model ({config.epochs} epochs)")
        source = train_model(task, dataset, config)
    torch_metrics = task.evaluate(source.model, dataset.x_test, dataset.y_test)

    out_dir = plan.out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        data, evaluation = _build(plan, dataset, source, torch_metrics, build_dir, say)
        _move_into_place(build_dir, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    logger.info("packaged %s into %s", task.name, out_dir)
    return PackageReport(out_dir=out_dir, data=data, evaluation=evaluation)


def _build(
    plan: _Plan,
    dataset: Dataset,
    source: SourceModel,
    torch_metrics: dict[str, float],
    build_dir: Path,
    say: ProgressCallback,
) -> tuple[dict[str, Any], PairEvaluation]:
    """Write the package into `build_dir`; raises before report.json if the gate refuses."""
    task, quant_config, override = plan.task, plan.quantization, plan.calibration_override
    golden_count = plan.golden_count
    input_name = task.input_schema.name
    paths = {fmt: build_dir / name for fmt, name in FILES.items()}

    say("exporting to ONNX fp32")
    export_onnx(source.model, task.input_schema, paths["fp32"])

    say(f"quantizing to int8 ({quant_config.method})")
    calibration = override if override is not None else task.calibration_data(dataset)
    quantize_onnx(
        paths["fp32"],
        paths["int8"],
        input_name=input_name,
        config=quant_config,
        calibration=calibration if quant_config.method == "static" else None,
    )

    say(f"evaluating on {len(dataset.x_test)} held-out samples")
    evaluation = evaluate_pair(
        paths["fp32"],
        paths["int8"],
        dataset.x_test,
        dataset.y_test,
        input_name=input_name,
        latency_runs=plan.latency_runs,
    )
    try:
        drop_pp = check_accuracy_gate(
            evaluation.fp32.accuracy, evaluation.int8.accuracy, plan.accuracy_budget_pp
        )
    except QuantizationGateError as err:
        raise QuantizationGateError(f"{err}; nothing was written to {plan.out_dir}") from err

    say(f"building {golden_count} golden vectors, the drift and monitoring references")
    golden_inputs = dataset.x_test[:golden_count]
    drift_reference = plan.drift_reference or feature_histograms(
        dataset.x_train, task.input_schema.feature_bin_edges
    ).tolist()
    release_info: dict[str, dict[str, Any]] = {}
    deviations: dict[str, float] = {}
    for fmt in FORMATS:
        golden, deviations[fmt] = build_golden(
            paths[fmt], golden_inputs, fmt, input_name=input_name
        )
        monitoring = monitoring_reference(
            dataset.x_test,
            dataset.y_test,
            evaluation.outputs[fmt],
            task.input_schema.feature_bin_edges,
            task.num_classes,
        )
        release_info[fmt] = release_info_entry(task, fmt, golden, drift_reference, monitoring)

    data = build_report(
        task=task,
        task_spec=plan.task_spec,
        source=source,
        quantization=quant_config,
        calibration={
            "source": "override" if override is not None else "task",
            "samples": len(calibration) if quant_config.method == "static" else 0,
        },
        accuracy_budget_pp=plan.accuracy_budget_pp,
        accuracy_drop_pp=drop_pp,
        evaluation=evaluation,
        release_info=release_info,
        golden={
            "count": len(golden_inputs),
            "inputs": f"the first {len(golden_inputs)} held-out samples",
            "atol": {fmt: release_info[fmt]["golden"]["atol"] for fmt in FORMATS},
            "atol_rule": f"max(floor, {SAFETY_FACTOR:g} * observed max deviation)",
            "atol_floor": dict(GOLDEN_ATOL_FLOOR),
            "observed_max_deviation": deviations,
        },
        files=dict(FILES),
        sha256={fmt: file_sha256(path) for fmt, path in paths.items()},
        torch_metrics=torch_metrics,
        data_fingerprint=dataset.fingerprint(),
        code_version=code_version(),
        training_run_id=plan.training_run_id,
        drift_source="training_run" if plan.drift_reference is not None else "train_split",
    )
    for path in paths.values():
        fsync_path(path)
    write_json_atomic(build_dir / REPORT_FILE, data)
    # mkdtemp and the atomic writer create owner-only entries; a package is for sharing.
    build_dir.chmod(DIR_MODE)
    for name in (*FILES.values(), REPORT_FILE):
        (build_dir / name).chmod(FILE_MODE)
    return data, evaluation


def _check_arguments(
    accuracy_budget_pp: float,
    golden_count: int,
    checkpoint: Path | str | None,
    train_config: TrainConfig | None,
) -> None:
    if not math.isfinite(accuracy_budget_pp) or accuracy_budget_pp < 0:
        raise ConfigError(f"the accuracy budget must be a number >= 0 pp, got {accuracy_budget_pp}")
    if golden_count < 1:
        raise ConfigError(f"golden_count must be at least 1, got {golden_count}")
    if checkpoint is not None and train_config is not None:
        raise ConfigError("give a checkpoint or a training config, not both")


def _as_calibration(values: ArrayLike, schema: InputSchema) -> NDArray[np.float32]:
    """Calibration inputs as float32 of shape (n, *feature shape); flat rows are reshaped."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"calibration data is not a numeric array: {err}") from err
    feature_shape = tuple(int(dim) for dim in schema.shape[1:] if dim is not None)
    if array.ndim < 1 or len(array) == 0:
        raise ConfigError("calibration data must hold at least one sample")
    if array.shape[1:] == feature_shape:
        return array
    if array.ndim == 2 and array.shape[1] == schema.num_features:
        return array.reshape(len(array), *feature_shape)
    raise ConfigError(
        f"calibration data has shape {array.shape}; expected (n, {', '.join(map(str, feature_shape))})"
    )


def _as_drift_reference(values: ArrayLike, schema: InputSchema) -> list[list[int]]:
    """A features x bins array of non-negative whole counts, as the schema's bins need."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the drift reference is not a numeric array: {err}") from err
    expected = (schema.num_features, len(schema.feature_bin_edges) - 1)
    if array.shape != expected:
        raise ConfigError(f"the drift reference has shape {array.shape}; expected {expected}")
    if (array < 0).any() or not np.all(array == np.round(array)):
        raise ConfigError("the drift reference must hold non-negative whole counts")
    return array.astype(np.int64).tolist()


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.name in ("", ".", ".."):
        raise ConfigError(f"output path {str(out_dir)!r} must name a folder to create")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"output path {str(out_dir)!r} exists and is not a directory")
    if any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {str(out_dir)!r} exists and is not empty; "
            "choose another one or pass --overwrite to replace it"
        )


def _move_into_place(build_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished build to `out_dir`, replacing an empty (or, if allowed, any) one."""
    if not out_dir.exists():
        os.rename(build_dir, out_dir)
    else:
        _check_out_dir(out_dir, overwrite)  # again: it may have changed while we worked
        replaced = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.replaced-", dir=out_dir.parent))
        os.rename(out_dir, replaced / out_dir.name)
        try:
            os.rename(build_dir, out_dir)
        except OSError:
            os.rename(replaced / out_dir.name, out_dir)
            raise
        finally:
            shutil.rmtree(replaced, ignore_errors=True)
    fsync_dir(out_dir.parent)
