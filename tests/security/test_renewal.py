"""Certificate lifetime and renewal (issue 16, item 6).

Device certificates lived 825 days, so a stolen one stayed good for more than two years and
nothing renewed them. Now they live `device_cert_validity_days` (397, and never 825 or more),
and the agent renews before a third of that is left: `POST /api/enroll/renew` with a CSR and
a signature by its current key over it and the time (edgeops.renewal). The server renews
only a certificate it issued to that device, recorded, unrevoked and unexpired, and only for
a fresh signature by that certificate's key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.renew import renew_if_due
from edgeops.errors import ConfigError
from edgeops.renewal import sign_renewal
from edgeops.x509 import make_csr, new_private_key
from server.config.settings import ServerSettings
from server.db.engine import open_database
from server.identity.ca import FleetCA
from server.identity.certificates import CertificateStore, serial_hex
from server.identity.enrollment import Enrollment
from simulations.mosquitto import free_port
from tests.integration.fleet_support import wait_until
from tests.security.identity_support import LiveServer, serve_home

pytestmark = [pytest.mark.security, pytest.mark.integration]

DAY_S = 86400.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    settings = ServerSettings(
        home=tmp_path / "server", fleet="f1", broker_tls=True, device_cert_validity_days=3
    )
    with serve_home(settings) as live:
        yield live


def _agent(server: LiveServer, tmp_path: Path, device_id: str) -> AgentConfig:
    """An enrolled agent home: key, certificate and CA where `edgeops agent enroll` puts them."""
    config = AgentConfig(
        home=tmp_path / device_id,
        device_id=device_id,
        server_url=server.url,
        fleet="f1",
        broker_tls=True,
        broker_port=free_port(),
    )
    server.enroll(device_id, config.identity.cert_file.parent)
    return config


def _cert(config: AgentConfig) -> x509.Certificate:
    return x509.load_pem_x509_certificate(config.identity.cert_file.read_bytes())


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _renew_request(
    server: LiveServer,
    cert_pem: str,
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    signed_at: int | None = None,
) -> httpx.Response:
    csr = make_csr(key, device_id)
    signed_at = int(time.time()) if signed_at is None else signed_at
    body = {
        "certificate": cert_pem,
        "csr": csr.decode(),
        "signed_at": signed_at,
        "signature": sign_renewal(key, device_id, csr, signed_at),
    }
    return httpx.post(f"{server.url}/api/enroll/renew", json=body)


def test_certificates_live_less_than_825_days(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "server", fleet="f1")
    with serve_home(settings) as live:
        config = AgentConfig(home=tmp_path / "d", device_id="dev-1", server_url=live.url)
        live.enroll("dev-1", config.identity.cert_file.parent)
    cert = _cert(config)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime < dt.timedelta(days=398)  # 397 days (+ 5 minutes of clock slack)

    for days in (825, 3650, 0):
        with pytest.raises(ConfigError, match="less than 825 days"):
            Enrollment(dataclasses.replace(settings, device_cert_validity_days=days))


def test_the_agent_renews_its_certificate_before_it_expires(
    server: LiveServer, tmp_path: Path
) -> None:
    config = _agent(server, tmp_path, "dev-1")
    old = _cert(config)

    assert renew_if_due(config, now=time.time()) is None  # two thirds left: not yet
    renewed = renew_if_due(config, now=time.time() + 2.1 * DAY_S)

    assert renewed is not None and renewed.serial != old.serial_number
    new = _cert(config)
    assert new.serial_number == renewed.serial and new.public_key() == old.public_key()
    # Issued for a full lifetime from the server's clock (the test only moved the agent's).
    assert new.not_valid_after_utc >= old.not_valid_after_utc
    assert new.not_valid_after_utc - new.not_valid_before_utc > dt.timedelta(days=3)
    store = CertificateStore(open_database(server.settings.resolved_database_url))
    records = {r.serial: r for r in store.for_device("dev-1")}
    assert records[serial_hex(new.serial_number)].renewed_from == serial_hex(old.serial_number)


def test_the_daemon_renews_from_its_periodic_loop(server: LiveServer, tmp_path: Path) -> None:
    config = _agent(server, tmp_path, "dev-2")
    old = _cert(config).serial_number

    agent = Agent(config, clock=lambda: time.time() + 2.5 * DAY_S).start()  # no broker needed
    try:
        wait_until(lambda: _cert(config).serial_number != old, 15, "the daemon renewed")
    finally:
        agent.stop(timeout_s=2)


def test_renewal_needs_the_current_key_of_a_live_certificate(
    server: LiveServer, tmp_path: Path
) -> None:
    victim = _agent(server, tmp_path, "dev-v")
    cert_pem = victim.identity.cert_file.read_text()
    key = _key(victim.identity.key_file)
    attacker = new_private_key()

    # The attacks: the victim's certificate (public) with the attacker's key; the victim's
    # key asking for another id; a captured request replayed an hour later; a certificate
    # from another CA.
    other_ca = FleetCA.ensure(tmp_path / "other")
    foreign = other_ca.device_identity("dev-v", tmp_path / "foreign")
    foreign_key = _key(foreign.key_file)
    attempts = {
        "attacker key": _renew_request(server, cert_pem, attacker, "dev-v"),
        "other device": _renew_request(server, cert_pem, key, "dev-other"),
        "replayed": _renew_request(server, cert_pem, key, "dev-v", int(time.time()) - 3600),
        "foreign CA": _renew_request(server, foreign.cert_file.read_text(), foreign_key, "dev-v"),
    }
    assert {name: r.status_code for name, r in attempts.items()} == dict.fromkeys(attempts, 403)

    assert _renew_request(server, cert_pem, key, "dev-v").status_code == 200

    # Revoked: the device's certificates renew no more.
    response = httpx.post(
        f"{server.url}/api/enroll/revocations",
        json={"device_id": "dev-v"},
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert response.status_code == 201, response.text
    refused = _renew_request(server, cert_pem, key, "dev-v")
    assert refused.status_code == 403 and "revoked" in refused.json()["detail"]
