"""Raw-socket helpers for the slow-client tests."""

from __future__ import annotations

import socket
import time

__all__ = ["closed_after"]


def closed_after(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the peer closes `sock` (None if still open after `limit_s`)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started
