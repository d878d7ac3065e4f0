from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import APIRouter
from sqlalchemy.orm import sessionmaker
from starlette.testclient import TestClient

from edgeops import errors
from server.app.build import build_app, tuf_refresher
from server.app.http_app import create_app
from server.config.settings import ServerSettings
from server.registry.artifact_store import ArtifactStore
from server.trust.repository import TufRepository, init_repository

pytestmark = [pytest.mark.ota]


def _failing_router() -> APIRouter:
    router = APIRouter(prefix="/boom")
    table: dict[str, errors.EdgeOpsError] = {
        "notfound": errors.NotFoundError("no such device"),
        "registry": errors.RegistryError("duplicate"),
        "config": errors.ConfigError("bad input"),
        "payload": errors.PayloadError("bad payload"),
        "trust": errors.TrustError("bad signature"),
        "transport": errors.TransportError("broker down"),
    }

    @router.get("/{kind}")
    def boom(kind: str) -> None:
        raise table[kind]

    return router


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("notfound", 404),
        ("registry", 409),
        ("config", 400),
        ("payload", 422),
        ("trust", 403),
        ("transport", 503),
    ],
)
def test_domain_errors_map_to_http_statuses_in_one_place(
    server_settings: ServerSettings, session_factory: sessionmaker, kind: str, status: int
) -> None:
    app = create_app(
        server_settings,
        session_factory,
        ArtifactStore(server_settings.artifacts_dir),
        [_failing_router()],
    )
    response = TestClient(app).get(f"/boom/{kind}")
    assert response.status_code == status
    assert set(response.json()) == {"detail", "error"}


def test_create_app_needs_the_admin_token(
    server_settings: ServerSettings, session_factory: sessionmaker
) -> None:
    server_settings.admin_token_file.unlink()
    with pytest.raises(errors.ConfigError, match="admin token"):
        create_app(server_settings, session_factory, ArtifactStore(server_settings.artifacts_dir))


def test_build_app_serves_with_its_lifespan(server_settings: ServerSettings) -> None:
    with TestClient(build_app(server_settings, with_fleet=False)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/tuf/metadata/1.root.json").status_code == 200


def test_the_refresher_renews_an_expiring_timestamp_at_start(tmp_path: Path) -> None:
    init_repository(tmp_path / "tuf", now=datetime.now(UTC) - timedelta(hours=20))
    repository = TufRepository(tmp_path / "tuf")

    async def run() -> None:
        async with tuf_refresher(repository, interval_s=3600)(None):  # type: ignore[arg-type]
            pass

    asyncio.run(run())
    assert "timestamp.json" in {p.name for p in repository.metadata_dir.iterdir()}
    from tuf.api.metadata import Metadata

    timestamp = Metadata.from_file(str(repository.metadata_dir / "timestamp.json")).signed
    assert timestamp.version == 2
    assert timestamp.expires > datetime.now(UTC) + timedelta(hours=23)
