"""The only door devices get into the SuperLink: an ASGI app that forwards Flower's Fleet
API (`POST /v1/fleet/<method>`) to a SuperLink listening on loopback and answers 404 to
everything else, so the Control API (register SuperNodes, start runs) and the Runtime API
(what ServerApps and SuperExec use) are never reachable from the devices' network.

SuperNode authentication is end to end: each Fleet call carries the node's signature in
its headers, which pass through unchanged and are checked by the SuperLink itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import JSONResponse

__all__ = ["DEFAULT_MAX_BODY_BYTES", "FleetGateway", "is_fleet_call"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# flwr 1.42's own limit for one Fleet message (GRPC_MAX_MESSAGE_LENGTH).
DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024
# One path segment of lowercase words: no "..", no encoded slashes, no second prefix.
_FLEET_CALL = re.compile(r"/v1/fleet/[a-z]+(?:-[a-z]+)*")
# Hop-by-hop headers (RFC 9110 7.6.1), and for requests the ones httpx recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length"}


def is_fleet_call(method: str, path: str) -> bool:
    """True for the requests a SuperNode makes: POST to one Fleet API method."""
    return method == "POST" and _FLEET_CALL.fullmatch(path) is not None


class FleetGateway:
    """ASGI app: `POST /v1/fleet/<method>` goes to `upstream_url`; anything else is 404."""

    def __init__(
        self,
        upstream_url: str,
        ca_file: Path | None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        timeout_s: float = 120.0,
    ) -> None:
        self._upstream_url = upstream_url.rstrip("/")
        self._verify: str | bool = str(ca_file) if ca_file is not None else True
        self._max_body_bytes = max_body_bytes
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = self._new_client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._upstream_url, verify=self._verify, timeout=self._timeout_s
        )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if not is_fleet_call(method, path) or scope.get("query_string"):
            logger.warning("fleet gateway refused %s %s from %s", method, path, scope.get("client"))
            refused = JSONResponse({"detail": "only the Fleet API is served here"}, 404)
            await refused(scope, receive, send)
            return
        body = await _read_body(receive, self._max_body_bytes)
        if body is None:
            too_large = JSONResponse({"detail": f"body over {self._max_body_bytes} bytes"}, 413)
            await too_large(scope, receive, send)
            return
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _NOT_FORWARDED
        ]
        if self._client is None:  # served without lifespan events
            self._client = self._new_client()
        try:
            upstream = await self._client.send(
                self._client.build_request("POST", path, content=body, headers=headers),
                stream=True,
            )
        except httpx.HTTPError as err:
            logger.warning("fleet gateway: SuperLink unreachable: %s", err)
            unreachable = JSONResponse({"detail": "the SuperLink is unreachable"}, 502)
            await unreachable(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": [
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in upstream.headers.multi_items()
                        if name.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await upstream.aclose()


async def _read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The request body, or None once it passes `max_bytes` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
