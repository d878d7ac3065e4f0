"""Timeouts for a stdlib `BaseHTTPRequestHandler`: no connection is held for ever.

    class Handler(HeaderDeadline, BaseHTTPRequestHandler): ...

- `idle_timeout_s`: every socket read and write waits at most this long (the socket
  timeout StreamRequestHandler applies), so a client that stops sending a body, or stops
  reading a reply, is dropped.
- `header_timeout_s`: a whole request line plus headers must arrive within this, counted
  from when the handler starts waiting for the request (also the keep-alive idle limit).
  A per-read timeout alone lets a client that sends one byte just inside it hold a thread
  for ever (slowloris), so reads before the headers are complete get the time left.
The stdlib handler already answers a late request by closing the connection (it catches
the TimeoutError in `handle_one_request`).
"""

from __future__ import annotations

import io
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["HEADER_TIMEOUT_S", "IDLE_TIMEOUT_S", "DeadlineReader", "HeaderDeadline"]

HEADER_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 10.0


class DeadlineReader(socket.SocketIO):
    """A socket reader whose reads time out at `deadline` (monotonic) while one is set,
    and after `idle_timeout_s` without data otherwise."""

    def __init__(self, sock: socket.socket, idle_timeout_s: float) -> None:
        super().__init__(sock, "rb")
        self.idle_timeout_s = idle_timeout_s
        self.deadline: float | None = None

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        timeout = self.idle_timeout_s
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request headers did not arrive in time")
        self._sock.settimeout(timeout)  # type: ignore[attr-defined]  # SocketIO's socket
        return super().readinto(buffer)


class HeaderDeadline(BaseHTTPRequestHandler):
    """Mixin: idle and header-read timeouts for a BaseHTTPRequestHandler (put it first)."""

    header_timeout_s = HEADER_TIMEOUT_S
    timeout = IDLE_TIMEOUT_S  # StreamRequestHandler sets it on the socket (writes too)
    _reader: DeadlineReader

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the buffered reader over the socket; ours replaces it
        self._reader = DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + self.header_timeout_s
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers, still under the deadline
        self._reader.deadline = None  # the body is read under the idle timeout alone
        return parsed
