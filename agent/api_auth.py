"""Who may use the agent's local API, decided from the request line and headers alone.

Any process on the device, and any web page its browser opens, can reach a port on
127.0.0.1. So, before a body is read:

- the `Host` must name this agent (localhost, 127.0.0.1, [::1] or the configured host,
  with the bound port): a page on a rebound DNS name gets 421, never an answer;
- an `Origin` other than the agent's own gets 403, and a POST must be `application/json`
  (415): the cross-site "simple" requests a browser sends without asking first;
- `/predict` and `/feedback` need `Authorization: Bearer <token>`, the token in
  `<home>/api_token` (mode 0600, made at `edgeops agent init` or the first start; the
  application that predicts reads it, `chmod 0640` and a group to share it): 401 otherwise.

Refused requests never reach the model, so they count in neither the telemetry window nor
the health window an update is judged by: a local process cannot force a rollback.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError

__all__ = ["TOKEN_FILE", "ApiGuard", "Headers", "Refusal", "ensure_token"]

TOKEN_FILE = "api_token"
TOKEN_BYTES = 32
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # bind addresses that name no host


def ensure_token(path: Path) -> str:
    """The token in `path`; a new random one, written with mode 0600, if there is none.

    ConfigError if the file is readable by everyone or empty (a token anyone on the device
    can read protects nothing)."""
    if not path.exists():
        write_bytes_atomic(path, secrets.token_urlsafe(TOKEN_BYTES).encode() + b"\n")
    try:
        mode = os.stat(path).st_mode
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the local API token {path}: {err}") from err
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(
            f"the local API token {path} is readable or writable by every user "
            f"(mode {stat.S_IMODE(mode):o}): chmod 0600 it (0640 to share it with a group)"
        )
    if not token:
        raise ConfigError(f"the local API token {path} is empty: delete it to make a new one")
    return token


class Headers(Protocol):
    """Request headers, looked up case-insensitively (http.server's `Message` is one)."""

    def get(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class Refusal:
    status: HTTPStatus
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ApiGuard:
    """The checks for one bound API: its token, the Host values and Origins it answers."""

    token: str
    hosts: frozenset[str]

    @classmethod
    def for_address(cls, token: str, host: str, port: int) -> ApiGuard:
        names = set(LOOPBACK_NAMES)
        if host not in WILDCARD_HOSTS:
            names.add(f"[{host}]" if ":" in host else host.lower())
        hosts = {f"{name}:{port}" for name in names}
        if port == 80:
            hosts |= names  # a client leaves the default port out of Host
        return cls(token, frozenset(hosts))

    def check(self, headers: Headers, *, method: str, needs_token: bool) -> Refusal | None:
        """Why the request with these `headers` is refused, or None if it may go on."""
        host = (headers.get("Host") or "").strip().lower()
        if host not in self.hosts:
            return Refusal(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"Host {host or '(none)'!r} is not this agent's API; use "
                f"{sorted(self.hosts)[0]} (another name may be a DNS rebinding attack)",
            )
        origin = headers.get("Origin")
        if origin is not None and origin.strip().lower().removeprefix("http://") not in self.hosts:
            return Refusal(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin!r} refused")
        if needs_token and not self._authorized(headers.get("Authorization")):
            return Refusal(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong token: send 'Authorization: Bearer <token>' with the token "
                f"from the agent home's {TOKEN_FILE} file",
                (("WWW-Authenticate", 'Bearer realm="edgeops-agent"'),),
            )
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if method == "POST" and content_type != "application/json":
            return Refusal(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/json, not {content_type or '(none)'!r}",
            )
        return None

    def _authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())
