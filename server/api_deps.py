"""FastAPI dependencies shared by every router: the app's services and admin auth.

`create_app` puts the services on `app.state`; routers take them through these
`Annotated` aliases (`RegistryDep`, `SessionFactoryDep`, ...) and guard mutating routes
with `AdminDep`.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import sessionmaker

from server.artifact_store import ArtifactStore
from server.registry import Registry
from server.settings import ServerSettings

__all__ = [
    "AdminDep",
    "ArtifactStoreDep",
    "RegistryDep",
    "SessionFactoryDep",
    "SettingsDep",
    "require_admin",
]


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _session_factory(request: Request) -> sessionmaker:
    return request.app.state.session_factory


def _artifact_store(request: Request) -> ArtifactStore:
    return request.app.state.artifact_store


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse (401) a request without `Authorization: Bearer <admin token>`."""
    expected: str = request.app.state.admin_token
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    ):
        raise HTTPException(
            status_code=401,
            detail="admin token required: send 'Authorization: Bearer <token>' "
            "(the token is in <home>/admin.token)",
            headers={"WWW-Authenticate": "Bearer"},
        )


SettingsDep = Annotated[ServerSettings, Depends(_settings)]
SessionFactoryDep = Annotated[sessionmaker, Depends(_session_factory)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(_artifact_store)]
RegistryDep = Annotated[Registry, Depends(_registry)]
AdminDep = Depends(require_admin)
