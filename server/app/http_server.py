"""How uvicorn serves the app: the timeouts and size limits of every connection.

    uvicorn_limits() -> dict of uvicorn.run / uvicorn.Config keyword arguments

- `h11_max_incomplete_event_size`: a request line plus headers larger than this is a 400.
- `timeout_keep_alive`: an idle connection between requests is closed after this.
- A header-read deadline, which uvicorn lacks: its keep-alive timer runs only between
  requests and is cancelled by the first byte of the next, so a client that sends half a
  request line and waits (slowloris) held its connection for ever. `HeaderTimeoutH11Protocol`
  closes a connection whose request headers are not complete `HEADER_TIMEOUT_S` after it
  opened or after its previous response. Slow bodies are server.api.body_limits' business.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HEADER_TIMEOUT_S",
    "KEEP_ALIVE_TIMEOUT_S",
    "MAX_HEADER_BYTES",
    "HeaderTimeoutH11Protocol",
    "uvicorn_limits",
]

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_TIMEOUT_S = 5
MAX_HEADER_BYTES = 16 * 1024


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    The deadline is armed when the connection opens and when a response completes, for the
    request cycle then current; the next Request event starts a new cycle and disarms it.
    """

    header_timeout_s = HEADER_TIMEOUT_S
    _header_deadline: asyncio.TimerHandle | None = None
    _armed_for: object = None  # the request cycle current when the deadline was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_if_a_request_started()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm()
        self._armed_for = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_if_a_request_started(self) -> None:
        if self.cycle is not self._armed_for:
            self._disarm()

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.logger.info(
                "closing a connection whose request headers took over %g s", self.header_timeout_s
            )
            self.transport.close()


def uvicorn_limits() -> dict[str, Any]:
    """The keyword arguments giving uvicorn the limits above."""
    return {
        "http": HeaderTimeoutH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT_S,
    }
