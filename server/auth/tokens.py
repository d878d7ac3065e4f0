"""API tokens with roles: `viewer` reads, `operator` also runs rollouts and labels devices,
`admin` also manages tokens and the registry.

Only a token's SHA-256 is stored; the secret is shown once, when it is created. The admin
token written by `edgeops server init` (`<home>/admin.token`) is always an admin.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeops.errors import NotFoundError, RegistryError
from server.db.tables import ApiToken

__all__ = [
    "ROLES",
    "Role",
    "create_token",
    "find_token",
    "has_role",
    "hash_token",
    "list_tokens",
    "revoke_token",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def has_role(role: str, minimum: Role) -> bool:
    """`role` is at least `minimum` (admin > operator > viewer)."""
    return _RANK.get(role, -1) >= _RANK[minimum]


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, name: str, role: Role, created_by: str) -> tuple[ApiToken, str]:
    """A new token; returns the row and the secret (shown once, never stored)."""
    secret = "eo_" + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role, token_sha256=hash_token(secret), created_by=created_by)
    session.add(token)
    try:
        session.flush()
    except IntegrityError as err:
        session.rollback()
        raise RegistryError(f"a token named {name!r} exists already") from err
    return token, secret


def find_token(session: Session, secret: str) -> ApiToken | None:
    """The live (not revoked) token whose secret is `secret`."""
    return session.scalar(
        select(ApiToken).where(
            ApiToken.token_sha256 == hash_token(secret), ApiToken.revoked_at.is_(None)
        )
    )


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, name: str) -> ApiToken:
    token = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise NotFoundError(f"no token named {name!r}")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
    return token
