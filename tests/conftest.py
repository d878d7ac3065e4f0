"""Shared fixtures: a real Mosquitto per test on a free port, a migrated database of each
kind the server supports (`sql_database`: SQLite, then PostgreSQL), and temporary homes.

Also one check on the markers: a test that opens an IP socket (connect or bind over
AF_INET/AF_INET6) talks to a real part, so it must carry the `integration` marker.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from simulations.mosquitto import MosquittoBroker
from tests.integration.fleet_support import database

_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_WATCHED = ("connect", "connect_ex", "bind")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free port, stopped after the test."""
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker]:
    """A migrated database for one test, once on SQLite and once on PostgreSQL (its own
    schema, dropped afterwards; skipped if PostgreSQL is unreachable)."""
    with database(request.param, tmp_path) as factory:
        yield factory


@pytest.fixture(autouse=True)
def _ip_sockets_need_the_integration_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that used an IP socket without `@pytest.mark.integration`.

    Tests marked `integration` pay nothing; for the others `socket.socket`'s connect,
    connect_ex and bind are wrapped for the test's duration and the first IP use is
    recorded (AF_UNIX socketpairs, such as asyncio's self-pipe, are not IP and pass).
    Sockets opened by child processes are not seen.
    """
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    used: list[str] = []
    originals = {name: getattr(socket.socket, name) for name in _WATCHED}

    def watch(name: str) -> Any:
        original = originals[name]

        def wrapper(self: socket.socket, address: Any, *args: Any, **kwargs: Any) -> Any:
            if self.family in _IP_FAMILIES and not used:
                used.append(f"socket.{name}({address!r})")
            return original(self, address, *args, **kwargs)

        return wrapper

    for name in _WATCHED:
        setattr(socket.socket, name, watch(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(socket.socket, name, original)
    if used:
        pytest.fail(
            f"{request.node.nodeid} opened an IP socket ({used[0]}) but is not marked "
            "`integration`: add pytest.mark.integration to its pytestmark",
            pytrace=False,
        )
