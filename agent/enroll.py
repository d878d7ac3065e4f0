"""Device enrollment: make a key pair on the device, trade a CSR and a one-time token for a
certificate from the fleet CA, and keep both in `<home>/identity/`.

    key (P-256, made here, 0600, never sent) ─► CSR (CN = device id) ─► POST /api/enroll
        ◄─ certificate + CA certificate (or, in password mode, a broker password)
    check: the certificate is for our key and our id, signed by the CA we were given
    write identity files, then agent.toml (broker_tls = true)

The private key is written before the request, and reused if enrollment is retried, so a
lost response never leaves a certificate for a key the device does not have.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
from edgeops.errors import ConfigError, EdgeOpsError, PayloadError, TransportError, TrustError
from edgeops.x509 import key_pem, make_csr, new_private_key

__all__ = ["EnrollmentOutcome", "check_certificate", "enroll", "load_or_create_key", "make_csr"]

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


def _post_json(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as err:
        detail = err.read(4096).decode(errors="replace")
        error_type: type[EdgeOpsError] = TrustError if err.code in (401, 403) else ConfigError
        if err.code >= 500:
            error_type = TransportError
        raise error_type(f"enrollment refused by {url}: HTTP {err.code} {detail}") from err
    except (urllib.error.URLError, OSError) as err:
        raise TransportError(f"cannot reach {url}: {err}") from err
    if len(raw) > MAX_RESPONSE_BYTES:
        raise PayloadError(f"the enrollment response from {url} is too large")
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
    server_url: str | None = None,
    timeout_s: float = 30.0,
    **overrides: Any,
) -> EnrollmentOutcome:
    """Enroll the device of `config` and save its identity and settings in its home.

    `overrides` are settings to change at the same time (e.g. broker_host, broker_port).
    """
    key = load_or_create_key(config)
    url = f"{(server_url or config.server_url).rstrip('/')}/api/enroll"
    response = _post_json(url, {"token": token, "csr": make_csr(key, config.device_id).decode()},
                          timeout_s)
    identity = config.identity
    try:
        ca_pem = str(response["ca_certificate"]).encode()
        mode = str(response["mode"])
        x509.load_pem_x509_certificate(ca_pem)
    except (KeyError, ValueError) as err:
        raise PayloadError(f"the enrollment response lacks a valid CA certificate: {err}") from err
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
