"""`/api/training-runs`: centralized and federated training runs and their metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from sqlalchemy import select

from edgeops.errors import NotFoundError
from server.api_deps import SessionFactoryDep, ViewerDep
from server.db import TrainingRun

__all__ = ["TrainingRunPublic", "router"]

router = APIRouter(prefix="/api/training-runs", tags=["training"])


class TrainingRunPublic(BaseModel):
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

    @classmethod
    def of(cls, run: TrainingRun) -> "TrainingRunPublic":
        return cls(id=run.id, task=run.task, kind=run.kind, status=run.status,
                   config=dict(run.config or {}), metrics=dict(run.metrics or {}),
                   data_fingerprint=run.data_fingerprint, code_version=run.code_version,
                   weights_sha256=run.weights_sha256, started_at=run.started_at,
                   finished_at=run.finished_at)


@router.get("", response_model=list[TrainingRunPublic])
def list_training_runs(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TrainingRunPublic]:
    with session_factory() as session:
        runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit))
        return [TrainingRunPublic.of(r) for r in runs]


@router.get("/{run_id}", response_model=TrainingRunPublic)
def get_training_run(
    run_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
) -> TrainingRunPublic:
    with session_factory() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise NotFoundError(f"no training run {run_id}")
        return TrainingRunPublic.of(run)
