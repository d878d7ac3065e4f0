"""Device identity at a real Mosquitto configured by `server.identity.broker_config`: certificates
from the fleet CA, CN as username and client id, ACLs on %u."""

from __future__ import annotations

import queue
import ssl
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy.orm import sessionmaker

from edgeops.messages import Command, DeviceStatus, TelemetryBatch, encode
from edgeops.topics import Topics
from server.fleet.commands import CommandPublisher
from server.fleet.ingest.worker import Ingest, IngestTuning
from server.identity.ca import FleetCA
from tests.integration.fleet_support import sqlite_database, wait_until
from tests.server.identity.secure_fleet import FLEET, SecureFleet, tls_client

pytestmark = [pytest.mark.telemetry, pytest.mark.integration]

TOPICS = Topics.for_fleet(FLEET)
FAST = IngestTuning(batch_max_wait_s=0.05, log_interval_s=0.0)


def _batch(device_id: str, count: int = 5) -> bytes:
    return encode(TelemetryBatch(device_id=device_id, window_start=0, window_end=1, count=count,
                                 errors=0))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker]:
    with sqlite_database(tmp_path) as factory:
        yield factory


@pytest.fixture
def ingest(fleet: SecureFleet, db: sessionmaker) -> Iterator[Ingest]:
    worker = Ingest(fleet.settings, db, tuning=FAST)
    worker.start()
    assert worker.wait_ready(10), "ingest did not connect with its server identity"
    yield worker
    worker.stop()


def _publish_result(client: mqtt.Client, topic: str, payload: bytes) -> bool:
    """Publish at QoS 1; True if the broker accepted it (PUBACK without a failure code)."""
    results: queue.Queue[bool] = queue.Queue()
    client.on_publish = lambda _c, _u, _mid, reason, _p: results.put(not reason.is_failure)
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    return results.get(timeout=5)


def test_the_server_identities_connect_and_a_device_reaches_ingest(
    fleet: SecureFleet, ingest: Ingest
) -> None:
    identity = fleet.device("dev-a")
    with tls_client(fleet.broker.port, identity) as client:
        assert _publish_result(client, TOPICS.telemetry("dev-a"), _batch("dev-a"))

    wait_until(lambda: ingest.stats().telemetry == 1, what="telemetry stored")
    assert ingest.client_id == "edgeops-server-ingest"


def test_a_device_cannot_publish_under_another_device(fleet: SecureFleet, ingest: Ingest) -> None:
    a = fleet.device("dev-a")
    with tls_client(fleet.broker.port, a) as client:
        forged = [
            (TOPICS.telemetry("dev-b"), _batch("dev-b")),
            (TOPICS.status("dev-b"), encode(DeviceStatus(device_id="dev-b", online=True,
                                                         state="running"))),
            (TOPICS.cmd("dev-b"), encode(Command(kind="rollback"))),
            (TOPICS.cmd("dev-a"), encode(Command(kind="rollback"))),  # nor command itself
        ]
        accepted = [_publish_result(client, topic, payload) for topic, payload in forged]
        assert _publish_result(client, TOPICS.telemetry("dev-a"), _batch("dev-a"))

    assert accepted == [False, False, False, False]
    wait_until(lambda: ingest.stats().telemetry == 1, what="dev-a's own telemetry")
    stats = ingest.stats()
    assert (stats.received, stats.statuses, stats.rejected) == (1, 0, {})


def test_a_device_reads_only_its_own_commands(fleet: SecureFleet) -> None:
    received: queue.Queue[str] = queue.Queue()
    with tls_client(fleet.broker.port, fleet.device("dev-a"),
                    on_message=lambda m: received.put(m.topic)) as client, \
            CommandPublisher(fleet.settings) as publisher:
        subscribed: queue.Queue[int] = queue.Queue()
        client.on_subscribe = lambda _c, _u, mid, _codes, _p: subscribed.put(mid)
        # Mosquitto may grant the SUBACK; its read ACL then filters every message.
        for topic in (TOPICS.cmd("dev-b"), TOPICS.all_devices("cmd"), "#"):
            _, mid = client.subscribe(topic, qos=1)
            assert subscribed.get(timeout=5) == mid
        assert publisher.wait_connected(10)

        publisher.send("dev-b", Command(kind="rollback"))
        publisher.send("dev-b", Command(kind="update", target="digits/9/model.onnx"))
        publisher.send("dev-a", Command(kind="rollback"))  # the marker that ends the wait

        first = received.get(timeout=5)
        rest = []
        while True:
            try:
                rest.append(received.get(timeout=1.0))
            except queue.Empty:
                break
    assert {first, *rest} == {TOPICS.cmd("dev-a")}  # dev-a's, via the two wildcards only


def test_a_device_cannot_take_over_another_devices_client_id(fleet: SecureFleet) -> None:
    with tls_client(fleet.broker.port, fleet.device("dev-b"), client_id="dev-b") as b:
        disconnected: list[object] = []
        b.on_disconnect = lambda *args: disconnected.append(args)
        with tls_client(fleet.broker.port, fleet.device("dev-a"), client_id="dev-b"):
            pass  # the broker forces its client id to its CN, dev-a
        assert b.is_connected() and not disconnected


def test_a_device_without_a_certificate_cannot_connect(fleet: SecureFleet) -> None:
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        with tls_client(fleet.broker.port, None, ca_file=fleet.ca.ca_file, connect_timeout_s=2):
            pass


def test_a_certificate_from_another_ca_cannot_connect(fleet: SecureFleet, tmp_path: Path) -> None:
    rogue_home = tmp_path / "rogue"
    rogue_home.mkdir()
    rogue = FleetCA.ensure(rogue_home).device_identity("dev-a", rogue_home / "dev-a")
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        # It trusts the real broker (real CA), but presents a certificate the broker refuses.
        with tls_client(fleet.broker.port, rogue, ca_file=fleet.ca.ca_file, connect_timeout_s=2):
            pass


def test_a_payload_naming_another_device_is_rejected_by_ingest(
    fleet: SecureFleet, ingest: Ingest
) -> None:
    with tls_client(fleet.broker.port, fleet.device("dev-a")) as client:
        assert _publish_result(client, TOPICS.telemetry("dev-a"), _batch("dev-b"))
        status = DeviceStatus(device_id="dev-b", online=True, state="running")
        assert _publish_result(client, TOPICS.status("dev-a"), encode(status))

    wait_until(lambda: ingest.stats().rejected.get("device_mismatch") == 2, what="2 rejections")
    stats = ingest.stats()
    assert (stats.telemetry, stats.statuses) == (0, 0)
    assert stats.outcomes == {("telemetry", "rejected"): 1, ("status", "rejected"): 1}


def test_the_generated_config_is_the_production_one(fleet: SecureFleet) -> None:
    config = fleet.broker.config_path.read_text().splitlines()
    for line in ("require_certificate true", "use_identity_as_username true",
                 "use_username_as_clientid true", "allow_anonymous false"):
        assert line in config
    queued = next(int(line.split()[1]) for line in config if line.startswith("max_queued_messages"))
    assert queued > 1000
    acl = fleet.broker.acl_file.read_text()
    assert f"pattern write edgeops/{FLEET}/devices/%u/telemetry" in acl
    assert f"pattern read edgeops/{FLEET}/devices/%u/cmd" in acl
    assert "%c" not in acl  # client-id patterns would be spoofable
