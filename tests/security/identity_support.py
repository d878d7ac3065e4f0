"""Helpers for the device identity security tests: a server home served over real HTTP,
enrollment as a device does it (its own key, `POST /api/enroll`), and MQTT connects that
report refusal instead of raising."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from edgeops.x509 import key_pem, make_csr, new_private_key
from server.app.build import build_app
from server.app.home import init_home, read_admin_token
from server.config.settings import ServerSettings
from server.identity.ca import IdentityFiles
from tests.server.helpers import live_server


@dataclass
class LiveServer:
    url: str
    settings: ServerSettings
    admin_token: str

    def token(self, device_id: str | None = None) -> str:
        """A one-time enrollment token (bound to `device_id` if given), made by the admin."""
        body = {"device_id": device_id} if device_id else {}
        response = httpx.post(
            f"{self.url}/api/enroll/tokens",
            json=body,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def post_enroll(self, token: str, device_id: str) -> httpx.Response:
        """`POST /api/enroll` with a CSR for `device_id` from a throwaway key."""
        csr = make_csr(new_private_key(), device_id).decode()
        return httpx.post(f"{self.url}/api/enroll", json={"token": token, "csr": csr})

    def enroll(self, device_id: str, directory: Path, token: str | None = None) -> IdentityFiles:
        """Enroll `device_id` as a device does; its key, certificate and the CA in `directory`."""
        key = new_private_key()
        body = {"token": token or self.token(device_id), "csr": make_csr(key, device_id).decode()}
        response = httpx.post(f"{self.url}/api/enroll", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        directory.mkdir(parents=True, exist_ok=True)
        files = IdentityFiles(
            directory / "device.crt", directory / "device.key", directory / "ca.crt"
        )
        files.key_file.write_bytes(key_pem(key))
        files.cert_file.write_text(result["certificate"])
        files.ca_file.write_text(result["ca_certificate"])
        return files


@contextmanager
def serve_home(settings: ServerSettings) -> Iterator[LiveServer]:
    """A new server home for `settings`, served by uvicorn (no broker connection)."""
    init_home(settings)
    with live_server(build_app(settings, with_fleet=False)) as url:
        yield LiveServer(url, settings, read_admin_token(settings))


def connects(port: int, identity: IdentityFiles, timeout_s: float = 3.0) -> bool:
    """True if an MQTT client presenting `identity` gets connected to 127.0.0.1:`port`."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(
        ca_certs=str(identity.ca_file),
        certfile=str(identity.cert_file),
        keyfile=str(identity.key_file),
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    try:
        client.connect("127.0.0.1", port, keepalive=30)
    except (OSError, ssl.SSLError):
        return False  # the handshake itself was refused
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not client.is_connected():
            time.sleep(0.02)
        return bool(client.is_connected())
    finally:
        client.disconnect()
        client.loop_stop()
