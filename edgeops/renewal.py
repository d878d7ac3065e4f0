"""The proof a device sends to renew its certificate, made by the agent and checked by the
server the same way.

    message   = CONTEXT | device id | signed_at (unix s) | sha256(new CSR PEM)
    signature = ECDSA-SHA256 over `message` by the key of the device's current certificate

The signature shows the caller holds the current key; the CSR (signed by the new key, which
may be the same key) shows it holds the key the new certificate is for. `signed_at` must be
within `MAX_CLOCK_SKEW_S` of the server's clock, so an old request cannot be replayed later,
and a replay inside that window only yields a certificate for a key the attacker lacks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeops.errors import PayloadError, TrustError

__all__ = [
    "MAX_CLOCK_SKEW_S",
    "check_renewal_signature",
    "key_sha256",
    "renewal_message",
    "sign_renewal",
]

CONTEXT = b"edgeops-certificate-renewal-v1"
MAX_CLOCK_SKEW_S = 300


def key_sha256(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the key's DER SubjectPublicKeyInfo (the key's fingerprint)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def renewal_message(device_id: str, csr_pem: bytes, signed_at: int) -> bytes:
    digest = hashlib.sha256(csr_pem).hexdigest()
    return b"\n".join([CONTEXT, device_id.encode(), str(int(signed_at)).encode(), digest.encode()])


def sign_renewal(
    key: ec.EllipticCurvePrivateKey, device_id: str, csr_pem: bytes, signed_at: int
) -> str:
    """Base64 signature of the renewal message by the device's current key."""
    message = renewal_message(device_id, csr_pem, signed_at)
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


def check_renewal_signature(
    public_key: ec.EllipticCurvePublicKey,
    signature_b64: str,
    device_id: str,
    csr_pem: bytes,
    signed_at: int,
    now: float,
) -> None:
    """TrustError unless `signature_b64` is the current key's fresh signature of the request."""
    if abs(now - signed_at) > MAX_CLOCK_SKEW_S:
        raise TrustError(
            f"the renewal request was signed at {signed_at}, more than {MAX_CLOCK_SKEW_S} s "
            f"from the server's clock ({now:.0f}): check the device's clock"
        )
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise PayloadError(f"the renewal signature is not base64: {err}") from err
    message = renewal_message(device_id, csr_pem, signed_at)
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as err:
        raise TrustError(
            f"the renewal request for {device_id!r} is not signed by its current certificate's key"
        ) from err
