"""Fixtures for the rollout tests: a server home with two releases and a known fleet."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from edgeops.messages import DeviceStatus
from server.app.build import build_app
from server.app.home import init_home
from server.auth.tokens import create_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.fleet import inventory
from server.pipeline.publishing import publish_package
from tests.server.helpers import free_port, make_package


@dataclass
class ApiWorld:
    client: TestClient
    settings: ServerSettings
    session_factory: sessionmaker
    targets: list[str]
    tokens: dict[str, str]  # role -> secret

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def add_devices(session_factory: sessionmaker, ids: list[str], release: str | None = None) -> None:
    now = datetime.now(UTC)
    with session_factory.begin() as session:
        for device_id in ids:
            inventory.apply_status(
                session,
                DeviceStatus(device_id=device_id, online=True, state="running", release=release),
                now,
            )


@pytest.fixture(scope="module")
def api_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    """The full app (its broker port is closed: no tick runs) with 2 releases, 30 devices and one token per role."""
    tmp = tmp_path_factory.mktemp("api")
    settings = ServerSettings(home=tmp / "server", http_port=0, broker_port=free_port())
    init_home(settings)
    factory = open_database(settings.resolved_database_url)
    targets = [
        publish_package(settings, factory, make_package(tmp / f"pkg{i}", seed=i), "int8").target_path
        for i in (1, 2)
    ]
    add_devices(factory, [f"dev-{i:03d}" for i in range(30)], targets[0])
    tokens = {"admin": settings.admin_token_file.read_text().strip()}
    with factory.begin() as session:
        for role in ("viewer", "operator"):
            tokens[role] = create_token(session, f"{role}-1", role, "test")[1]  # type: ignore[arg-type]
    app = build_app(settings)  # no broker listens: the runner waits, the API works
    with TestClient(app) as client:
        yield ApiWorld(client, settings, factory, targets, tokens)
    close_database(factory)
