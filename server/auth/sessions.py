"""Console sessions: a login exchanges an API token for a random session secret.

    open_session(session, token_sha256, now) -> secret      the cookie's value (shown once)
    find_session(session, secret, now, limits) -> ConsoleSession | None   live, and touched
    close_session(session, secret)                           logout
    csrf_token(secret) -> str                                the session's form token

Only the secret's SHA-256 is stored, like an API token's. A session is refused once it has
been idle for `limits.idle_s` or is `limits.max_s` old (expired rows are deleted when met and
at each login). A session's last use is recorded at most every 30 s (or
a quarter of the idle limit). The CSRF token is an HMAC of the secret: bound to the session, nothing more
to store, and useless for recovering the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.orm import Session

from edgeops.errors import ConfigError
from server.auth.tokens import hash_token
from server.db.tables import ConsoleSession, as_utc

__all__ = [
    "SessionLimits",
    "close_session",
    "csrf_token",
    "find_session",
    "open_session",
]

_CSRF_CONTEXT = b"edgeops console csrf v1"
_TOUCH_EVERY_S = 30.0


@dataclass(frozen=True)
class SessionLimits:
    """How long a console session lives: `idle_s` since its last request, `max_s` in all."""

    idle_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not (0 < self.idle_s <= self.max_s):
            raise ConfigError(
                f"console sessions need 0 < console_session_idle_s <= console_session_max_s, "
                f"got {self.idle_s} and {self.max_s}"
            )


def _expired(limits: SessionLimits, now: datetime) -> list[ColumnElement[bool]]:
    return [
        ConsoleSession.last_seen_at < now - timedelta(seconds=limits.idle_s),
        ConsoleSession.created_at < now - timedelta(seconds=limits.max_s),
    ]


def open_session(session: Session, token_sha256: str, now: datetime, limits: SessionLimits) -> str:
    """A new session for the API token whose SHA-256 is `token_sha256`; returns its secret.
    Sessions past their limits are deleted on the way."""
    session.execute(delete(ConsoleSession).where(or_(*_expired(limits, now))))
    secret = "eos_" + secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            session_sha256=hash_token(secret),
            token_sha256=token_sha256,
            created_at=now,
            last_seen_at=now,
        )
    )
    session.flush()
    return secret


def find_session(
    session: Session, secret: str, now: datetime, limits: SessionLimits
) -> ConsoleSession | None:
    """The live session whose secret is `secret`, its last use moved to `now`; None (and the
    row deleted) if it is idle or old past `limits`."""
    if not secret:
        return None
    row = session.scalar(
        select(ConsoleSession).where(ConsoleSession.session_sha256 == hash_token(secret))
    )
    if row is None:
        return None
    idle = now - as_utc(row.last_seen_at)
    age = now - as_utc(row.created_at)
    if idle > timedelta(seconds=limits.idle_s) or age > timedelta(seconds=limits.max_s):
        session.delete(row)
        return None
    if idle.total_seconds() > min(_TOUCH_EVERY_S, limits.idle_s / 4):
        row.last_seen_at = now  # not on every poll: the page script asks once a second
    return row


def close_session(session: Session, secret: str) -> None:
    """End the session whose secret is `secret` (nothing if there is none)."""
    if secret:
        session.execute(
            delete(ConsoleSession).where(ConsoleSession.session_sha256 == hash_token(secret))
        )


def csrf_token(secret: str) -> str:
    """The token every console form of this session carries (HMAC-SHA256 of the secret)."""
    return hmac.new(secret.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()
