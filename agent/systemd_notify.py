"""systemd's notify protocol (sd_notify(3)) without libsystemd: `READY=1` once the agent
serves, `WATCHDOG=1` while it is alive, `STOPPING=1` on the way out.

Each message is one datagram to the socket systemd names in `$NOTIFY_SOCKET`; a leading
`@` means Linux's abstract namespace. Outside systemd (no socket) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages; `feed_watchdog()` may be called often, it sends at most one
    `WATCHDOG=1` per half of systemd's `WatchdogSec`, as sd_watchdog_enabled(3) advises."""

    def __init__(
        self,
        socket_path: str | None,
        watchdog_s: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = (
            "\0" + socket_path[1:] if socket_path and socket_path[0] == "@" else socket_path
        )
        self.watchdog_s = watchdog_s if socket_path else None
        self._clock = clock
        self._last_feed: float | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Notifier:
        """The notifier systemd asked for: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` when
        `WATCHDOG_PID` is unset or names this process."""
        watchdog_s = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_s)

    @property
    def tick_s(self) -> float:
        """How often the caller should look at the agent and feed the watchdog."""
        return min(1.0, self.watchdog_s / 2) if self.watchdog_s else 1.0

    def notify(self, message: str) -> bool:
        """Send one message; False (and a debug log) if there is no socket or it fails."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as err:
            logger.debug("sd_notify %r to %r failed: %s", message, self._address, err)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def feed_watchdog(self) -> None:
        if self.watchdog_s is None:
            return
        now = self._clock()
        if self._last_feed is None or now - self._last_feed >= self.watchdog_s / 2:
            self._last_feed = now
            self.notify("WATCHDOG=1")
