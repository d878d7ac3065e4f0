"""Fixtures for the telemetry and identity tests: a fleet CA in a server home and a real
Mosquitto configured by the production generator (TLS, client certificates, ACLs)."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from server.config.settings import ServerSettings
from server.identity.ca import FleetCA, IdentityFiles
from simulations.mosquitto import MosquittoBroker
from tests.integration.fleet_support import wait_until

FLEET = "f1"


@dataclass
class SecureFleet:
    """A secured broker and the server settings (broker_tls) that reach it."""

    settings: ServerSettings
    broker: MosquittoBroker
    ca: FleetCA
    tmp: Path

    def device(self, device_id: str) -> IdentityFiles:
        """Enroll `device_id` directly with the CA (the API path has its own tests)."""
        return self.ca.device_identity(device_id, self.tmp / "devices" / device_id)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SecureFleet]:
    home = tmp_path / "server"
    home.mkdir()
    settings = ServerSettings(home=home, fleet=FLEET, broker_tls=True)
    broker = MosquittoBroker.secured(tmp_path / "broker", settings)
    settings = dataclasses.replace(settings, broker_port=broker.port)
    broker.start()
    try:
        yield SecureFleet(settings, broker, FleetCA.load(home), tmp_path)
    finally:
        broker.kill()


@contextmanager
def tls_client(
    port: int,
    identity: IdentityFiles | None,
    *,
    client_id: str = "",
    ca_file: Path | None = None,
    on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
    connect_timeout_s: float = 5.0,
) -> Iterator[mqtt.Client]:
    """A plain paho MQTT 5 client over TLS presenting `identity` (None: no certificate)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    ca = ca_file or (identity.ca_file if identity else None)
    client.tls_set(
        ca_certs=str(ca),
        certfile=str(identity.cert_file) if identity else None,
        keyfile=str(identity.key_file) if identity else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    if on_message is not None:
        client.on_message = lambda _c, _u, message: on_message(message)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        wait_until(client.is_connected, connect_timeout_s, "TLS client connected")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()
