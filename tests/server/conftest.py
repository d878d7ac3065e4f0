"""Fixtures for server unit tests: an initialized server home and a model package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from server.app.home import init_home
from server.config.settings import ServerSettings
from server.db.engine import close_database, open_database
from tests.server.helpers import make_package


@pytest.fixture
def server_settings(tmp_path: Path) -> ServerSettings:
    """A freshly initialized server home (SQLite, artifacts, TUF keys, admin token)."""
    settings = ServerSettings(home=tmp_path / "home", http_port=0)
    init_home(settings)
    return settings


@pytest.fixture
def session_factory(server_settings: ServerSettings) -> Iterator[sessionmaker]:
    factory = open_database(server_settings.resolved_database_url)
    yield factory
    close_database(factory)


@pytest.fixture(scope="session")
def package_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("package") / "digits")


@pytest.fixture
def package_dir(package_template: Path, tmp_path: Path) -> Path:
    """A private copy of a valid package, safe to break."""
    import shutil

    return Path(shutil.copytree(package_template, tmp_path / "package"))
