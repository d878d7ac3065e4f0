"""`/api/tokens`: API tokens with roles (admin only). The secret is returned once.

Every token belongs to a named person or a service: the body's `kind` and `owner` are
required (422 naming the field when missing), and listing shows both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from server.api.audit import note
from server.api.deps import AdminDep, SessionFactoryDep
from server.auth import tokens
from server.auth.tokens import OWNER_MAX_CHARS, Role, TokenKind
from server.db.tables import ApiToken

__all__ = ["TokenCreate", "TokenCreated", "TokenPublic", "router"]

router = APIRouter(prefix="/api/tokens", tags=["tokens"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Owner = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                         max_length=OWNER_MAX_CHARS)]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="the token's name (unique)")
    role: Role = "viewer"
    kind: TokenKind = Field(description="person: held by a named person; service: by a "
                                        "program (services never approve)")
    owner: Owner = Field(description="the person's name (\"Ada Lovelace\"), or what the "
                                     "service is (\"ci deploy bot\")")


class TokenPublic(BaseModel):
    name: str
    role: str
    kind: str
    owner: str | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenPublic:
        return cls(name=token.name, role=token.role, kind=token.kind, owner=token.owner,
                   created_by=token.created_by, created_at=token.created_at,
                   revoked_at=token.revoked_at)


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown once, store it now")


@router.post("", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, user: AdminDep, session_factory: SessionFactoryDep,
                 request: Request) -> TokenCreated:
    with session_factory.begin() as session:
        token, secret = tokens.create_token(session, body.name, body.role, user.name,
                                            kind=body.kind, owner=body.owner)
        created = TokenCreated(**TokenPublic.of(token).model_dump(), token=secret)
    note(request, f"token {body.name} ({body.role}, {body.kind} {body.owner!r}) created")
    return created


@router.get("", response_model=list[TokenPublic])
def list_tokens(_user: AdminDep, session_factory: SessionFactoryDep) -> list[TokenPublic]:
    with session_factory() as session:
        return [TokenPublic.of(t) for t in tokens.list_tokens(session)]


@router.delete("/{name}", response_model=TokenPublic)
def revoke_token(name: Annotated[str, Path(pattern=NAME)], _user: AdminDep,
                 session_factory: SessionFactoryDep, request: Request) -> TokenPublic:
    """Revoke a token at once; it stays listed, with when it was revoked."""
    with session_factory.begin() as session:
        public = TokenPublic.of(tokens.revoke_token(session, name))
    note(request, f"token {name} revoked")
    return public
