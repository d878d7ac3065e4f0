"""Enrollment end to end: tokens, the CA, `POST /api/enroll` over real HTTP, the agent's
`enroll`, and the enrolled agent reaching ingest through the secured broker."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig, dump_toml, load_config
from agent.daemon import Agent
from agent.enroll import enroll, load_or_create_key, make_csr
from edgeops.ca_pin import ca_fingerprint
from edgeops.errors import ConfigError, TrustError
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings, load_settings
from server.fleet.ingest.worker import Ingest, IngestTuning
from server.identity.ca import FleetCA
from server.identity.enrollment import Enrollment, TokenRecord, consume_token, hash_token
from simulations.mosquitto import MosquittoBroker
from tests.agent.support import build_model, install_model, make_release, model_weights
from tests.integration.fleet_support import sqlite_database, wait_until
from tests.server.helpers import live_server

pytestmark = [pytest.mark.telemetry, pytest.mark.integration]


@dataclass
class Server:
    url: str
    settings: ServerSettings
    admin_token: str


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = ServerSettings(home=tmp_path / "server", fleet="f1", broker_tls=True)
    init_home(settings)
    with live_server(build_app(settings, with_fleet=False)) as url:
        yield Server(url, settings, read_admin_token(settings))


def _agent_home(tmp_path: Path, device_id: str, server: Server, **fields: object) -> AgentConfig:
    home = tmp_path / device_id
    home.mkdir()
    config = AgentConfig(home=home, device_id=device_id, server_url=server.url, fleet="f1",
                         **fields)  # type: ignore[arg-type]
    (home / "agent.toml").write_text(dump_toml(config))
    return config


def _pin(server: Server) -> str:
    """The fleet CA's fingerprint, as the operator hands it to the device with the token."""
    return ca_fingerprint(FleetCA.for_settings(server.settings).ca_pem)


def _token(server: Server, **body: object) -> str:
    response = httpx.post(f"{server.url}/api/enroll/tokens", json=body,
                          headers={"Authorization": f"Bearer {server.admin_token}"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def test_a_device_enrolls_with_a_token_and_its_key_never_leaves_it(
    server: Server, tmp_path: Path
) -> None:
    config = _agent_home(tmp_path, "dev-1", server)
    token = _token(server, device_id="dev-1")

    outcome = enroll(config, token, ca_fingerprint=_pin(server))

    identity = config.identity
    assert stat.S_IMODE(os.stat(identity.key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.settings.home / "ca" / "ca.key").st_mode) == 0o600
    assert outcome.mode == "certificate" and outcome.config.broker_tls
    assert load_config(config.home).broker_tls  # saved in agent.toml
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(identity.cert_file.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=dev-1"
    stored = json.loads((server.settings.home / "ca" / "enroll_tokens.json").read_text())
    assert token not in json.dumps(stored) and stored[0]["used_by"] == "dev-1"


def test_a_token_is_single_use_and_bound_to_its_device(server: Server, tmp_path: Path) -> None:
    token = _token(server, device_id="dev-1")
    with pytest.raises(TrustError, match="another device"):
        enroll(_agent_home(tmp_path, "dev-2", server), token, ca_fingerprint=_pin(server))
    enroll(_agent_home(tmp_path, "dev-1", server), token,  # a refused attempt did not spend it
           ca_fingerprint=_pin(server))
    with pytest.raises(TrustError, match="already used"):
        enroll(_agent_home(tmp_path, "dev-1b", server), token, ca_fingerprint=_pin(server))


def test_bad_requests_are_refused_without_spending_the_token(server: Server) -> None:
    token = _token(server)
    key = load_or_create_key(dataclasses.replace(
        AgentConfig(home=server.settings.home.parent / "k", device_id="x", server_url=server.url)))
    cases = [
        ({"token": token, "csr": "not a csr"}, 422),
        ({"token": "wrong-token-123", "csr": make_csr(key, "dev-9").decode()}, 403),
        ({"token": token, "csr": make_csr(key, "edgeops-server-ingest").decode()}, 400),
        ({"token": token}, 422),
    ]
    for body, status in cases:
        assert httpx.post(f"{server.url}/api/enroll", json=body).status_code == status, body
    ok = httpx.post(f"{server.url}/api/enroll", json={"token": token,
                                                       "csr": make_csr(key, "dev-9").decode()})
    assert ok.status_code == 200 and ok.json()["device_id"] == "dev-9"


def test_tokens_need_the_admin_token(server: Server) -> None:
    assert httpx.post(f"{server.url}/api/enroll/tokens", json={}).status_code == 401


def test_token_expiry_and_reuse_are_refused() -> None:
    record = TokenRecord(hash_token("t0k3n-abc"), created_at=0, expires_at=100)
    spent = consume_token([record], "t0k3n-abc", "dev", now=50)
    assert spent[0].used_by == "dev"
    with pytest.raises(TrustError, match="expired"):
        consume_token([record], "t0k3n-abc", "dev", now=100)
    with pytest.raises(TrustError, match="already used"):
        consume_token(spent, "t0k3n-abc", "dev", now=60)


def test_the_enrolled_agent_streams_over_tls_to_ingest(server: Server, tmp_path: Path) -> None:
    broker = MosquittoBroker.secured(tmp_path / "broker", server.settings).start()
    settings = dataclasses.replace(server.settings, broker_port=broker.port)
    config = _agent_home(tmp_path, "dev-1", server, broker_port=broker.port, http_port=None)
    enroll(config, _token(server, device_id="dev-1"), ca_fingerprint=_pin(server))
    weights = model_weights(1)
    install_model(config.home, make_release(1, weights), build_model(weights))
    with sqlite_database(tmp_path) as db, \
            Ingest(settings, db, tuning=IngestTuning(batch_max_wait_s=0.05)) as ingest:
        try:
            assert ingest.wait_ready(10)
            agent = Agent(load_config(config.home)).start()
            try:
                assert agent.link is not None and agent.link.wait_connected(10)
                import numpy as np

                agent.predict(np.ones((7, 64), dtype=np.float32))
                batch = agent.flush_telemetry()
            finally:
                agent.stop()
            wait_until(lambda: ingest.stats().telemetry == 1, what="telemetry over TLS")
            assert batch is not None and batch.count == 7 and batch.outbox_dropped == 0
        finally:
            broker.kill()


def test_password_mode_is_refused_unless_allowed(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "s", device_auth="password")
    (tmp_path / "s").mkdir()
    key = load_or_create_key(AgentConfig(home=tmp_path / "d", device_id="d", server_url="http://x"))
    token, _ = Enrollment(settings).tokens.create()
    with pytest.raises(ConfigError, match="allow_password_auth"):
        Enrollment(settings).enroll(token, make_csr(key, "dev-p"))
    allowed = dataclasses.replace(settings, allow_password_auth=True)
    result = Enrollment(allowed).enroll(token, make_csr(key, "dev-p"))
    assert result.mode == "password" and result.password
    line = (tmp_path / "s" / "ca" / "passwords").read_text().strip()
    assert line.startswith("dev-p:$7$101$") and result.password not in line


def test_password_mode_devices_connect_to_the_broker_with_acls(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "s", fleet="f1", broker_tls=True,
                              device_auth="password", allow_password_auth=True)
    (tmp_path / "s").mkdir()
    key = load_or_create_key(AgentConfig(home=tmp_path / "d", device_id="d", server_url="http://x"))
    enrollment = Enrollment(settings)
    token, _ = enrollment.tokens.create()
    result = enrollment.enroll(token, make_csr(key, "dev-p"))
    broker = MosquittoBroker.secured(tmp_path / "broker", settings).start()
    settings = dataclasses.replace(settings, broker_port=broker.port)
    try:
        with sqlite_database(tmp_path) as db, Ingest(settings, db) as ingest:
            assert ingest.wait_ready(10)
            home = tmp_path / "agent"
            (home / "identity").mkdir(parents=True)
            (home / "identity" / "ca.crt").write_text(result.ca_certificate)
            config = AgentConfig(home=home, device_id="dev-p", server_url="http://x", fleet="f1",
                                 broker_port=broker.port, broker_tls=True,
                                 broker_username=result.username, broker_password=result.password)
            agent = Agent(config).start()
            try:
                wait_until(lambda: ingest.stats().statuses >= 1, what="status via password auth")
            finally:
                agent.stop()
    finally:
        broker.kill()


def test_broker_config_and_enroll_token_commands(tmp_path: Path) -> None:
    from server.cli.server import app

    settings = ServerSettings(home=tmp_path / "home")
    init_home(settings)
    runner = CliRunner()
    out = tmp_path / "broker"
    result = runner.invoke(app, ["broker-config", "--home", str(settings.home), "--out", str(out),
                                 "--host", "mqtt.example.com", "--json"])
    assert result.exit_code == 0, result.output
    assert "require_certificate true" in (out / "mosquitto.conf").read_text()
    assert stat.S_IMODE(os.stat(out / "broker.key").st_mode) == 0o600
    result = runner.invoke(app, ["enroll-token", "--home", str(settings.home), "--device-id",
                                 "dev-7", "--json"])
    assert result.exit_code == 0, result.output
    token = json.loads(result.output)["token"]
    Enrollment(load_settings(settings.home)).tokens.consume(token, "dev-7")
    assert FleetCA.load(settings.home).ca_file.exists()


def test_the_server_serves_prometheus_metrics(server: Server) -> None:
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE edgeops_fleet_devices gauge" in response.text
