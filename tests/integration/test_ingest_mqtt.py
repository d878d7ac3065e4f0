"""MQTT ingest end to end: a real Mosquitto, plain paho device clients, a SQLite file."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from edgeops.messages import MAX_PAYLOAD_BYTES, DeviceStatus, TelemetryBatch, encode
from edgeops.topics import Topics
from server.config.settings import ServerSettings
from server.db.tables import Device, TelemetryRecord
from server.fleet import inventory
from server.fleet.ingest.worker import Ingest, IngestTuning
from simulations.mosquitto import MosquittoBroker
from tests.integration.fleet_support import (
    device_client,
    postgres_database,
    publish,
    sqlite_database,
    wait_until,
)

pytestmark = [pytest.mark.telemetry, pytest.mark.integration]

FAST = IngestTuning(batch_max_wait_s=0.05, log_interval_s=0.0)


@pytest.fixture
def settings(tmp_path: Path, mosquitto: MosquittoBroker) -> ServerSettings:
    return ServerSettings(home=tmp_path, broker_port=mosquitto.port, fleet="f1")


@pytest.fixture
def topics(settings: ServerSettings) -> Topics:
    return Topics.for_fleet(settings.fleet, settings.topic_root)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker]:
    with sqlite_database(tmp_path) as factory:
        yield factory


@pytest.fixture
def ingest(settings: ServerSettings, db: sessionmaker) -> Iterator[Ingest]:
    worker = Ingest(settings, db, client_id=f"ingest-{uuid.uuid4().hex[:8]}", tuning=FAST)
    worker.start()
    assert worker.wait_ready(10), "ingest did not connect and subscribe"
    yield worker
    worker.stop()


def _status(device_id: str, **fields: object) -> DeviceStatus:
    values: dict[str, object] = {"online": True, "state": "running", "model": "digits"}
    return DeviceStatus(device_id=device_id, **{**values, "version": 1, **fields})


def _batch(device_id: str, **fields: object) -> TelemetryBatch:
    return TelemetryBatch(
        device_id=device_id, window_start=0, window_end=1, count=10, errors=0, **fields
    )


def _device(db: sessionmaker, device_id: str) -> Device | None:
    with db() as session:
        return session.get(Device, device_id)


def _telemetry_rows(db: sessionmaker) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(TelemetryRecord)) or 0


def test_statuses_and_telemetry_reach_the_database(
    ingest: Ingest, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    with device_client(mosquitto.port, "d1") as client:
        publish(client, topics.status("d1"), encode(_status("d1", version=4)), retain=True)
        for _ in range(3):
            publish(client, topics.telemetry("d1"), encode(_batch("d1")))

    wait_until(lambda: _telemetry_rows(db) == 3, what="3 telemetry rows")
    device = wait_until(lambda: _device(db, "d1"), what="device row")
    assert (device.online, device.state, device.version, device.telemetry_messages) == (
        True, "running", 4, 3
    )
    stats = ingest.stats()
    assert (stats.received, stats.statuses, stats.telemetry, stats.rejected) == (4, 1, 3, {})


def test_retained_status_published_before_start_reaches_the_inventory(
    settings: ServerSettings, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    with device_client(mosquitto.port, "early") as client:
        publish(client, topics.status("early"), encode(_status("early", version=7)), retain=True)

    with Ingest(settings, db, client_id="late-ingest", tuning=FAST) as worker:
        assert worker.wait_ready(10)
        device = wait_until(lambda: _device(db, "early"), what="retained status applied")

    assert (device.online, device.version) == (True, 7)


def test_duplicate_message_ids_are_stored_once(
    ingest: Ingest, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    batch = _batch("d1")
    with device_client(mosquitto.port, "d1") as client:
        for _ in range(3):
            publish(client, topics.telemetry("d1"), encode(batch))

    wait_until(lambda: ingest.stats().received == 3, what="3 messages received")
    wait_until(lambda: ingest.stats().telemetry + ingest.stats().duplicates == 3, what="written")
    assert _telemetry_rows(db) == 1
    assert ingest.stats().duplicates == 2
    assert _device(db, "d1").telemetry_messages == 1


def test_payload_naming_another_device_is_rejected_and_counted(
    ingest: Ingest, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    with device_client(mosquitto.port, "mallory") as client:
        publish(client, topics.status("mallory"), encode(_status("victim", version=666)))
        publish(client, topics.telemetry("mallory"), encode(_batch("victim")))

    wait_until(lambda: ingest.stats().rejected.get("device_mismatch") == 2, what="2 rejections")
    assert _device(db, "victim") is None and _device(db, "mallory") is None
    assert _telemetry_rows(db) == 0


def test_bad_payloads_are_counted_and_good_traffic_keeps_flowing(
    ingest: Ingest, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    good = encode(_batch("d1"))
    bad = {
        "malformed": [b"\x00\xffgarbage", good[: len(good) // 2]],
        "oversized": [b"{" + b" " * MAX_PAYLOAD_BYTES + b"}"],
        "invalid_schema": [
            json.dumps({**json.loads(good), "schema": 99}).encode(),
            json.dumps({"device_id": "d1"}).encode(),
            encode(_status("d1")),  # a status on the telemetry topic
        ],
        "empty": [b""],
    }
    with device_client(mosquitto.port, "d1") as client:
        for payloads in bad.values():
            for payload in payloads:
                publish(client, topics.telemetry("d1"), payload)
                publish(client, topics.telemetry("d1"), encode(_batch("d1")))
        publish(client, topics.status("d1"), encode(_status("d1", version=9)))

    expected = {reason: len(payloads) for reason, payloads in bad.items()}
    wait_until(lambda: ingest.stats().rejected == expected, what=f"rejections {expected}")
    wait_until(lambda: _telemetry_rows(db) == 7, what="all good telemetry stored")
    wait_until(lambda: (_device(db, "d1") or Device()).version == 9, what="status after the junk")
    assert ingest.stats().received == 7 + 7 + 1  # bad, good, status


def test_last_will_marks_the_device_offline(
    ingest: Ingest, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    will = encode(DeviceStatus(device_id="d1", online=False, state="offline"))
    with device_client(mosquitto.port, "d1", will=(topics.status("d1"), will)) as client:
        publish(client, topics.status("d1"), encode(_status("d1", version=5)), retain=True)
        wait_until(lambda: (_device(db, "d1") or Device()).online, what="device online")
        # What the broker sees when the agent dies: a disconnect that asks for the will.
        with_will = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        client.disconnect(reasoncode=with_will)

    device = wait_until(
        lambda: (d := _device(db, "d1")) is not None and not d.online and d, what="device offline"
    )
    assert (device.state, device.version) == ("offline", 5)


def test_traffic_queued_while_ingest_is_stopped_is_delivered_on_restart(
    settings: ServerSettings, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    first = Ingest(settings, db, client_id="ingest-restart", tuning=FAST)
    first.start()
    assert first.wait_ready(10)
    first.stop()

    with device_client(mosquitto.port, "d1") as client:
        for _ in range(5):
            publish(client, topics.telemetry("d1"), encode(_batch("d1")))
        publish(client, topics.status("d1"), encode(_status("d1", version=2)))

    with Ingest(settings, db, client_id="ingest-restart", tuning=FAST) as second:
        wait_until(lambda: _telemetry_rows(db) == 5, what="queued telemetry delivered")
        wait_until(lambda: (_device(db, "d1") or Device()).version == 2, what="queued status")
        assert second.stats().rejected == {}
    with db() as session:
        assert [d.device_id for d in inventory.list_devices(session)] == ["d1"]


class _FlakyDatabase:
    """A session factory whose database is 'down' until `up` is set."""

    def __init__(self, real: sessionmaker) -> None:
        self.real = real
        self.up = False

    def __call__(self) -> Session:
        if not self.up:
            raise OperationalError("connect", {}, Exception("database is down"))
        return self.real()


def test_nothing_is_acknowledged_before_it_is_stored(
    settings: ServerSettings, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    flaky = _FlakyDatabase(db)
    down = Ingest(settings, flaky, client_id="ingest-ack", tuning=FAST)
    down.start()
    assert down.wait_ready(10)
    with device_client(mosquitto.port, "d1") as client:
        for _ in range(4):
            publish(client, topics.telemetry("d1"), encode(_batch("d1")))
    wait_until(lambda: down.stats().database_retries >= 2, what="writer retrying")
    down.stop()  # gives up while the database is down: nothing was acknowledged

    with Ingest(settings, db, client_id="ingest-ack", tuning=FAST):
        wait_until(lambda: _telemetry_rows(db) == 4, what="redelivered telemetry stored")


def test_writer_retries_until_the_database_is_back(
    settings: ServerSettings, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    flaky = _FlakyDatabase(db)
    with Ingest(settings, flaky, client_id="ingest-retry", tuning=FAST) as worker:
        assert worker.wait_ready(10)
        with device_client(mosquitto.port, "d1") as client:
            publish(client, topics.telemetry("d1"), encode(_batch("d1")))
        wait_until(lambda: worker.stats().database_retries >= 1, what="writer retrying")
        flaky.up = True
        wait_until(lambda: _telemetry_rows(db) == 1, what="stored once the database is back")


def test_full_batches_are_written_on_the_network_thread_which_never_waits_for_a_failing_database(
    settings: ServerSettings, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    flaky = _FlakyDatabase(db)
    tuning = IngestTuning(batch_max_messages=2, batch_max_wait_s=30.0)  # only full batches
    with Ingest(settings, flaky, client_id="ingest-inline", tuning=tuning) as worker:
        assert worker.wait_ready(10)
        with device_client(mosquitto.port, "d1") as client:
            for _ in range(6):
                publish(client, topics.telemetry("d1"), encode(_batch("d1")))
        # The first full batch fails on the network thread and goes to the flush thread;
        # the network thread keeps receiving while the flush thread retries.
        wait_until(lambda: worker.stats().received == 6, what="all six received during the outage")
        wait_until(lambda: worker.stats().database_retries >= 1, what="flush thread retrying")
        assert _telemetry_rows(db) == 0
        flaky.up = True
        wait_until(lambda: _telemetry_rows(db) == 6, what="stored once the database is back")
        # ... and back on the network thread: two more are written without waiting 30 s.
        with device_client(mosquitto.port, "d1") as client:
            for _ in range(2):
                publish(client, topics.telemetry("d1"), encode(_batch("d1")))
        wait_until(lambda: _telemetry_rows(db) == 8, timeout_s=10, what="inline write after recovery")
        assert worker.stats().telemetry == 8


def test_ingest_reconnects_after_a_broker_restart(
    ingest: Ingest, db: sessionmaker, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    mosquitto.restart()
    wait_until(lambda: ingest.wait_ready(0), timeout_s=15, what="ingest resubscribed")

    with device_client(mosquitto.port, "d1") as client:
        publish(client, topics.telemetry("d1"), encode(_batch("d1")))

    wait_until(lambda: _telemetry_rows(db) == 1, what="telemetry after the restart")


def test_a_message_postgresql_refuses_is_isolated_and_counted(
    settings: ServerSettings, topics: Topics, mosquitto: MosquittoBroker
) -> None:
    with postgres_database() as pg, Ingest(settings, pg, client_id="pg", tuning=FAST) as worker:
        assert worker.wait_ready(10)
        with device_client(mosquitto.port, "d1") as client:
            publish(client, topics.telemetry("d1"), encode(_batch("d1")))
            too_long = _status("d1", model="m" * 100)  # the column holds 64
            publish(client, topics.status("d1"), encode(too_long))
            publish(client, topics.telemetry("d1"), encode(_batch("d1")))

        wait_until(lambda: worker.stats().rejected == {"unstorable": 1}, what="unstorable counted")
        wait_until(lambda: _telemetry_rows(pg) == 2, what="the good batches stored")
