"""Issue 16 item 4: transport and trust on first use.

- `edgeops server run` on a default home serves HTTPS with a certificate from the fleet CA;
  a plain-HTTP client gets no API.
- A server.toml with plain HTTP or MQTT without TLS (the old default) is refused at start,
  naming the setting; the explicit opt-in starts with a warning.
- Enrollment pins the fleet CA by the fingerprint the operator hands out with the token: a
  server offering another CA (over HTTP), or presenting a TLS certificate from another CA
  while relaying the fleet's CA certificate (over HTTPS), gets refused before the token is
  sent; the genuine server enrolls the device over HTTPS.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig, dump_toml, load_config
from agent.enroll import enroll
from agent.ota.model_store import ModelStore
from agent.ota.updater import ReleaseUpdater
from edgeops.ca_pin import ca_fingerprint
from edgeops.errors import ConfigError, TrustError, UpdateError
from server.app.build import build_app
from server.app.home import init_home
from server.config.settings import ServerSettings, check_transport, load_settings, save_settings
from server.identity.ca import FleetCA
from server.identity.enrollment import Enrollment
from server.identity.https import server_tls
from simulations.mosquitto import free_port, wait_for_port
from simulations.processes import stop_process
from tests.server.helpers import live_server

pytestmark = [pytest.mark.security, pytest.mark.integration]


@dataclass(frozen=True)
class HttpsServer:
    url: str
    settings: ServerSettings
    ca_file: Path
    log: Path


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    """A home made by `edgeops server init` with its defaults, run by `edgeops server run`."""
    from server.cli.server import app

    tmp = tmp_path_factory.mktemp("https")
    port = free_port()
    home = tmp / "server"
    made = CliRunner().invoke(app, ["init", "--home", str(home), "--http-port", str(port)])
    assert made.exit_code == 0, made.output
    log = tmp / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeops.cli", "server", "run", "--home", str(home)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, 60)
        settings = load_settings(home)
        yield HttpsServer(settings.resolved_public_url, settings, home / "ca" / "ca.crt", log)
    finally:
        stop_process(process, timeout_s=15)


def _agent_home(tmp_path: Path, device_id: str, server_url: str) -> AgentConfig:
    home = tmp_path / device_id
    home.mkdir()
    config = AgentConfig(home=home, device_id=device_id, server_url=server_url)
    (home / "agent.toml").write_text(dump_toml(config))
    return config


def test_server_run_serves_https_with_a_fleet_ca_certificate(https_server: HttpsServer) -> None:
    # Attack: talk plain HTTP to the API port, as a sniffable client (or a downgrade) would.
    plain = https_server.url.replace("https://", "http://")
    try:
        answered = httpx.get(f"{plain}/api/enroll/ca", timeout=5).status_code == 200
    except httpx.HTTPError:
        answered = False
    assert not answered, "the API answered over plain HTTP"

    settings = load_settings(https_server.settings.home)
    assert settings.http_tls and settings.broker_tls  # what `server init` writes by default
    assert https_server.url.startswith("https://")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_server.url}/api/enroll/ca", timeout=5)  # not a public CA's cert
    verified = ssl.create_default_context(cafile=str(https_server.ca_file))
    response = httpx.get(f"{https_server.url}/api/enroll/ca", verify=verified, timeout=5)
    assert response.status_code == 200
    assert response.text.encode() == https_server.ca_file.read_bytes()


@pytest.mark.parametrize(
    ("insecure", "setting"),
    [
        ({"http_tls": False}, "allow_insecure_http"),
        ({"broker_tls": False}, "allow_insecure_mqtt"),
    ],
)
def test_insecure_transport_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, insecure: dict[str, Any], setting: str
) -> None:
    import uvicorn

    from server.cli.server import app

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **_kwargs: served.append(app_))

    # Attack: a server.toml as the old default wrote it (plain HTTP, anonymous plain MQTT).
    secure: dict[str, Any] = {"http_tls": True, "broker_tls": True}
    settings = ServerSettings(home=tmp_path / "server", **{**secure, **insecure})
    init_home(settings)

    refused = CliRunner().invoke(app, ["run", "--home", str(settings.home)])

    assert served == [], "the server started with an insecure transport"
    assert isinstance(refused.exception, ConfigError)  # `edgeops` exits with ExitCode.CONFIG
    assert setting in str(refused.exception) and "server.toml" in str(refused.exception)
    allowed: dict[str, Any] = {setting: True}
    (warning,) = check_transport(replace(settings, **allowed))
    assert "not for production" in warning


def test_the_opt_in_starts_with_a_warning_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from server.cli.server import app

    settings = ServerSettings(
        home=tmp_path / "server", allow_insecure_http=True, allow_insecure_mqtt=True
    )
    init_home(settings)
    served: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kwargs: served.update(kwargs))

    started = CliRunner().invoke(app, ["run", "--home", str(settings.home)])

    assert started.exit_code == 0, started.output
    assert "warning: serving plain HTTP (allow_insecure_http = true)" in started.output
    assert "warning: MQTT without TLS (allow_insecure_mqtt = true)" in started.output
    assert served["ssl_certfile"] is None and served["port"] == settings.http_port


def test_enrollment_refuses_a_server_whose_ca_is_not_the_pinned_one(tmp_path: Path) -> None:
    fleet = ServerSettings(home=tmp_path / "fleet")
    init_home(fleet)
    pin = ca_fingerprint(FleetCA.for_settings(fleet).ca_pem)
    rogue = ServerSettings(home=tmp_path / "rogue")
    init_home(rogue)
    rogue_enrollment = Enrollment(rogue)
    token, _ = rogue_enrollment.tokens.create()
    with live_server(build_app(rogue, with_fleet=False)) as url:
        config = _agent_home(tmp_path, "dev-1", url)

        # Attack: the device is pointed at a server that is not the fleet's (spoofed DNS, a
        # proxy); it offers its own CA. Without a pin the device would trust it.
        with pytest.raises(TrustError, match="not the pinned"):
            enroll(config, token, ca_fingerprint=pin)

    assert not config.identity.cert_file.exists() and not config.identity.ca_file.exists()
    assert not load_config(config.home).broker_tls
    records = json.loads((rogue.home / "ca" / "enroll_tokens.json").read_text())
    assert [r.get("used_by") for r in records] == [None]  # the token was never sent


class _RelayingRogue(http.server.BaseHTTPRequestHandler):
    """Relays the fleet's (public) CA certificate, but its TLS key is from another CA."""

    ca_pem = b""
    posted: list[bytes] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.ca_pem)))
        self.end_headers()
        self.wfile.write(self.ca_pem)

    def do_POST(self) -> None:
        self.posted.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(500)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_enrollment_over_https_refuses_a_certificate_from_another_ca(
    https_server: HttpsServer, tmp_path: Path
) -> None:
    fleet_ca = https_server.ca_file.read_bytes()
    rogue = ServerSettings(home=tmp_path / "rogue", http_tls=True)
    tls = server_tls(rogue)  # a server certificate for 127.0.0.1 from the rogue's own CA
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)

    class Rogue(_RelayingRogue):
        ca_pem = fleet_ca
        posted: list[bytes] = []

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Rogue)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        config = _agent_home(tmp_path, "dev-2", f"https://127.0.0.1:{httpd.server_port}")

        # Attack: the /api/enroll/ca answer matches the pin, but the TLS peer is not the fleet's.
        with pytest.raises(TrustError, match="pinned fleet CA"):
            enroll(config, "a-stolen-or-real-token", ca_fingerprint=ca_fingerprint(fleet_ca))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert Rogue.posted == []  # the token never reached it


def test_a_device_enrolls_over_https_with_the_pinned_fingerprint(
    https_server: HttpsServer, tmp_path: Path
) -> None:
    from server.cli.server import app

    issued = CliRunner().invoke(
        app,
        [
            "enroll-token",
            "--home",
            str(https_server.settings.home),
            "--device-id",
            "dev-3",
            "--json",
        ],
    )
    assert issued.exit_code == 0, issued.output
    handout = json.loads(issued.output)  # what the operator gives the device, out of band
    assert handout["ca_fingerprint"] == ca_fingerprint(https_server.ca_file.read_bytes())
    config = _agent_home(tmp_path, "dev-3", https_server.url)
    wrong_pin = "sha256:" + "0" * 64
    with pytest.raises(TrustError, match="not the pinned"):
        enroll(config, handout["token"], ca_fingerprint=wrong_pin)

    # OpenSSL's form of the same fingerprint (upper case, colons) is accepted too.
    digits = handout["ca_fingerprint"].removeprefix("sha256:").upper()
    openssl_form = ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
    outcome = enroll(config, handout["token"], ca_fingerprint=openssl_form)

    assert outcome.mode == "certificate" and outcome.config.broker_tls
    assert config.identity.ca_file.read_bytes() == https_server.ca_file.read_bytes()

    # Updates come over the same HTTPS: the enrolled agent's fetcher trusts the fleet CA.
    root = https_server.settings.tuf_dir / "metadata" / "1.root.json"
    outcome.config.trusted_root_path.write_bytes(root.read_bytes())
    updater = ReleaseUpdater(outcome.config, ModelStore(outcome.config.home))
    with pytest.raises(UpdateError, match="not in the signed targets"):  # refreshed, verified
        updater.lookup("digits/1/model.onnx")


def test_operator_cli_verifies_the_https_server_against_the_home_ca(
    https_server: HttpsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli.fleet import app

    listed = CliRunner().invoke(app, ["ls", "--home", str(https_server.settings.home), "--json"])
    assert listed.exit_code == 0, listed.output
    assert "devices" in json.loads(listed.stdout)
    monkeypatch.setenv("EDGEOPS_CA_FILE", str(https_server.log))  # not a CA: refused, named
    refused = CliRunner().invoke(app, ["ls", "--home", str(https_server.settings.home)])
    assert isinstance(refused.exception, ConfigError)
    assert str(https_server.log) in str(refused.exception)


def test_server_tls_reissues_when_the_public_name_changes(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "s", http_tls=True)
    settings.home.mkdir()
    first = server_tls(settings).cert_file.read_bytes()
    assert server_tls(settings).cert_file.read_bytes() == first  # stable names: reused
    renamed = replace(settings, public_url="https://edge.example.com:8443")
    save_settings(renamed)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(server_tls(renamed).cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "edge.example.com" in names.get_values_for_type(x509.DNSName)
