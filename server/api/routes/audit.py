"""`/api/audit`: the audit log of mutating calls, newest first (operator and above)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from server.api import audit
from server.api.deps import OperatorDep, SessionFactoryDep

__all__ = ["AuditEntryPublic", "router"]

router = APIRouter(prefix="/api/audit", tags=["audit"])


class AuditEntryPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str | None
    action: str
    resource: str
    status_code: int
    outcome: str
    detail: str | None


@router.get("", response_model=list[AuditEntryPublic])
def list_audit(
    _user: OperatorDep,
    session_factory: SessionFactoryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
) -> list[AuditEntryPublic]:
    with session_factory() as session:
        return [
            AuditEntryPublic(
                id=e.id, at=e.at if e.at.tzinfo else e.at.replace(tzinfo=UTC),
                actor=e.actor, role=e.role, action=e.action, resource=e.resource,
                status_code=e.status_code, outcome=e.outcome, detail=e.detail,
            )
            for e in audit.list_entries(session, limit=limit, before_id=before_id, actor=actor)
        ]
