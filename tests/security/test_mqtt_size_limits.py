"""MQTT size limits (issue 16, item 3): no device stores a huge message at the broker, and the
server's clients never take one.

A device may publish its own retained status; before the limit, a 60 MB one was accepted,
kept by Mosquitto and handed to every subscriber that came later. The generated config now
sets `max_packet_size`, and the server's MQTT 5 clients announce a Maximum Packet Size of
their own, which a broker without the limit honours.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeops.messages import DeviceStatus, encode
from edgeops.topics import Topics
from server.config.settings import ServerSettings
from server.fleet.mqtt_client import new_client, start_connecting
from server.identity.broker_config import MAX_PACKET_BYTES
from server.identity.ca import FleetCA
from simulations.mosquitto import MosquittoBroker
from tests.integration.fleet_support import wait_until
from tests.server.identity.secure_fleet import tls_client

pytestmark = [pytest.mark.security, pytest.mark.integration]

FLEET = "f1"
TOPICS = Topics.for_fleet(FLEET)
MIB = 1024 * 1024


def _peak_rss_bytes(broker: MosquittoBroker) -> int:
    assert broker.process is not None
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM for the broker")


def _status(device_id: str) -> bytes:
    return encode(DeviceStatus(device_id=device_id, online=True, state="running"))


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[ServerSettings, MosquittoBroker, FleetCA]]:
    """Mosquitto with the config `edgeops server broker-config` writes (TLS, client certs)."""
    home = tmp_path / "server"
    home.mkdir()
    settings = ServerSettings(home=home, fleet=FLEET, broker_tls=True)
    broker = MosquittoBroker.secured(tmp_path / "broker", settings)
    settings = dataclasses.replace(settings, broker_port=broker.port)
    broker.start()
    try:
        yield settings, broker, FleetCA.for_settings(settings)
    finally:
        broker.kill()


def test_a_devices_60_mb_retained_status_is_refused_and_never_delivered(
    secured: tuple[ServerSettings, MosquittoBroker, FleetCA], tmp_path: Path
) -> None:
    settings, broker, ca = secured
    statuses: queue.Queue[tuple[str, int]] = queue.Queue()
    watcher_name = f"{settings.broker_identity}-commands"  # may read every device's status
    with tls_client(
        broker.port,
        ca.identity(watcher_name),
        client_id=watcher_name,
        on_message=lambda m: statuses.put((m.topic, len(m.payload))),
    ) as watcher:
        watcher.subscribe(TOPICS.all_devices("status"), qos=1)
        peak_before = _peak_rss_bytes(broker)
        disconnected = threading.Event()

        # The attack: dev-a publishes 60 MB as its own retained status (its ACL allows the topic).
        with tls_client(broker.port, ca.device_identity("dev-a", tmp_path / "dev-a")) as device:
            device.on_disconnect = lambda *_args: disconnected.set()
            device.publish(TOPICS.status("dev-a"), bytes(60 * MIB), qos=1, retain=True)
            assert disconnected.wait(15), "the broker kept the connection of a 60 MB publisher"

        with tls_client(broker.port, ca.device_identity("dev-b", tmp_path / "dev-b")) as other:
            other.publish(TOPICS.status("dev-b"), _status("dev-b"), qos=1, retain=True)
            live = statuses.get(timeout=5)
        watcher.unsubscribe(TOPICS.all_devices("status"))
        watcher.subscribe(TOPICS.all_devices("status"), qos=1)  # what the broker retained
        retained = statuses.get(timeout=5)
        late = []
        try:
            while True:
                late.append(statuses.get(timeout=1.0))
        except queue.Empty:
            pass

    assert live[0] == TOPICS.status("dev-b") and retained[0] == TOPICS.status("dev-b")
    assert all(topic != TOPICS.status("dev-a") for topic, _ in late)
    grown = _peak_rss_bytes(broker) - peak_before
    assert grown < 16 * MIB, f"the broker buffered {grown / MIB:.0f} MiB of the refused packet"


def _open_broker_without_a_packet_limit(tmp_path: Path) -> MosquittoBroker:
    """An anonymous test broker whose config has no max_packet_size: someone else's broker."""
    broker = MosquittoBroker(workdir=tmp_path / "open")
    broker.write_config()
    lines = broker.config_path.read_text().splitlines()
    broker.config_path.write_text("\n".join(x for x in lines if "max_packet_size" not in x) + "\n")
    broker.write_config = lambda: None  # type: ignore[method-assign]  # keep the edited file
    return broker.start()


def test_the_servers_clients_refuse_packets_above_their_maximum(tmp_path: Path) -> None:
    broker = _open_broker_without_a_packet_limit(tmp_path)
    settings = ServerSettings(
        home=tmp_path / "server", broker_host=broker.host, broker_port=broker.port, fleet=FLEET
    )
    got: queue.Queue[int] = queue.Queue()
    server_side = new_client(settings, "edgeops-server-ingest")
    server_side.on_message = lambda _c, _u, m: got.put(len(m.payload))
    server_side.on_connect = lambda c, *_a: c.subscribe(TOPICS.all_devices("status"), qos=1)
    plain: queue.Queue[int] = queue.Queue()  # a client that announces no maximum
    bystander = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    bystander.on_message = lambda _c, _u, m: plain.put(len(m.payload))
    bystander.connect(broker.host, broker.port)
    bystander.subscribe(TOPICS.all_devices("status"), qos=1)
    bystander.loop_start()
    start_connecting(server_side, settings, clean_start=True)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        wait_until(server_side.is_connected, 10, "server client connected")
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        # Past the broker, which enforces nothing: a message over the server's maximum.
        big, small = bytes(MAX_PACKET_BYTES + 1), _status("dev-b")
        publisher.publish(TOPICS.status("dev-a"), big, qos=1).wait_for_publish(5)
        publisher.publish(TOPICS.status("dev-b"), small, qos=1).wait_for_publish(5)

        assert plain.get(timeout=5) == len(big)  # the broker did deliver it
        assert got.get(timeout=5) == len(small)  # the server got only the small one
        assert got.empty()
    finally:
        for client in (publisher, bystander, server_side):
            client.disconnect()
            client.loop_stop()
        broker.kill()
