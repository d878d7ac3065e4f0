"""FastAPI dependencies shared by every router: the app's services and authentication.

`create_app` puts the services on `app.state`; routers take them through these
`Annotated` aliases (`RegistryDep`, `SessionFactoryDep`, ...). Authentication:

    Authorization: Bearer <token>     API clients and the CLI
    cookie edgeops_token=<token>      the console (set by its login form)

`ViewerDep`, `OperatorDep` and `AdminUserDep` resolve the caller to a `Principal` of at
least that role (401 without a valid token, 403 with too small a role) and leave it on
`request.state.principal` for the audit log. `AdminDep` / `require_admin` guard the older
routes the same way.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import sessionmaker

from server.auth import tokens
from server.auth.tokens import Role
from server.config.settings import ServerSettings
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry

__all__ = [
    "AdminDep",
    "AdminUserDep",
    "ArtifactStoreDep",
    "CONSOLE_COOKIE",
    "OperatorDep",
    "Principal",
    "RegistryDep",
    "SessionFactoryDep",
    "SettingsDep",
    "ViewerDep",
    "authenticate",
    "require_admin",
    "require_operator",
    "require_viewer",
]

CONSOLE_COOKIE = "edgeops_token"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _session_factory(request: Request) -> sessionmaker:
    return request.app.state.session_factory


def _artifact_store(request: Request) -> ArtifactStore:
    return request.app.state.artifact_store


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def authenticate(request: Request, secret: str) -> Principal | None:
    """The principal holding `secret`: the home's admin token, or a live API token."""
    if not secret:
        return None
    admin_token: str = request.app.state.admin_token
    if hmac.compare_digest(secret.encode(), admin_token.encode()):
        return Principal(name="admin", role="admin")
    with request.app.state.session_factory() as session:
        token = tokens.find_token(session, secret)
        return Principal(name=token.name, role=token.role) if token else None  # type: ignore[arg-type]


def _presented(request: Request, authorization: str | None) -> str:
    if authorization:
        scheme, _, presented = authorization.partition(" ")
        return presented.strip() if scheme.lower() == "bearer" else ""
    return request.cookies.get(CONSOLE_COOKIE, "")


def _require(minimum: Role):  # type: ignore[no-untyped-def]
    def dependency(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        principal = authenticate(request, _presented(request, authorization))
        if principal is None:
            raise HTTPException(
                status_code=401,
                detail="a token is required: send 'Authorization: Bearer <token>' "
                "(the admin token is in <home>/admin.token; admins create others "
                "with POST /api/tokens)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.principal = principal
        if not tokens.has_role(principal.role, minimum):
            raise HTTPException(
                status_code=403,
                detail=f"token {principal.name!r} has role {principal.role}; "
                f"this needs {minimum} or above",
            )
        return principal

    dependency.__name__ = f"require_{minimum}"
    return dependency


require_viewer = _require("viewer")
require_operator = _require("operator")
_require_admin_principal = _require("admin")


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse a request without an admin token (401) or with a smaller role (403)."""
    _require_admin_principal(request, authorization)


SettingsDep = Annotated[ServerSettings, Depends(_settings)]
SessionFactoryDep = Annotated[sessionmaker, Depends(_session_factory)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(_artifact_store)]
RegistryDep = Annotated[Registry, Depends(_registry)]
ViewerDep = Annotated[Principal, Depends(require_viewer)]
OperatorDep = Annotated[Principal, Depends(require_operator)]
AdminUserDep = Annotated[Principal, Depends(_require_admin_principal)]
AdminDep = Depends(require_admin)
