"""The steps from a federated training run to a release on the fleet, one function each.

    record_training_run   a finished run's weights and metrics into the registry -> TrainedRun
    load_training_run     a recorded run and the local path of its weights     -> TrainedRun
    package_run           export, quantize and gate a recorded run's weights    -> PackageReport
    publish_release       a package folder as a signed TUF release              -> PublishedRelease
    start_rollout         a staged rollout of a release (the controller's waves) -> RolloutSummary

The CLI commands (`edgeops train`, `model package`, `release publish`), the API and the
laptop simulation call these same functions; each takes the server's settings and session
factory (or the records an earlier step returned) and returns a frozen record. Nothing here
reads the environment, prints or opens a database of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from edgeops.schemas import ModelFormat
from server.config.settings import ServerSettings
from server.pipeline.publishing import PublishedRelease, publish_package
from server.registry.artifact_store import ArtifactStore
from server.registry.training_runs import TrainingRunRecord
from server.rollouts import store
from server.rollouts.store import RolloutSpec
from server.rollouts.summary import RolloutSummary, summarize

if TYPE_CHECKING:
    from edgeops.packaging import PackageReport, QuantizationMethod
    from server.federated.result import FederatedResult

__all__ = [
    "PackageOptions",
    "TrainedRun",
    "load_training_run",
    "package_run",
    "publish_release",
    "record_training_run",
    "rollout_summary",
    "start_rollout",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainedRun:
    """A recorded training run with final weights, and where those weights are on disk."""

    record: TrainingRunRecord
    weights: Path  # the torch state_dict in the artifact store

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def task(self) -> str:
        return self.record.task


@dataclass(frozen=True)
class PackageOptions:
    """How a model is quantized and gated (the defaults of `edgeops model package`)."""

    quantization: QuantizationMethod = "static"
    accuracy_budget_pp: float = 1.0
    overwrite: bool = False


def _trained_run(record: TrainingRunRecord, artifacts: ArtifactStore) -> TrainedRun:
    if record.status != "succeeded" or record.weights_sha256 is None:
        raise ConfigError(f"training run {record.id} has no final weights (status {record.status})")
    return TrainedRun(record=record, weights=artifacts.path_for(record.weights_sha256))


def record_training_run(
    settings: ServerSettings,
    session_factory: sessionmaker,
    task_spec: str,
    result: FederatedResult,
    started_at: datetime,
) -> TrainedRun:
    """Store a finished federated run (weights, metrics, drift reference) in the registry.

    TrainingError (raised by the engine, before this step) means nothing is recorded."""
    from server.federated.runs import TrainingRuns

    artifacts = ArtifactStore(settings.artifacts_dir)
    record = TrainingRuns(session_factory, artifacts).record(task_spec, result, started_at)
    return _trained_run(record, artifacts)


def load_training_run(
    settings: ServerSettings, session_factory: sessionmaker, run_id: int
) -> TrainedRun:
    """A recorded run; NotFoundError if there is none, ConfigError if it has no weights."""
    from server.federated.runs import TrainingRuns

    artifacts = ArtifactStore(settings.artifacts_dir)
    return _trained_run(TrainingRuns(session_factory, artifacts).get(run_id), artifacts)


def package_run(
    run: TrainedRun,
    out_dir: Path,
    options: PackageOptions = PackageOptions(),
    *,
    calibration_override: Any | None = None,
    progress: Progress | None = None,
) -> PackageReport:
    """Export the run's weights to ONNX fp32, quantize to int8 and gate it into `out_dir`.

    The run's id goes into report.json's lineage and the fleet's securely aggregated
    feature histogram becomes the release's drift reference. QuantizationGateError (and
    nothing written) if int8 falls more than `options.accuracy_budget_pp` below fp32."""
    from edgeops.packaging import package_model
    from edgeops.tasks import load_task

    report = package_model(
        load_task(run.task),
        out_dir,
        checkpoint=run.weights,
        quantization=options.quantization,
        accuracy_budget_pp=options.accuracy_budget_pp,
        calibration_override=calibration_override,
        overwrite=options.overwrite,
        task_spec=run.task,
        progress=progress,
        training_run_id=run.id,
        drift_reference=run.record.drift_reference,
    )
    logger.info("packaged training run %d into %s", run.id, out_dir)
    return report


def publish_release(
    settings: ServerSettings,
    session_factory: sessionmaker,
    package_dir: Path,
    fmt: ModelFormat = "int8",
    actor: str = "local operator (CLI)",
) -> PublishedRelease:
    """Register both formats of a package as the model's next version and sign `fmt` as
    the TUF target agents install (an audit entry by `actor`)."""
    if fmt not in ("int8", "fp32"):
        raise ConfigError(f"release format must be int8 or fp32, got {fmt!r}")
    return publish_package(settings, session_factory, package_dir, fmt, actor)


def start_rollout(
    session_factory: sessionmaker,
    spec: RolloutSpec,
    actor: str,
    now: float | None = None,
) -> RolloutSummary:
    """Create a running rollout of `spec.target` to its devices, cut into waves by
    `spec.policy`; the server's RolloutRunner starts the first wave on its next tick.

    NotFoundError for an unknown release, ConfigError if no device matches,
    RolloutConflictError if a rollout is already active for the same scope."""
    with session_factory.begin() as session:
        rollout = store.create_rollout(session, spec, actor, time.time() if now is None else now)
        rollout_id = rollout.id
    logger.info("rollout %d of %s started by %s", rollout_id, spec.target, actor,
                extra={"rollout_id": rollout_id, "release": spec.target})
    return rollout_summary(session_factory, rollout_id)


def rollout_summary(session_factory: sessionmaker, rollout_id: int) -> RolloutSummary:
    """A rollout's status with per-wave progress; NotFoundError if there is none."""
    with session_factory() as session:
        rollout = store.get_rollout(session, rollout_id)
        return summarize(rollout, store.assignments(session, rollout_id))
