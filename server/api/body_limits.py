"""Request bodies capped per route before they are read, and never left to trickle in.

    BodyLimitMiddleware(app, limits=BODY_LIMITS, default_max_bytes=..., idle_timeout_s=...)

A pure ASGI middleware, outermost in the app:
- a declared `Content-Length` above the route's cap is answered 413 at once, without
  reading a byte of the body;
- a body without one (chunked) is counted as it streams through `receive`, and the read
  that passes the cap raises a 413 (an HTTPException, so FastAPI's body parsing re-raises
  it instead of calling it a malformed body);
- while a body is incomplete, a wait of more than `idle_timeout_s` for its next chunk is
  a 408: a client that sends headers and then a byte a minute holds no worker.
Every refusal closes the connection, so the unread rest of the body is never parsed.

No route of the API takes an upload (releases are published from the server's own CLI),
so every cap is for JSON or a form; the table names the unauthenticated ones tighter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BODY_IDLE_TIMEOUT_S",
    "BODY_LIMITS",
    "DEFAULT_MAX_BODY_BYTES",
    "BodyLimitMiddleware",
    "BodyTooLarge",
    "max_body_bytes",
]

KIB = 1024
# Path prefix -> cap in bytes; the longest matching prefix wins.
BODY_LIMITS: Mapping[str, int] = {
    "/api/enroll": 64 * KIB,  # unauthenticated: a token and a CSR of a few KiB
    "/api/tokens": 64 * KIB,
    "/console": 64 * KIB,  # url-encoded forms (server.console.forms caps them at 16 KiB)
}
DEFAULT_MAX_BODY_BYTES = 1024 * KIB
BODY_IDLE_TIMEOUT_S = 30.0
_CLOSE = {"connection": "close"}


class BodyTooLarge(HTTPException):
    """The request body passed its route's cap while it was being read."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(
            413,
            detail=f"request body for {path} exceeds {limit} bytes",
            headers=_CLOSE,
        )


def max_body_bytes(
    path: str, limits: Mapping[str, int] = BODY_LIMITS, default: int = DEFAULT_MAX_BODY_BYTES
) -> int:
    """The cap for a request to `path`: its longest matching prefix in `limits`, else
    `default`. A prefix matches whole path segments only (`/api/enroll` not `/api/enrollx`)."""
    best, best_length = default, -1
    for prefix, limit in limits.items():
        matches = path == prefix or path.startswith(prefix.rstrip("/") + "/")
        if matches and len(prefix) > best_length:
            best, best_length = limit, len(prefix)
    return best


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header as an int; None when absent. The HTTP server (h11 or
    httptools) has already refused a malformed one, and frames the body to it."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)
    return None


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int] = BODY_LIMITS,
        default_max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_max_bytes = default_max_bytes
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = max_body_bytes(path, self.limits, self.default_max_bytes)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            detail = f"request body of {declared} bytes for {path} exceeds {limit}"
            await JSONResponse({"detail": detail}, 413, headers=_CLOSE)(scope, receive, send)
            return
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later reads wait for a disconnect, however long a response takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                raise HTTPException(
                    408,
                    detail=f"no request body data for {self.idle_timeout_s:g} s",
                    headers=_CLOSE,
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge(path, limit)
            return message

        await self.app(scope, limited_receive, send)
