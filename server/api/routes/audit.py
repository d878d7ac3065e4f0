"""`/api/audit`: the hash-chained audit log (operator and above).

    GET /api/audit          entries, newest first (page with before_id)
    GET /api/audit/verify   the chain and its anchors checked: the first problem, if any
    GET /api/audit/export   entries with since <= at < until as JSON lines, hashes included
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.api import audit
from server.api.deps import OperatorDep, SessionFactoryDep, SettingsDep
from server.governance import audit_chain

__all__ = ["AuditEntryPublic", "AuditVerdictPublic", "router"]

router = APIRouter(prefix="/api/audit", tags=["audit"])


class AuditEntryPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str | None
    action: str
    resource: str
    target: str | None
    status_code: int | None
    outcome: str
    reason: str | None
    detail: str | None
    prev_hash: str | None
    entry_hash: str | None


class AuditVerdictPublic(BaseModel):
    ok: bool
    entries: int
    first_bad_id: int | None
    problem: str | None
    legacy_entries: int
    anchors: int
    bad_anchor_id: int | None


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
                target=e.target, status_code=e.status_code, outcome=e.outcome, reason=e.reason,
                detail=e.detail, prev_hash=e.prev_hash, entry_hash=e.entry_hash,
            )
            for e in audit.list_entries(session, limit=limit, before_id=before_id, actor=actor)
        ]


@router.get("/verify", response_model=AuditVerdictPublic)
def verify_audit(
    _user: OperatorDep, session_factory: SessionFactoryDep, settings: SettingsDep
) -> AuditVerdictPublic:
    keys = audit_chain.audit_public_keys(settings.home)
    with session_factory() as session:
        return AuditVerdictPublic(**audit_chain.verify(session, keys).to_json())


@router.get("/export")
def export_audit(
    _user: OperatorDep,
    session_factory: SessionFactoryDep,
    since: Annotated[datetime | None, Query(description="ISO time, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO time, exclusive")] = None,
) -> StreamingResponse:
    def lines() -> Iterator[str]:
        with session_factory() as session:
            record: dict[str, Any]
            for record in audit_chain.export(session, since, until):
                yield json.dumps(record, sort_keys=True) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
