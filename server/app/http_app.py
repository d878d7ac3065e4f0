"""The server's HTTP application: TUF repository, registry API, and routers added by others.

    create_app(settings, session_factory, artifact_store, extra_routers, lifespan) -> FastAPI

Domain errors (edgeops.errors) become HTTP responses in one handler, `error_response`;
a bad request never produces a 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import sessionmaker

from edgeops import __version__, errors
from server.api.audit import AuditMiddleware
from server.api.deps import require_viewer
from server.api.routes import registry as api_registry
from server.api.routes import tuf as api_tuf
from server.app.home import read_admin_token
from server.config.settings import ServerSettings
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry

__all__ = ["STATUS_FOR_ERROR", "create_app", "status_for"]

logger = logging.getLogger(__name__)

# First match wins: subclasses before their parents.
STATUS_FOR_ERROR: list[tuple[type[errors.EdgeOpsError], int]] = [
    (errors.NotFoundError, 404),
    (errors.RegistryError, 409),
    (errors.PayloadError, 422),
    (errors.ConfigError, 400),
    (errors.PackagingError, 422),
    (errors.TrustError, 403),
    (errors.TransportError, 503),
]


def status_for(error: errors.EdgeOpsError) -> int:
    for error_type, status in STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return status
    return 500


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.EdgeOpsError)
    status = status_for(exc)
    log = logger.error if status >= 500 else logger.info
    log("%s %s -> %d %s: %s", request.method, request.url.path, status, type(exc).__name__, exc)
    return JSONResponse(
        status_code=status, content={"detail": str(exc), "error": type(exc).__name__}
    )


def create_app(
    settings: ServerSettings,
    session_factory: sessionmaker,
    artifact_store: ArtifactStore,
    extra_routers: Sequence[APIRouter] = (),
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> FastAPI:
    """Assemble the FastAPI app over already-opened services (no I/O besides the token)."""
    app = FastAPI(title="EdgeOps server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.artifact_store = artifact_store
    app.state.registry = Registry(session_factory, artifact_store)
    app.state.admin_token = read_admin_token(settings)
    app.add_exception_handler(errors.EdgeOpsError, error_response)
    app.add_middleware(AuditMiddleware)  # every mutating /api and /console call

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.include_router(api_tuf.router)
    app.include_router(api_registry.router, dependencies=[Depends(require_viewer)])
    for router in extra_routers:
        app.include_router(router)
    return app
