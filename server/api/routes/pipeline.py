"""`/api/pipeline/runs`: list, read, start and approve continuous-delivery pipeline runs.

Reads need a viewer token, changes an operator token. The work is server.pipeline.service's;
refusals are domain errors mapped to HTTP in one place (server.api.errors): an unknown run
404, approving a run that is not awaiting approval 409 (PipelineStateError), approving with a
service token 403 (PersonRequiredError: only people approve), a second run in flight for the
model 409 (PipelineConflictError), a missing or invalid release policy, or one that forbids
manual runs, 400 (ConfigError).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from server.api.audit import note
from server.api.deps import OperatorDep, SessionFactoryDep, SettingsDep, ViewerDep
from server.pipeline import service
from server.pipeline.machine import PipelineStatus

__all__ = ["PipelineRunCreate", "PipelineRunPublic", "TimelineEntryPublic", "router"]

router = APIRouter(prefix="/api/pipeline", tags=["pipeline"])

MAX_ID = 2**31 - 1
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="pipeline run id")]
ModelName = Annotated[str, Field(min_length=1, max_length=64, pattern=MODEL_NAME)]


class PipelineRunCreate(BaseModel):
    """A person's run of the pipeline; the release policy decides everything else."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName | None = Field(
        default=None, description="the policy's model (a check); null: the policy's model")


class TimelineEntryPublic(BaseModel):
    at: float
    status: str
    message: str
    detail: dict[str, Any]


class PipelineRunPublic(BaseModel):
    """A run as `server.pipeline.store.run_json` writes it; `timeline` only on one run."""

    id: int
    model: str
    status: str
    active: bool
    reason: str | None
    trigger: dict[str, Any]
    champion_version: int | None
    candidate_version: int | None
    candidate_target: str | None
    training_run_id: int | None
    training_attempts: int
    rollout_id: int | None
    approved_by: str | None
    created_by: str
    created_at: float
    updated_at: float
    state_entered_at: float
    finished_at: float | None
    results: dict[str, Any]
    policy: dict[str, Any]
    timeline: list[TimelineEntryPublic] | None = None


@router.get("/runs", response_model=list[PipelineRunPublic], response_model_exclude_unset=True)
def list_runs(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    model: Annotated[str | None, Query(max_length=64, pattern=MODEL_NAME)] = None,
    status: PipelineStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Newest first, without timelines (GET /api/pipeline/runs/{id} has the timeline)."""
    return service.list_runs(session_factory, model, status, limit)


@router.post("/runs", response_model=PipelineRunPublic, status_code=201)
def create_run(body: PipelineRunCreate, user: OperatorDep, session_factory: SessionFactoryDep,
               settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Start a run under the server's release policy (`<home>/pipeline.toml`); the pipeline
    runner takes it from `triggered` on."""
    run = service.request_run(session_factory, settings, user.name, body.model)
    note(request, f"pipeline run {run['id']} of {run['model']}")
    return run


@router.get("/runs/{run_id}", response_model=PipelineRunPublic)
def get_run(run_id: RunId, _user: ViewerDep, session_factory: SessionFactoryDep) -> dict[str, Any]:
    """One run with its timeline: every state it entered and every decision, oldest first."""
    return service.get_run(session_factory, run_id)


@router.post("/runs/{run_id}/approve", response_model=PipelineRunPublic)
def approve_run(run_id: RunId, user: OperatorDep, session_factory: SessionFactoryDep,
                request: Request) -> dict[str, Any]:
    """Approve a run in `awaiting_approval`: its canary starts on the runner's next tick.
    Only a person's token approves: a service token gets 403 (PersonRequiredError)."""
    run = service.approve_run(session_factory, run_id, user.actor, kind=user.kind,
                              role=user.role)
    note(request, f"approved pipeline run {run_id}")
    return run
