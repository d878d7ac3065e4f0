"""Pinning the fleet CA by its SHA-256 fingerprint, given to a device out of band.

The operator reads the fingerprint where the enrollment token is made
(`edgeops server enroll-token` prints both); the device checks the CA the server offers
against it before it sends the token, so a server that is not the fleet's cannot hand a
device a CA of its own choosing.

    ca_fingerprint(pem)      -> "sha256:<64 hex>" of the certificate's DER bytes
    parse_fingerprint(text)  -> the same form, from "sha256:ab..", "AB:CD:..", or plain hex
    check_pinned_ca(pem, pin)-> the certificate, or TrustError naming both fingerprints
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeops.errors import ConfigError, PayloadError, TrustError

__all__ = ["ca_fingerprint", "check_pinned_ca", "parse_fingerprint"]

_PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _load(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise PayloadError(f"not a PEM certificate: {err}") from err


def ca_fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of the certificate `cert_pem`, as "sha256:<hex>"."""
    der = _load(cert_pem).public_bytes(serialization.Encoding.DER)
    return _PREFIX + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """`text` as "sha256:<hex>"; it may carry the prefix, colons (OpenSSL's form) and any case."""
    value = text.strip().lower()
    value = value.removeprefix(_PREFIX).replace(":", "")
    if not _HEX64.match(value):
        raise ConfigError(
            f"{text!r} is not a SHA-256 fingerprint: expected 64 hex digits, e.g. the "
            "ca_fingerprint that `edgeops server enroll-token` prints"
        )
    return _PREFIX + value


def check_pinned_ca(cert_pem: bytes, pin: str) -> x509.Certificate:
    """The CA certificate `cert_pem` if its fingerprint is `pin`, else TrustError."""
    expected = parse_fingerprint(pin)
    actual = ca_fingerprint(cert_pem)
    if not hmac.compare_digest(actual, expected):
        raise TrustError(
            f"the server offered a CA with fingerprint {actual}, not the pinned {expected}: "
            "this is not the fleet's server (or the fingerprint was copied wrong); not enrolling"
        )
    return _load(cert_pem)
