"""API tokens with roles and owners: `viewer` reads, `operator` also runs rollouts and labels
devices, `admin` also manages tokens and the registry.

Every token belongs to someone: a named person (`kind="person"`, `owner` their name) or a
service, a program acting on its own (`kind="service"`, `owner` what it is). Only people
approve (`require_person`); the audit log names the person behind a token (`actor_label`).

Only a token's SHA-256 is stored; the secret is shown once, when it is created. The admin
token written by `edgeops server init` (`<home>/admin.token`) is always an admin, and a
person: `ADMIN_OWNER`.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError, RegistryError
from server.db.tables import ApiToken

__all__ = [
    "ADMIN_OWNER",
    "ACTOR_MAX_CHARS",
    "KINDS",
    "OWNER_MAX_CHARS",
    "PersonRequiredError",
    "ROLES",
    "Role",
    "TokenKind",
    "actor_label",
    "create_token",
    "find_token",
    "find_token_by_hash",
    "has_role",
    "hash_token",
    "list_tokens",
    "require_person",
    "revoke_token",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}

TokenKind = Literal["person", "service"]
KINDS: tuple[TokenKind, ...] = ("person", "service")
ADMIN_OWNER = "admin (created at init)"
OWNER_MAX_CHARS = 128  # ApiToken.owner
ACTOR_MAX_CHARS = 64  # AuditEntry.actor, PipelineRun.approved_by


class PersonRequiredError(EdgeOpsError):
    """The action needs a named person and the caller's token belongs to a service."""


def has_role(role: str, minimum: Role) -> bool:
    """`role` is at least `minimum` (admin > operator > viewer)."""
    return _RANK.get(role, -1) >= _RANK[minimum]


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def actor_label(token_name: str, owner: str | None) -> str:
    """Who acted, for the audit log and approvals: "Ada Lovelace (token ada)", at most
    ACTOR_MAX_CHARS (the owner is shortened, the token name kept); the bare token name for a
    token without an owner (made before migration 0005)."""
    if not owner:
        return token_name[:ACTOR_MAX_CHARS]
    suffix = f" (token {token_name})"
    room = ACTOR_MAX_CHARS - len(suffix)
    if room < 1:
        return token_name[:ACTOR_MAX_CHARS]
    return (owner if len(owner) <= room else owner[: room - 1] + "…") + suffix


def require_person(kind: str, who: str, action: str) -> None:
    """PersonRequiredError unless `kind` is "person": `action` (e.g. "approve pipeline run
    3") is a person's decision, never a service's."""
    if kind != "person":
        raise PersonRequiredError(
            f"{who} is a {kind} token: only a person may {action}; "
            "use a token that belongs to a named person")


def _checked_owner(kind: str, owner: str | None) -> str | None:
    if kind not in KINDS:
        raise ConfigError(f"token kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if owner is None:
        return None
    owner = owner.strip()
    what = "the person's name" if kind == "person" else "what the service is"
    if not owner:
        raise ConfigError(f"a {kind} token needs an owner: {what}")
    if len(owner) > OWNER_MAX_CHARS or not owner.isprintable():
        raise ConfigError(
            f"token owner must be printable and at most {OWNER_MAX_CHARS} characters ({what})")
    return owner


def create_token(session: Session, name: str, role: Role, created_by: str, *,
                 kind: TokenKind = "person", owner: str | None = None) -> tuple[ApiToken, str]:
    """A new token; returns the row and the secret (shown once, never stored).

    The API and the CLI always give `kind` and `owner`; `owner=None` stays possible here for
    fixtures, and such a token is named in the audit log by its token name alone. ConfigError
    for an unknown kind or a blank, overlong or unprintable owner."""
    owner = _checked_owner(kind, owner)
    secret = "eo_" + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role, token_sha256=hash_token(secret), created_by=created_by,
                     kind=kind, owner=owner)
    session.add(token)
    try:
        session.flush()
    except IntegrityError as err:
        session.rollback()
        raise RegistryError(f"a token named {name!r} exists already") from err
    return token, secret


def find_token(session: Session, secret: str) -> ApiToken | None:
    """The live (not revoked) token whose secret is `secret`."""
    return find_token_by_hash(session, hash_token(secret))


def find_token_by_hash(session: Session, token_sha256: str) -> ApiToken | None:
    """The live (not revoked) token whose secret's SHA-256 is `token_sha256`."""
    return session.scalar(
        select(ApiToken).where(
            ApiToken.token_sha256 == token_sha256, ApiToken.revoked_at.is_(None)
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
