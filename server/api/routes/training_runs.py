"""`/api/training-runs`: centralized and federated training runs and their metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from edgeops.errors import NotFoundError
from server.api.deps import SessionFactoryDep, ViewerDep
from server.db.tables import TrainingRun
from server.registry.training_runs import TrainingRunRecord, training_run_record

__all__ = ["router"]

router = APIRouter(prefix="/api/training-runs", tags=["training"])


@router.get("", response_model=list[TrainingRunRecord])
def list_training_runs(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TrainingRunRecord]:
    with session_factory() as session:
        runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit))
        return [training_run_record(r) for r in runs]


@router.get("/{run_id}", response_model=TrainingRunRecord)
def get_training_run(
    run_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
) -> TrainingRunRecord:
    with session_factory() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise NotFoundError(f"no training run {run_id}")
        return training_run_record(run)
