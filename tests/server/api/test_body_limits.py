"""server.api.body_limits driven as ASGI, without sockets: the route table, the 413 before
reading, the running count for bodies without a length, and the idle timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import Message

from server.api.body_limits import (
    BODY_LIMITS,
    DEFAULT_MAX_BODY_BYTES,
    BodyLimitMiddleware,
    max_body_bytes,
)

pytestmark = [pytest.mark.security]


class Echo(BaseModel):
    text: str


def _app(**options: Any) -> BodyLimitMiddleware:
    app = FastAPI()

    @app.post("/api/enroll")
    def enroll(body: Echo) -> dict[str, int]:
        return {"length": len(body.text)}

    return BodyLimitMiddleware(app, **options)


def _call(
    app: BodyLimitMiddleware,
    chunks: list[bytes],
    headers: list[tuple[bytes, bytes]],
    *,
    stall: bool = False,
) -> tuple[int, dict[str, str], int]:
    """Run one POST /api/enroll; the status, headers and how many chunks the app read."""
    sent: list[Message] = []
    pending = list(chunks)
    read = 0

    async def receive() -> Message:
        nonlocal read
        if not pending:
            await asyncio.sleep(3600 if stall else 0)
            return {"type": "http.disconnect"}
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/enroll",
        "raw_path": b"/api/enroll",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, read


def test_the_longest_prefix_sets_the_cap_on_whole_segments() -> None:
    assert max_body_bytes("/api/enroll") == BODY_LIMITS["/api/enroll"]
    assert max_body_bytes("/api/enroll/tokens") == BODY_LIMITS["/api/enroll"]
    assert max_body_bytes("/api/enrollment") == DEFAULT_MAX_BODY_BYTES
    assert max_body_bytes("/api/rollouts", {"/api": 10, "/api/rollouts": 20}) == 20


def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    status, headers, read = _call(_app(), [b"{}"], [(b"content-length", b"999999999")])
    assert (status, headers["connection"], read) == (413, "close", 0)


def test_a_body_without_length_is_refused_once_it_passes_the_cap() -> None:
    chunks = [b'{"text": "', *([b"x" * 1024] * 100), b'"}']
    status, headers, read = _call(_app(limits={"/api/enroll": 8 * 1024}), chunks, [])
    assert (status, headers["connection"]) == (413, "close")
    assert read < 20  # stopped near the cap, not at the end of the body


def test_a_small_body_reaches_the_route() -> None:
    status, _, _ = _call(_app(), [b'{"text": "hi"}'], [])
    assert status == 200


def test_a_stalled_body_is_a_408() -> None:
    status, headers, _ = _call(_app(idle_timeout_s=0.1), [b'{"text": '], [], stall=True)
    assert (status, headers["connection"]) == (408, "close")
