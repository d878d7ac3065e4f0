"""Device enrollment: make a key pair on the device, trade a CSR and a one-time token for a
certificate from the fleet CA, and keep both in `<home>/identity/`.

    GET /api/enroll/ca ─► the CA must have the fingerprint pinned out of band (edgeops.ca_pin)
    key (P-256, made here, 0600, never sent) ─► CSR (CN = device id) ─► POST /api/enroll
        (over HTTPS the server's certificate must be issued by that pinned CA)
        ◄─ certificate + CA certificate (or, in password mode, a broker password)
    check: the CA is the pinned one; the certificate is for our key and our id, signed by it
    write identity files, then agent.toml (broker_tls = true)

The token is sent only after the CA is pinned, so a server that is not the fleet's (a
spoofed DNS name, a proxy in the path) gets neither the token nor a chance to hand the
device a CA of its own.

The private key is written before the request, and reused if enrollment is retried, so a
lost response never leaves a certificate for a key the device does not have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import CONFIG_FILE, AgentConfig, dump_toml
from edgeops.atomic_io import write_bytes_atomic
from edgeops.ca_pin import check_pinned_ca
from edgeops.errors import ConfigError, EdgeOpsError, PayloadError, TransportError, TrustError
from edgeops.x509 import key_pem, make_csr, new_private_key

__all__ = [
    "EnrollmentOutcome",
    "check_certificate",
    "enroll",
    "fetch_pinned_ca",
    "load_or_create_key",
    "make_csr",
]

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class EnrollmentOutcome:
    config: AgentConfig  # as saved, with broker_tls on
    mode: str  # "certificate" or "password"
    not_after: float | None  # the certificate's expiry (unix time), certificate mode


def load_or_create_key(config: AgentConfig) -> ec.EllipticCurvePrivateKey:
    path = config.identity.key_file
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the device key {path}: {err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not an EC private key")
        return key
    key = new_private_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_bytes_atomic(path, key_pem(key), mode=0o600)
    return key


def check_certificate(
    cert_pem: bytes, ca_pem: bytes, key: ec.EllipticCurvePrivateKey, device_id: str
) -> x509.Certificate:
    """The certificate, if it is for `key` and `device_id` and signed by the CA; else raise."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as err:
        raise PayloadError(f"the server sent no valid certificate: {err}") from err
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise TrustError("the certificate the server sent is not for this device's key")
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [device_id]:
        raise TrustError(f"the certificate names {names}, not device {device_id!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as err:
        raise TrustError(f"the certificate is not signed by the fleet CA: {err}") from err
    return cert


def _unverified_tls() -> ssl.SSLContext:
    """TLS for reading the CA itself: nothing to verify against yet; the pin checks the CA."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _tls_for(url: str, ca_pem: bytes | None) -> ssl.SSLContext | None:
    """For an https `url`: verify the server against `ca_pem`, or nothing if not yet known."""
    if not url.startswith("https://"):
        return None
    if ca_pem is None:
        return _unverified_tls()
    return ssl.create_default_context(cadata=ca_pem.decode())


def _request(request: urllib.request.Request, timeout_s: float, ca_pem: bytes | None) -> bytes:
    url = request.full_url
    try:
        with urllib.request.urlopen(
            request, timeout=timeout_s, context=_tls_for(url, ca_pem)
        ) as response:
            raw: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as err:
        detail = err.read(4096).decode(errors="replace")
        error_type: type[EdgeOpsError] = TrustError if err.code in (401, 403) else ConfigError
        if err.code >= 500:
            error_type = TransportError
        raise error_type(f"enrollment refused by {url}: HTTP {err.code} {detail}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise TrustError(
                f"{url} is not served with a certificate from the pinned fleet CA: {err.reason}"
            ) from err
        raise TransportError(f"cannot reach {url}: {err}") from err
    except OSError as err:
        raise TransportError(f"cannot reach {url}: {err}") from err
    if len(raw) > MAX_RESPONSE_BYTES:
        raise PayloadError(f"the enrollment response from {url} is too large")
    return raw


def fetch_pinned_ca(server_url: str, ca_fingerprint: str, timeout_s: float = 30.0) -> bytes:
    """The fleet CA certificate (PEM) from `server_url`, if it has the pinned fingerprint."""
    url = f"{server_url.rstrip('/')}/api/enroll/ca"
    ca_pem = _request(urllib.request.Request(url), timeout_s, None)
    check_pinned_ca(ca_pem, ca_fingerprint)
    return ca_pem


def _post_json(url: str, body: dict[str, Any], timeout_s: float, ca_pem: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )
    raw = _request(request, timeout_s, ca_pem)
    try:
        result = json.loads(raw)
    except ValueError as err:
        raise PayloadError(f"the enrollment response from {url} is not JSON: {err}") from err
    if not isinstance(result, dict):
        raise PayloadError(f"the enrollment response from {url} is not a JSON object")
    return result


def enroll(
    config: AgentConfig,
    token: str,
    *,
    ca_fingerprint: str,
    server_url: str | None = None,
    timeout_s: float = 30.0,
    **overrides: Any,
) -> EnrollmentOutcome:
    """Enroll the device of `config` and save its identity and settings in its home.

    `ca_fingerprint` is the fleet CA's SHA-256 fingerprint, given out of band with the token:
    a server offering another CA is refused (TrustError) before the token is sent.
    `overrides` are settings to change at the same time (e.g. broker_host, broker_port).
    """
    key = load_or_create_key(config)
    base = (server_url or config.server_url).rstrip("/")
    if not base.startswith("https://"):
        logger.warning("enrolling over plain HTTP (%s): the one-time token is sent in clear text",
                       base)
    pinned_ca = fetch_pinned_ca(base, ca_fingerprint, timeout_s)
    body = {"token": token, "csr": make_csr(key, config.device_id).decode()}
    response = _post_json(f"{base}/api/enroll", body, timeout_s, pinned_ca)
    identity = config.identity
    try:
        ca_pem = str(response["ca_certificate"]).encode()
        mode = str(response["mode"])
        x509.load_pem_x509_certificate(ca_pem)
    except (KeyError, ValueError) as err:
        raise PayloadError(f"the enrollment response lacks a valid CA certificate: {err}") from err
    check_pinned_ca(ca_pem, ca_fingerprint)
    not_after: float | None = None
    changes: dict[str, Any] = {"broker_tls": True, **overrides}
    if mode == "certificate":
        cert_pem = str(response.get("certificate") or "").encode()
        cert = check_certificate(cert_pem, ca_pem, key, config.device_id)
        not_after = cert.not_valid_after_utc.timestamp()
        write_bytes_atomic(identity.cert_file, cert_pem)
    elif mode == "password":
        if not response.get("password"):
            raise PayloadError("the password-mode enrollment response has no password")
        changes.update(broker_username=response["username"], broker_password=response["password"])
    else:
        raise PayloadError(f"unknown enrollment mode {mode!r}")
    write_bytes_atomic(identity.ca_file, ca_pem)
    saved = dataclasses.replace(config, **changes)
    write_bytes_atomic(saved.home / CONFIG_FILE, dump_toml(saved).encode())
    return EnrollmentOutcome(saved, mode, not_after)
