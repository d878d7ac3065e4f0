"""`TrainingRunRecord`: a training run as the API, the CLI and the simulation read it.

Kept apart from `server.federated.runs` (which records runs and needs torch and flwr) so
the HTTP API can serve runs without importing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.db.tables import TrainingRun, as_utc

__all__ = ["TrainingRunRecord", "training_run_record"]


@dataclass(frozen=True)
class TrainingRunRecord:
    id: int
    task: str
    kind: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: str | None
    code_version: str | None
    weights_sha256: str | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def drift_reference(self) -> list[list[int]] | None:
        reference = self.metrics.get("drift_reference") or {}
        counts = reference.get("counts")
        return counts if isinstance(counts, list) else None

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return data


def training_run_record(row: TrainingRun) -> TrainingRunRecord:
    return TrainingRunRecord(
        id=row.id,
        task=row.task,
        kind=row.kind,
        status=row.status,
        config=dict(row.config or {}),
        metrics=dict(row.metrics or {}),
        data_fingerprint=row.data_fingerprint,
        code_version=row.code_version,
        weights_sha256=row.weights_sha256,
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at) if row.finished_at is not None else None,
    )
