"""A server over real HTTP for the console and API hardening tests: uvicorn on a free port,
SQLite, one published release, two devices and a token per role."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.orm import sessionmaker

from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.auth.tokens import create_token
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from server.pipeline.publishing import PublishedRelease, publish_package
from tests.server.helpers import live_server, make_package
from tests.server.rollouts.conftest import add_devices

__all__ = ["HttpWorld", "http_world"]


@dataclass
class HttpWorld:
    url: str
    app: FastAPI
    settings: ServerSettings
    session_factory: sessionmaker
    release: PublishedRelease
    package_dir: Path
    tokens: dict[str, str]  # role -> secret ("admin" is the home's admin token)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, follow_redirects=False, **kwargs)

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@contextmanager
def http_world(base: Path, **settings_overrides: Any) -> Iterator[HttpWorld]:
    """The server (no broker: `with_fleet=False`) for `settings_overrides`, serving."""
    settings = ServerSettings(home=base / "home")
    init_home(settings)
    settings = dataclasses.replace(settings, **settings_overrides)
    package_dir = make_package(base / "package")
    factory = open_database(settings.resolved_database_url)
    release = publish_package(settings, factory, package_dir)
    add_devices(factory, ["dev-1", "dev-2"], release.target_path)
    tokens = {"admin": read_admin_token(settings)}
    with factory.begin() as session:
        for role in ("viewer", "operator"):
            tokens[role] = create_token(session, role, role, "test", owner=f"{role} person")[1]
    app = build_app(settings, with_fleet=False)
    try:
        with live_server(app) as url:
            yield HttpWorld(url, app, settings, factory, release, package_dir, tokens)
    finally:
        close_database(factory)
