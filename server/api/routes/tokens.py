"""`/api/tokens`: API tokens with roles (admin only). The secret is returned once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from server.api.audit import note
from server.api.deps import AdminDep, SessionFactoryDep
from server.auth import tokens
from server.auth.tokens import Role

__all__ = ["TokenCreate", "TokenCreated", "TokenPublic", "router"]

router = APIRouter(prefix="/api/tokens", tags=["tokens"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="who or what holds the token")
    role: Role = "viewer"


class TokenPublic(BaseModel):
    name: str
    role: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown once, store it now")


@router.post("", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, user: AdminDep, session_factory: SessionFactoryDep,
                 request: Request) -> TokenCreated:
    with session_factory.begin() as session:
        token, secret = tokens.create_token(session, body.name, body.role, user.name)
        created = TokenCreated(name=token.name, role=token.role, created_by=token.created_by,
                               created_at=token.created_at, revoked_at=None, token=secret)
    note(request, f"token {body.name} ({body.role}) created")
    return created


@router.get("", response_model=list[TokenPublic])
def list_tokens(_user: AdminDep, session_factory: SessionFactoryDep) -> list[TokenPublic]:
    with session_factory() as session:
        return [
            TokenPublic(name=t.name, role=t.role, created_by=t.created_by,
                        created_at=t.created_at, revoked_at=t.revoked_at)
            for t in tokens.list_tokens(session)
        ]


@router.delete("/{name}", response_model=TokenPublic)
def revoke_token(name: Annotated[str, Path(pattern=NAME)], _user: AdminDep,
                 session_factory: SessionFactoryDep, request: Request) -> TokenPublic:
    """Revoke a token at once; it stays listed, with when it was revoked."""
    with session_factory.begin() as session:
        t = tokens.revoke_token(session, name)
        public = TokenPublic(name=t.name, role=t.role, created_by=t.created_by,
                             created_at=t.created_at, revoked_at=t.revoked_at)
    note(request, f"token {name} revoked")
    return public
