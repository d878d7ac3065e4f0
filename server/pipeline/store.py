"""Pipeline runs in the database: create, move (the transition table), record, read.

Every function runs inside the caller's session; the runner commits a state change before
it performs the side effect that state stands for.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeops.errors import NotFoundError
from server.db.tables import PipelineRun, PipelineStep
from server.governance import audit_chain
from server.pipeline.machine import ACTIVE_STATUSES, FINAL_STATUSES, PipelineStateError, check_move

__all__ = [
    "PipelineConflictError",
    "active_run",
    "approve",
    "create_run",
    "get_run",
    "list_runs",
    "move",
    "note",
    "run_json",
    "steps",
    "update_results",
]


class PipelineConflictError(PipelineStateError):
    """A run is already in flight for the model, or the run changed meanwhile."""


def active_run(session: Session, model: str) -> PipelineRun | None:
    return session.scalar(select(PipelineRun).where(PipelineRun.active_model == model))


def create_run(
    session: Session,
    model: str,
    policy: Mapping[str, Any],
    trigger: Mapping[str, Any],
    actor: str,
    now: float,
    champion_version: int | None,
) -> PipelineRun:
    """A new run in state `triggered`; PipelineConflictError if one is in flight for `model`."""
    existing = active_run(session, model)
    if existing is not None:
        raise PipelineConflictError(
            f"pipeline run {existing.id} of {model!r} is still {existing.status}; "
            "one run at a time per model"
        )
    run = PipelineRun(
        model=model, status="triggered", active_model=model, policy=dict(policy),
        trigger=dict(trigger), results={}, champion_version=champion_version,
        training_attempts=0, revision=0, created_by=actor, created_at=now, updated_at=now,
        state_entered_at=now,
    )
    session.add(run)
    try:
        session.flush()
    except IntegrityError as err:
        raise PipelineConflictError(
            f"another pipeline run of {model!r} started at the same time"
        ) from err
    message = _trigger_message(trigger, actor)
    session.add(PipelineStep(run_id=run.id, at=now, status="triggered", message=message,
                             detail=dict(trigger)))
    audit_chain.append(session, actor=actor, role=None, action="pipeline.triggered",
                       resource="pipeline", target=f"pipeline run {run.id}", reason=message,
                       at=datetime.fromtimestamp(now, UTC))
    return run


def _trigger_message(trigger: Mapping[str, Any], actor: str) -> str:
    kind = trigger.get("kind", "manual")
    if kind == "event":
        return f"triggered by {trigger.get('event')} on {trigger.get('cohort')}"
    if kind == "schedule":
        return "triggered by the schedule"
    return f"triggered by {actor}"


def get_run(session: Session, run_id: int) -> PipelineRun:
    run = session.get(PipelineRun, run_id)
    if run is None:
        raise NotFoundError(f"pipeline run {run_id} does not exist")
    return run


def list_runs(session: Session, model: str | None = None, status: str | None = None,
              limit: int = 100) -> list[PipelineRun]:
    """Newest first."""
    query = select(PipelineRun).order_by(PipelineRun.id.desc()).limit(limit)
    if model is not None:
        query = query.where(PipelineRun.model == model)
    if status is not None:
        query = query.where(PipelineRun.status == status)
    return list(session.scalars(query))


def steps(session: Session, run_id: int) -> list[PipelineStep]:
    return list(session.scalars(
        select(PipelineStep).where(PipelineStep.run_id == run_id).order_by(PipelineStep.id)))


def note(session: Session, run: PipelineRun, message: str, now: float,
         detail: Mapping[str, Any] | None = None) -> None:
    """A timeline entry without a change of state (a canary check, a wait, a retry)."""
    session.add(PipelineStep(run_id=run.id, at=now, status=run.status, message=message,
                             detail=dict(detail or {})))


def update_results(run: PipelineRun, **results: Any) -> None:
    """Merge step outputs into the run's record (JSON columns need a new object)."""
    run.results = {**(run.results or {}), **results}


def move(session: Session, run: PipelineRun, to: str, message: str, now: float,
         detail: Mapping[str, Any] | None = None, *, actor: str = "pipeline",
         **fields: Any) -> None:
    """Move `run` to `to` (and set `fields`) if the table allows it and nobody else moved
    it since it was loaded; PipelineStateError / PipelineConflictError otherwise. The move
    is an audit entry in the same transaction (target "pipeline run N")."""
    check_move(run.id, run.status, to)
    values: dict[str, Any] = {"status": to, "revision": run.revision + 1, "updated_at": now,
                              "state_entered_at": now, "results": run.results, **fields}
    if to in FINAL_STATUSES:
        values.update(active_model=None, finished_at=now)
        values.setdefault("reason", message)
    result = session.execute(
        update(PipelineRun).where(PipelineRun.id == run.id, PipelineRun.revision == run.revision)
        .values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise PipelineConflictError(f"pipeline run {run.id} changed meanwhile")
    session.add(PipelineStep(run_id=run.id, at=now, status=to, message=message,
                             detail=dict(detail or {})))
    audit_chain.append(session, actor=actor, role=None, action=f"pipeline.{to}",
                       resource="pipeline", target=f"pipeline run {run.id}",
                       outcome="refused" if to == "refused" else "ok", reason=message[:2000],
                       at=datetime.fromtimestamp(now, UTC))
    session.flush()
    session.refresh(run)


def approve(session: Session, run_id: int, actor: str, now: float) -> PipelineRun:
    """A person's approval of a run waiting for one; PipelineStateError in any other state."""
    run = get_run(session, run_id)
    session.refresh(run)
    if run.status != "awaiting_approval":
        raise PipelineStateError(
            f"pipeline run {run_id} is {run.status}, not awaiting_approval: nothing to approve")
    if run.approved_by is None:
        # Only if it is still waiting as read: the runner may end it (timeout) meanwhile.
        result = session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run.id, PipelineRun.revision == run.revision,
                   PipelineRun.status == "awaiting_approval")
            .values(approved_by=actor, updated_at=now, revision=run.revision + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise PipelineConflictError(f"pipeline run {run_id} changed meanwhile; try again")
        note(session, run, f"approved by {actor}", now, {"actor": actor})
        session.flush()
        session.refresh(run)
    return run


def run_json(run: PipelineRun, timeline: list[PipelineStep] | None = None) -> dict[str, Any]:
    """A run as the API, the CLI's --json and the console read it."""
    out: dict[str, Any] = {
        "id": run.id,
        "model": run.model,
        "status": run.status,
        "active": run.status in ACTIVE_STATUSES,
        "reason": run.reason,
        "trigger": run.trigger,
        "champion_version": run.champion_version,
        "candidate_version": run.candidate_version,
        "candidate_target": run.candidate_target,
        "training_run_id": run.training_run_id,
        "training_attempts": run.training_attempts,
        "rollout_id": run.rollout_id,
        "approved_by": run.approved_by,
        "created_by": run.created_by,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "state_entered_at": run.state_entered_at,
        "finished_at": run.finished_at,
        "results": run.results or {},
        "policy": run.policy,
    }
    if timeline is not None:
        out["timeline"] = [
            {"at": s.at, "status": s.status, "message": s.message, "detail": s.detail}
            for s in timeline
        ]
    return out
