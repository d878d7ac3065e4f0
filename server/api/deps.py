"""FastAPI dependencies shared by every router: the app's services and authentication.

The composition root puts the services on `app.state`; routers take them
through these `Annotated` aliases:

    SettingsDep  SessionFactoryDep  ArtifactStoreDep  RegistryDep     always there
    EnrollmentDep  MetricsRegistryDep  PublisherDep                   503 when not wired
    IngestDep                                                         None when not wired

Authentication, one idiom for every route:

    Authorization: Bearer <token>     API clients and the CLI (the only way into /api)

`ViewerDep`, `OperatorDep` and `AdminDep` resolve the caller to a `Principal` of at least
that role (401 without a valid token, 403 with too small a role) and leave it on
`request.state.principal` for the audit log; `require_role` is the same check for a route
that needs a token only when a setting says so. The console's session cookie is not
accepted here, so no cross-site form can act through the API (server.console.auth). A principal carries its token's `kind` (a
person or a service) and `owner`; `actor` names the person behind it for the audit log.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import sessionmaker

from server.auth import tokens
from server.auth.tokens import ADMIN_OWNER, Role, TokenKind, actor_label
from server.config.settings import ServerSettings
from server.fleet.commands import CommandPublisher
from server.fleet.ingest.worker import Ingest
from server.identity.enrollment import Enrollment
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Registry

__all__ = [
    "AdminDep",
    "ArtifactStoreDep",
    "EnrollmentDep",
    "IngestDep",
    "MetricsRegistryDep",
    "OperatorDep",
    "Principal",
    "PublisherDep",
    "RegistryDep",
    "SessionFactoryDep",
    "SettingsDep",
    "ViewerDep",
    "authenticate",
    "principal_for_hash",
    "require_role",
]


@dataclass(frozen=True)
class Principal:
    """The caller: its token's name and role, and whom the token belongs to."""

    name: str
    role: Role
    kind: TokenKind = "person"
    owner: str | None = None

    @property
    def actor(self) -> str:
        """Who acted, for the audit log and approvals: "Ada Lovelace (token ada)"."""
        return actor_label(self.name, self.owner)


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _session_factory(request: Request) -> sessionmaker:
    return request.app.state.session_factory


def _artifact_store(request: Request) -> ArtifactStore:
    return request.app.state.artifact_store


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _wired(request: Request, name: str, what: str) -> Any:
    """The service `app.state.<name>`, or a 503 saying this process does not run it."""
    service = getattr(request.app.state, name, None)
    if service is None:
        raise HTTPException(503, detail=f"no {what} runs in this server process")
    return service


def _enrollment(request: Request) -> Enrollment:
    enrollment: Enrollment = _wired(request, "enrollment", "device enrollment")
    return enrollment


def _metrics_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = _wired(request, "metrics_registry", "metrics registry")
    return registry


def _publisher(request: Request) -> CommandPublisher:
    publisher: CommandPublisher = _wired(request, "publisher", "MQTT command publisher")
    return publisher


def _ingest(request: Request) -> Ingest | None:
    ingest: Ingest | None = getattr(request.app.state, "ingest", None)
    return ingest


def authenticate(request: Request, secret: str) -> Principal | None:
    """The principal holding `secret`: the home's admin token, or a live API token."""
    return principal_for_hash(request, tokens.hash_token(secret)) if secret else None


def principal_for_hash(request: Request, token_sha256: str) -> Principal | None:
    """The principal whose token's SHA-256 is `token_sha256` (a console session keeps only
    that): the home's admin token, or a live API token."""
    admin_sha256 = tokens.hash_token(request.app.state.admin_token)
    if hmac.compare_digest(token_sha256.encode(), admin_sha256.encode()):
        return Principal(name="admin", role="admin", kind="person", owner=ADMIN_OWNER)
    with request.app.state.session_factory() as session:
        token = tokens.find_token_by_hash(session, token_sha256)
        if token is None:
            return None
        return Principal(name=token.name, role=token.role, kind=token.kind,  # type: ignore[arg-type]
                         owner=token.owner)


def _presented(authorization: str | None) -> str:
    scheme, _, presented = (authorization or "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else ""


def require_role(request: Request, authorization: str | None, minimum: Role) -> Principal:
    """The caller presenting `Authorization: Bearer <token>`, of at least `minimum` (401
    without a valid token, 403 with too small a role), left on `request.state.principal`."""
    principal = authenticate(request, _presented(authorization))
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


def _require(minimum: Role) -> Callable[..., Principal]:
    """The dependency behind the `<Role>Dep` aliases: the caller, of at least `minimum`."""

    def dependency(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        return require_role(request, authorization, minimum)

    dependency.__name__ = f"require_{minimum}"
    return dependency


SettingsDep = Annotated[ServerSettings, Depends(_settings)]
SessionFactoryDep = Annotated[sessionmaker, Depends(_session_factory)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(_artifact_store)]
RegistryDep = Annotated[Registry, Depends(_registry)]
EnrollmentDep = Annotated[Enrollment, Depends(_enrollment)]
MetricsRegistryDep = Annotated[CollectorRegistry, Depends(_metrics_registry)]
PublisherDep = Annotated[CommandPublisher, Depends(_publisher)]
IngestDep = Annotated[Ingest | None, Depends(_ingest)]
ViewerDep = Annotated[Principal, Depends(_require("viewer"))]
OperatorDep = Annotated[Principal, Depends(_require("operator"))]
AdminDep = Annotated[Principal, Depends(_require("admin"))]
