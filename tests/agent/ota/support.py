"""OTA test parts: a repository we control (threshold root, key rotation, forged metadata),
an HTTP server with Range and per-path misbehaviour, and an agent home with v1 installed."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import re
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from agent import AgentConfig, init_agent_home
from agent.ota.model_store import ModelStore
from edgeops.schemas import ReleaseInfo
from tests.agent.support import (
    NUM_FEATURES,
    ServerThread,
    TufTestRepository,
    build_model,
    install_model,
    make_release,
    model_weights,
)

Behaviour = Callable[["RangeHandler", bytes], None]


class RangeHandler(BaseHTTPRequestHandler):
    """GET with single-range support; a per-path `Behaviour` can replace the answer.
    HTTP/1.1: a connection serves requests until a behaviour or the client closes it."""

    server: RepoServer._Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner.connections += 1

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        path = self.path.split("?")[0]
        owner.requests.append((path, self.headers.get("Range")))
        file = owner.root / path.lstrip("/")
        try:
            data = file.read_bytes() if file.is_file() else None
        except OSError:
            data = None
        for pattern, behaviour in list(owner.behaviours.items()):
            if re.search(pattern, path):
                behaviour(self, data or b"")
                return
        if data is None:
            self.send_not_found()
            return
        self.send_bytes(data)

    def send_not_found(self) -> None:
        """A 404 on a connection kept alive, as uvicorn answers (send_error closes it)."""
        body = b'{"detail":"not found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_bytes(self, data: bytes, *, limit: int | None = None) -> None:
        """Send `data` honouring Range; stop (and drop the connection) after `limit` bytes."""
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and int(match[1]) < len(data):
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if limit is not None and limit < len(body):
            self.wfile.write(body[:limit])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class RepoServer(ServerThread):
    """Serves a folder over HTTP(S); `behaviours` map path regexes to misbehaviour."""

    class _Server(ThreadingHTTPServer):
        owner: RepoServer

    def __init__(self, root: Path, *, tls: ssl.SSLContext | None = None) -> None:
        self.root = Path(root)
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.connections = 0  # TCP connections accepted
        server = self._Server(("127.0.0.1", 0), RangeHandler)
        server.owner = self
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        super().__init__(server, "http" if tls is None else "https")

    def target_requests(self) -> list[tuple[str, str | None]]:
        return [r for r in self.requests if r[0].startswith("/tuf/targets/")]


def tls_server_context(directory: Path, host: str) -> tuple[Path, ssl.SSLContext]:
    """A CA file and a server TLS context whose certificate that CA issued for `host`."""
    from server.identity import ca

    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = ca.new_private_key(), ca.new_private_key()
    ca_cert = ca.make_ca_certificate(ca_key, "test CA", now)
    cert = ca.issue_certificate(
        ca_key, ca_cert, server_key.public_key(), host, now, server=True, hosts=(host,)
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.cert_pem(ca_cert))
    (directory / "server.pem").write_bytes(ca.cert_pem(cert))
    (directory / "server.key").write_bytes(ca.key_pem(server_key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return directory / "ca.pem", context


class ProxyHandler(BaseHTTPRequestHandler):
    """A forward proxy: `GET http://...` is fetched and relayed, `CONNECT host:port` tunnels."""

    server: ProxyServer._Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.owner.seen.append(("GET", self.path, self.headers.get("Proxy-Authorization")))
        target = urllib.parse.urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.netloc, timeout=5)
        try:
            ranged = {"Range": self.headers["Range"]} if self.headers.get("Range") else {}
            upstream.request("GET", target.path, headers=ranged)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:  # noqa: N802
        self.server.owner.seen.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()


class ProxyServer(ServerThread):
    """A forward proxy; `seen` lists (method, target, Proxy-Authorization) of its requests."""

    class _Server(ThreadingHTTPServer):
        owner: ProxyServer

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        server = self._Server(("127.0.0.1", 0), ProxyHandler)
        server.owner = self
        super().__init__(server)


# Misbehaviours --------------------------------------------------------------------------


def endless(handler: RangeHandler, data: bytes) -> None:
    """Serve the file, then keep sending bytes (no Content-Length)."""
    handler.send_response(200)
    handler.end_headers()
    handler.wfile.write(data)
    try:
        for _ in range(10_000):
            handler.wfile.write(b"\0" * 65536)
    except OSError:
        pass
    handler.close_connection = True


def trickle(delay_s: float = 0.05, size: int = 1) -> Behaviour:
    def behaviour(handler: RangeHandler, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            for i in range(0, len(data), size):
                handler.wfile.write(data[i : i + size])
                handler.wfile.flush()
                time.sleep(delay_s)
        except OSError:
            pass
        handler.close_connection = True

    return behaviour


def serve_bytes(replacement: bytes) -> Behaviour:
    return lambda handler, _data: handler.send_bytes(replacement)


def break_after(limit: int, times: int = 1) -> Behaviour:
    """Drop the connection after `limit` bytes, the first `times` requests."""
    left = [times]

    def behaviour(handler: RangeHandler, data: bytes) -> None:
        if left[0] > 0:
            left[0] -= 1
            handler.send_bytes(data, limit=limit)
        else:
            handler.send_bytes(data)

    return behaviour


# Repository -----------------------------------------------------------------------------


class ControlledRepository(TufTestRepository):
    """TufTestRepository with a 2-of-3 root, key rotation and attacker-signed metadata."""

    def __init__(self, root_dir: Path) -> None:
        super().__init__(root_dir)
        self.root_signers = [self.signers["root"]] + [CryptoSigner.generate_ed25519() for _ in range(2)]
        for signer in self.root_signers[1:]:
            self.root.signed.add_key(signer.public_key, "root")
        self.root.signed.roles["root"].threshold = 2
        self.write_root(self.root_signers)

    def write_root(self, signers: list[CryptoSigner]) -> bytes:
        self.root.signatures.clear()
        for signer in signers:
            self.root.sign(signer, append=True)
        data = self.root.to_bytes(JSONSerializer(compact=False))
        (self.metadata_dir / f"{self.root.signed.version}.root.json").write_bytes(data)
        (self.metadata_dir / "root.json").write_bytes(data)
        return data

    def rotate(self, role: str, sign_with: list[CryptoSigner] | None = None) -> CryptoSigner:
        """Replace `role`'s key (root: the first root key) in root v+1; returns the old key."""
        old_root_signers = list(self.root_signers)
        new = CryptoSigner.generate_ed25519()
        if role == "root":
            old = self.root_signers[0]
            self.root_signers = [new, *self.root_signers[1:]]
            self.signers["root"] = new
        else:
            old = self.signers[role]
            self.signers[role] = new
        self.root.signed.revoke_key(old.public_key.keyid, role)
        self.root.signed.add_key(new.public_key, role)
        self.root.signed.version += 1
        signers = sign_with if sign_with is not None else [*old_root_signers, new] if role == "root" else old_root_signers
        self.write_root(list({s.public_key.keyid: s for s in signers}.values()))
        self.publish()
        return old

    def sign_raw(self, metadata: Metadata[Any], signer: CryptoSigner, filename: str) -> None:
        metadata.signatures.clear()
        metadata.sign(signer)
        (self.metadata_dir / filename).write_bytes(metadata.to_bytes(JSONSerializer(compact=False)))


# Agent homes ----------------------------------------------------------------------------


def ota_config(home: Path, server_url: str, **overrides: Any) -> AgentConfig:
    """An agent's settings for OTA tests: no broker, short timeouts, a short health window."""
    values: dict[str, Any] = dict(
        home=home,
        device_id="ota-dev",
        server_url=server_url,
        broker_port=9,  # nothing listens: these tests need no broker
        request_timeout_s=5.0,
        download_retries=2,
        download_backoff_s=0.01,
        health_window_s=0.2,
        health_min_samples=0,
    )
    values.update(overrides)
    return AgentConfig(**values)


@dataclass
class OtaSetup:
    repo: ControlledRepository
    server: RepoServer
    home: Path
    weights: dict[int, np.ndarray] = field(default_factory=dict)

    def config(self, **overrides: Any) -> AgentConfig:
        return ota_config(**{"home": self.home, "server_url": self.server.url, **overrides})

    def release(
        self, version: int, *, scale: float = 1.0, **info: Any
    ) -> tuple[ReleaseInfo, bytes]:
        weights = self.weights.setdefault(version, model_weights(version) * scale)
        release = make_release(version, weights)
        if info:
            release = release.model_copy(update=info)
        return release, build_model(weights)

    def publish(self, version: int, **kwargs: Any) -> str:
        release, data = self.release(version, **kwargs)
        return self.repo.add_release(release, data)


def make_setup(tmp_path: Path, server: RepoServer, repo: ControlledRepository) -> OtaSetup:
    setup = OtaSetup(repo, server, tmp_path / "home")
    init_agent_home(setup.home, setup.config(), repo.root_bytes)
    release, data = setup.release(1)
    install_model(setup.home, release, data)
    return setup


def active_model_sha(home: Path) -> tuple[str, str]:
    """(target, sha256 of the active slot's model file) — checked against its record."""
    store = ModelStore(home)
    pointer = store.active_pointer()
    assert pointer is not None
    record = store.read_slot(pointer.slot)  # verifies the bytes against the record
    digest = hashlib.sha256(record.model_path.read_bytes()).hexdigest()
    assert digest == record.sha256
    return record.target, digest


def probe(n: int = 1) -> np.ndarray:
    return np.full((n, NUM_FEATURES), 3.0, dtype=np.float32)


def read_state(home: Path) -> dict[str, Any] | None:
    path = home / "update_state.json"
    return json.loads(path.read_text()) if path.exists() else None
