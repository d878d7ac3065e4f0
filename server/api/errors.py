"""Domain errors (edgeops.errors) as HTTP responses: the one table and the one handler.

    status_for(error) -> int           first match in STATUS_FOR_ERROR, else 500
    error_response(request, exc)       the JSON body {"detail", "error"} for the app's handler

A bad request never produces a 5xx; the composition root registers `error_response` for
`EdgeOpsError`, and the console uses `status_for` for the pages it renders itself.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse

from edgeops import errors
from server.auth.tokens import PersonRequiredError
from server.pipeline.machine import PipelineStateError

__all__ = ["STATUS_FOR_ERROR", "error_response", "status_for"]

logger = logging.getLogger(__name__)

# First match wins: subclasses before their parents.
STATUS_FOR_ERROR: list[tuple[type[errors.EdgeOpsError], int]] = [
    (errors.NotFoundError, 404),
    (PipelineStateError, 409),
    (errors.RegistryError, 409),
    (errors.PayloadError, 422),
    (errors.ConfigError, 400),
    (errors.PackagingError, 422),
    (errors.TrustError, 403),
    (PersonRequiredError, 403),
    (errors.TransportError, 503),
]


def status_for(error: errors.EdgeOpsError) -> int:
    """The HTTP status for a domain error (500 for one the table does not name)."""
    for error_type, status in STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return status
    return 500


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for `EdgeOpsError`: status from the table, logged once."""
    if not isinstance(exc, errors.EdgeOpsError):
        raise TypeError(f"error_response handles EdgeOpsError, not {type(exc).__name__}")
    status = status_for(exc)
    log = logger.error if status >= 500 else logger.info
    log("%s %s -> %d %s: %s", request.method, request.url.path, status, type(exc).__name__, exc)
    return JSONResponse(
        status_code=status, content={"detail": str(exc), "error": type(exc).__name__}
    )
