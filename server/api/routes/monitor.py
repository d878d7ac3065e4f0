"""`/api/monitor`: what the fleet monitor scored and raised (viewer token).

    GET /api/monitor/cohorts    every cohort, its latest window and whether it is alarmed
    GET /api/monitor/windows    window summaries, newest first (?cohort=&since=&limit=)
    GET /api/monitor/scores     the same with every per-feature score, p-value and threshold
    GET /api/monitor/events     drift_detected / quality_dropped / recovered with evidence
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from server.api.deps import SessionFactoryDep, ViewerDep
from server.monitoring import store

__all__ = ["router"]

router = APIRouter(prefix="/api/monitor", tags=["monitor"])

Cohort = Annotated[str | None, Query(max_length=400, description="<release>@<group|fleet>")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Since = Annotated[float | None, Query(ge=0, description="window start, epoch seconds")]
EventKind = Literal["drift_detected", "quality_dropped", "recovered"]


@router.get("/cohorts")
def list_cohorts(_user: ViewerDep, session_factory: SessionFactoryDep) -> list[dict[str, Any]]:
    """Every cohort with its latest window."""
    with session_factory() as session:
        return store.list_cohorts(session)


@router.get("/windows")
def list_windows(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    cohort: Cohort = None,
    since: Since = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    """Window summaries, newest first."""
    with session_factory() as session:
        return [store.window_summary(w) for w in store.list_windows(session, cohort, since, limit)]


@router.get("/scores")
def list_scores(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    cohort: Cohort = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> list[dict[str, Any]]:
    """Windows with every score per statistic and feature, p-values and thresholds."""
    with session_factory() as session:
        return [
            store.window_summary(w, with_scores=True)
            for w in store.list_windows(session, cohort, since, limit)
        ]


@router.get("/events")
def list_events(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    kind: EventKind | None = None,
    cohort: Cohort = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    """Monitor events, newest first."""
    with session_factory() as session:
        return store.list_events(session, kind, cohort, limit)
