"""Helpers for the fleet tests: migrated databases (SQLite file, PostgreSQL schema), device
clients speaking plain paho-mqtt, and polling."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy.orm import sessionmaker

from server.db.engine import close_database, open_database
from tests.server.helpers import postgres_available, postgres_schema_url


@contextmanager
def sqlite_database(tmp_path: Path) -> Iterator[sessionmaker]:
    factory = open_database(f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        yield factory
    finally:
        close_database(factory)


@contextmanager
def postgres_database() -> Iterator[sessionmaker]:
    """A migrated PostgreSQL schema of its own, dropped afterwards; skip if unreachable."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_schema_url() as url:
        factory = open_database(url)
        try:
            yield factory
        finally:
            close_database(factory)


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[sessionmaker]:
    """A migrated database of `kind` ("sqlite" or "postgresql") for one test."""
    with sqlite_database(tmp_path) if kind == "sqlite" else postgres_database() as factory:
        yield factory


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.02)


@contextmanager
def device_client(
    port: int,
    client_id: str,
    *,
    will: tuple[str, bytes] | None = None,
    on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
    subscribe: str | None = None,
) -> Iterator[mqtt.Client]:
    """A plain paho MQTT 5 client, as an agent would use, connected (and subscribed)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    subscribed: list[int] = []
    if on_message is not None:
        client.on_message = lambda _c, _u, message: on_message(message)
    client.on_subscribe = lambda _c, _u, mid, _rc, _p: subscribed.append(mid)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        wait_until(client.is_connected, 5, "device client connected")
        if subscribe is not None:
            _, mid = client.subscribe(subscribe, qos=1)
            wait_until(lambda: mid in subscribed, 5, "device subscription")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: mqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(5)
    assert info.is_published(), f"publish to {topic} not acknowledged"
