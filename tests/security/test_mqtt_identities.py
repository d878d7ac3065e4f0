"""MQTT identities (issue 16, item 2): the server's broker names cannot be taken by a device.

The broker ACL grants the server's identities fleet-wide rights by name: `<broker_identity>-
commands` writes every device's `cmd`, `<broker_identity>-ingest` and each `--server-client`
read every device's telemetry. A device whose certificate carried one of those names would
command the whole fleet. Only the fixed `edgeops-server` prefix used to be reserved, so with
a renamed `broker_identity`, or an extra `--server-client`, any enrollment token made one.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from typer.testing import CliRunner

from edgeops.errors import ConfigError
from edgeops.messages import Command, encode
from edgeops.topics import Topics
from edgeops.x509 import make_csr, new_private_key
from server.app.home import init_home
from server.cli.server import app as server_app
from server.config.settings import ServerSettings, load_settings
from server.db.engine import open_database
from server.identity.broker_config import TlsFiles
from server.identity.ca import FleetCA, IdentityFiles
from server.identity.enrollment import Enrollment
from simulations.mosquitto import MosquittoBroker, free_port
from tests.integration.fleet_support import wait_until
from tests.security.identity_support import serve_home
from tests.server.identity.secure_fleet import tls_client

pytestmark = [pytest.mark.security, pytest.mark.integration]

FLEET = "f1"
TOPICS = Topics.for_fleet(FLEET)


def _accepted(client: mqtt.Client, topic: str, payload: bytes) -> bool:
    """Publish at QoS 1; True if the broker accepted it (PUBACK without a failure code)."""
    results: queue.Queue[bool] = queue.Queue()
    client.on_publish = lambda _c, _u, _mid, reason, _p: results.put(not reason.is_failure)
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    return results.get(timeout=5)


def test_a_device_cannot_enroll_as_a_renamed_server_identity(tmp_path: Path) -> None:
    settings = ServerSettings(
        home=tmp_path / "server", fleet=FLEET, broker_tls=True, broker_identity="acme-srv"
    )
    with serve_home(settings) as server:
        broker = MosquittoBroker.secured(tmp_path / "broker", settings).start()
        try:
            # What is at stake: a certificate named acme-srv-commands (what enrollment used
            # to sign for any token holder) commands every device of the fleet.
            ca = FleetCA.for_settings(load_settings(settings.home))
            forged = ca.device_identity("acme-srv-commands", tmp_path / "forged")
            with tls_client(broker.port, forged) as client:
                assert _accepted(client, TOPICS.cmd("dev-b"), encode(Command(kind="rollback")))
        finally:
            broker.kill()

        # The attack: a device with an ordinary token asks for that name, or a derived one.
        token = server.token()
        for name in ("acme-srv-commands", "acme-srv-ingest", "ACME-SRV-commands", "acme-srv"):
            refused = server.post_enroll(token, name)
            assert refused.status_code == 400, (name, refused.text)
            assert "acme-srv" in refused.json()["detail"] and "reserved" in refused.json()["detail"]

        assert server.post_enroll(token, "dev-a").status_code == 200  # the token was not spent


def test_a_server_client_is_minted_and_reserved(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "server", fleet=FLEET, broker_tls=True)
    init_home(settings)
    out, port = tmp_path / "broker", free_port()
    result = CliRunner().invoke(
        server_app,
        [
            "broker-config",
            "--home",
            str(settings.home),
            "--out",
            str(out),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--host",
            "127.0.0.1",
            "--server-client",
            "ingest-2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["auth"] == "certificate"

    # broker-config minted the certificate the ACL names, from the fleet CA.
    home = load_settings(settings.home)
    ca = FleetCA.for_settings(home)
    minted = IdentityFiles(
        ca.directory / "identities" / "ingest-2.crt",
        ca.directory / "identities" / "ingest-2.key",
        ca.ca_file,
    )
    cert = x509.load_pem_x509_certificate(minted.cert_file.read_bytes())
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.rfc4514_string() == "CN=ingest-2"

    # ...and it works at a broker running that config: it reads every device's telemetry.
    broker = MosquittoBroker(
        workdir=out,
        port=port,
        auth="certificate",
        acl_file=out / "acl",
        tls=TlsFiles(out / "ca.crt", out / "broker.crt", out / "broker.key", out / "crl.pem"),
    ).start()
    try:
        device = ca.device_identity("dev-a", tmp_path / "dev-a")
        seen: queue.Queue[str] = queue.Queue()
        with tls_client(port, minted, on_message=lambda m: seen.put(m.topic)) as reader:
            reader.subscribe(f"{TOPICS.prefix}/devices/+/telemetry", qos=1)
            with tls_client(port, device) as publisher:
                # Publish until one arrives: the subscription may not be active at once.
                wait_until(
                    lambda: (
                        publisher.publish(TOPICS.telemetry("dev-a"), b"{}").rc == 0
                        and not seen.empty()
                    ),
                    what="ingest-2 reads telemetry",
                )
        assert seen.get_nowait() == TOPICS.telemetry("dev-a")
    finally:
        broker.kill()

    # The attack: a device enrolls under the server client's name (or one it starts).
    enrollment = Enrollment(home, open_database(home.resolved_database_url))
    key = new_private_key()
    for name in ("ingest-2", "Ingest-2-b"):
        token, _ = enrollment.tokens.create()
        with pytest.raises(ConfigError, match="reserved"):
            enrollment.enroll(token, make_csr(key, name))


def test_broker_config_refuses_a_server_client_named_like_an_enrolled_device(
    tmp_path: Path,
) -> None:
    settings = ServerSettings(home=tmp_path / "server", fleet=FLEET, broker_tls=True)
    init_home(settings)
    enrollment = Enrollment(settings, open_database(settings.resolved_database_url))
    token, _ = enrollment.tokens.create()
    enrollment.enroll(token, make_csr(new_private_key(), "dev-7"))

    result = CliRunner().invoke(
        server_app,
        [
            "broker-config",
            "--home",
            str(settings.home),
            "--out",
            str(tmp_path / "broker"),
            "--server-client",
            "dev-7",
        ],
    )

    assert isinstance(result.exception, ConfigError), result.output
    assert "enrolled device" in str(result.exception)
    assert not (settings.home / "ca" / "identities" / "dev-7.crt").exists()
