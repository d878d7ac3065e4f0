"""Training runs in the registry: a finished federated run, its weights in the artifact
store (a torch state_dict, content-addressed) and everything needed to package it.

Only runs that produced a model are recorded; a run that trained nothing raises before
anything is written (see `check_progress`).
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime

import torch
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from edgeops.errors import NotFoundError, RegistryError
from edgeops.tasks import load_task
from server.db.tables import TrainingRun
from server.federated.result import FederatedResult
from server.federated.task_model import state_dict_from
from server.registry.artifact_store import ArtifactStore
from server.registry.training_runs import TrainingRunRecord, training_run_record

__all__ = ["TrainingRunRecord", "TrainingRuns"]

logger = logging.getLogger(__name__)

MAX_CODE_VERSION_CHARS = 64


class TrainingRuns:
    """Record and read training runs over the registry's session factory and store."""

    def __init__(self, session_factory: sessionmaker, store: ArtifactStore) -> None:
        self._session_factory = session_factory
        self._store = store

    def record(
        self,
        task_spec: str,
        result: FederatedResult,
        started_at: datetime,
        labels: dict[str, object] | None = None,
    ) -> TrainingRunRecord:
        """Store the final weights, then the run row (status succeeded) in one transaction.

        `labels` join the run's config (a pipeline run tags its training with its id)."""
        task = load_task(task_spec)
        buffer = io.BytesIO()
        torch.save(state_dict_from(task, result.weights), buffer)
        sha256, size = self._store.put_bytes(buffer.getvalue())
        metrics = result.metrics_json()
        if result.drift_reference is not None:
            metrics["drift_reference"] = {
                "counts": result.drift_reference.tolist(),
                "examples": result.drift_examples,
                "bin_edges": list(task.input_schema.feature_bin_edges),
                "source": "sum of the clients' local histograms"
                + (" through SecAgg+" if result.secagg else " (plain FedAvg: per-client)"),
            }
        config = {
            **result.config,
            "secagg_resolved": result.secagg,
            "privacy": result.privacy,
            "weights_bytes": size,
            **(labels or {}),
        }
        row = TrainingRun(
            task=task_spec,
            kind="federated",
            config=config,
            metrics=metrics,
            status="succeeded",
            data_fingerprint=result.data_fingerprint,
            code_version=result.code_version[:MAX_CODE_VERSION_CHARS],
            weights_sha256=sha256,
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )
        try:
            with self._session_factory.begin() as session:
                session.add(row)
                session.flush()
                record = training_run_record(row)
        except SQLAlchemyError as err:
            raise RegistryError(f"cannot record the training run: {err}") from err
        logger.info("recorded training run %d (weights sha256:%s)", record.id, sha256)
        return record

    def get(self, run_id: int) -> TrainingRunRecord:
        try:
            with self._session_factory() as session:
                row = session.get(TrainingRun, run_id)
                if row is None:
                    raise NotFoundError(f"training run {run_id} is not in the registry")
                return training_run_record(row)
        except SQLAlchemyError as err:
            raise RegistryError(f"cannot read training run {run_id}: {err}") from err

    def list(self) -> list[TrainingRunRecord]:
        from sqlalchemy import select

        with self._session_factory() as session:
            return [training_run_record(r) for r in session.scalars(select(TrainingRun).order_by(TrainingRun.id))]

