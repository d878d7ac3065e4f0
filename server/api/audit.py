"""The audit log: every mutating API or console call — who, what, when, outcome.

`AuditMiddleware` wraps the app: after a POST/PUT/PATCH/DELETE under /api or /console it
appends one entry to the hash chain (server.governance.audit_chain.append) with the caller
(the principal the auth dependency resolved, or "anonymous"), method, path, status code and
outcome. Handlers may add a line of detail, and what was acted on and why, with
`note(request, "rollout 3 of digits/2/int8/model.onnx", target=..., reason=...)`, and
name the outcome when the status code does not tell it (a refused console login answers
with a redirect: `note(..., outcome="denied")`). Secrets are never logged.

An anonymous request that matched no route is not recorded: it acted on nothing, and
otherwise anyone could fill the log (500 such POSTs wrote 500 rows in 0.6 s). Retention is
`audit_retention_days` (server.governance.audit_chain.prune, run by the server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeops.errors import EdgeOpsError
from server.db.tables import AuditEntry
from server.governance.audit_chain import append

__all__ = ["MUTATING_METHODS", "AuditMiddleware", "list_entries", "note", "outcome_of"]

logger = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_PREFIXES = ("/api/", "/console/")


def note(
    request: Request,
    detail: str,
    *,
    target: str | None = None,
    reason: str | None = None,
    outcome: str | None = None,
) -> None:
    """Attach a line of detail (and what was acted on, and why, and the outcome when the
    status code does not say it) to this request's entry."""
    request.state.audit_detail = detail[:2000]
    if outcome is not None:
        request.state.audit_outcome = outcome
    if target is not None:
        request.state.audit_target = target[:300]
    if reason is not None:
        request.state.audit_reason = reason[:2000]


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return "ok"
    if status_code in (401, 403):
        return "denied"
    return "refused" if status_code < 500 else "error"


def _write(session_factory: Callable[[], Session], entry: dict[str, Any]) -> None:
    try:
        with session_factory() as session, session.begin():
            append(session, **entry)
    except (SQLAlchemyError, EdgeOpsError):
        logger.exception("could not write the audit entry %s", entry)


class AuditMiddleware:
    """Pure ASGI middleware (not Starlette's BaseHTTPMiddleware, whose call_next pipes every
    response body through a memory stream: it cost a third of the artifact download rate).

    The entry is written when the response starts, before its first byte leaves, so a
    caller that has its answer also finds its audit row."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING_METHODS
            or not scope["path"].startswith(AUDITED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        written = False

        async def record(status_code: int) -> None:
            nonlocal written
            written = True
            request = Request(scope)
            principal = getattr(request.state, "principal", None)
            if principal is None and "endpoint" not in scope:
                return  # anonymous, and no route matched: nothing was acted on
            entry = {  # its time is taken under the chain lock, so times follow the ids
                "actor": principal.actor if principal else "anonymous",
                "role": principal.role if principal else None,
                "action": scope["method"],
                "resource": scope["path"][:300],
                "status_code": status_code,
                "outcome": getattr(request.state, "audit_outcome", None) or outcome_of(status_code),
                "detail": getattr(request.state, "audit_detail", None),
                "target": getattr(request.state, "audit_target", None),
                "reason": getattr(request.state, "audit_reason", None),
            }
            await run_in_threadpool(_write, request.app.state.session_factory, entry)

        async def send_after_recording(message: Message) -> None:
            if message["type"] == "http.response.start" and not written:
                await record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_after_recording)
        finally:
            if not written:  # the app raised before answering: the server answers 500
                await record(500)


def list_entries(
    session: Session, *, limit: int = 100, before_id: int | None = None, actor: str | None = None
) -> list[AuditEntry]:
    """Newest first; page with `before_id`."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    if actor is not None:
        stmt = stmt.where(AuditEntry.actor == actor)
    return list(session.scalars(stmt))
