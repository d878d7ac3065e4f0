"""The server's FastAPI application over already-opened services.

    create_app(settings, session_factory, artifact_store, routers, lifespan) -> FastAPI

puts the core services on `app.state` (where server.api.deps finds them), adds the audit
middleware and `/healthz`, mounts `routers` in order, and registers the one handler turning
domain errors into HTTP responses (server.api.errors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import sessionmaker

from edgeops import __version__, errors
from server.api.audit import AuditMiddleware
from server.api.errors import error_response
from server.api.security_headers import SecurityHeadersMiddleware
from server.app.home import read_admin_token
from server.config.settings import ServerSettings
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(
    settings: ServerSettings,
    session_factory: sessionmaker,
    artifact_store: ArtifactStore,
    routers: Sequence[APIRouter] = (),
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> FastAPI:
    """Assemble the FastAPI app over already-opened services (no I/O besides the token)."""
    docs = ("/docs", "/redoc") if settings.api_docs else ()  # Swagger UI/ReDoc load from a CDN
    app = FastAPI(
        title="EdgeOps server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.artifact_store = artifact_store
    app.state.registry = Registry(session_factory, artifact_store)
    app.state.admin_token = read_admin_token(settings)
    app.add_exception_handler(errors.EdgeOpsError, error_response)
    app.add_middleware(AuditMiddleware)  # every mutating /api and /console call
    app.add_middleware(SecurityHeadersMiddleware, exempt_paths=docs)  # outside: on every answer

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    for router in routers:
        app.include_router(router)
    return app
