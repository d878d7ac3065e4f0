"""Helpers for the fleet tests: migrated databases (SQLite file, PostgreSQL schema), device
clients speaking plain paho-mqtt, and polling."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from server.db.engine import close_database, open_database

POSTGRES_URL = os.environ.get(
    "EDGEOPS_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


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
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    schema = f"fleet_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as err:  # noqa: BLE001 - any failure to reach it means: skip
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(err).__name__}: {err}")
    factory = open_database(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        yield factory
    finally:
        close_database(factory)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
