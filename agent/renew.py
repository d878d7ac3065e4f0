"""Certificate renewal: before the device certificate expires, trade a proof of the current
key for a new certificate (same key), and keep it in `<home>/identity/device.crt`.

    due?   once a third of the certificate's lifetime is left (397 days: ~132 days before)
    proof  CSR (CN = device id) + signature by the current key over it and the time
           (edgeops.renewal) ─► POST /api/enroll/renew ◄─ new certificate
    check  the new certificate is for our key and id, signed by the CA we already hold
           (the response's CA is not trusted), then written atomically

The daemon calls `renew_if_due` from its periodic loop; a failure is logged and retried at
the next check, while the current certificate still works. The MQTT link presents the new
certificate from its next start (the old one stays valid until it expires).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cryptography import x509

from agent.config import AgentConfig
from agent.enroll import _post_json, check_certificate, load_or_create_key
from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError
from edgeops.renewal import sign_renewal
from edgeops.x509 import make_csr

__all__ = [
    "CHECK_INTERVAL_S",
    "RENEW_FRACTION",
    "RenewalOutcome",
    "renew",
    "renew_if_due",
    "renewal_due",
]

logger = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3  # renew once this share of the lifetime is left
CHECK_INTERVAL_S = 3600.0  # how often the daemon looks


@dataclass(frozen=True)
class RenewalOutcome:
    serial: int
    not_after: float  # unix time


def renewal_due(cert: x509.Certificate, now: float) -> bool:
    """True once no more than `RENEW_FRACTION` of `cert`'s lifetime is left."""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return end - now <= (end - start) * RENEW_FRACTION


def _current(config: AgentConfig) -> x509.Certificate | None:
    """The device certificate, or None in password mode or before enrollment."""
    path = config.identity.cert_file
    if config.broker_username or not path.exists():
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the device certificate {path}: {err}") from err


def renew(config: AgentConfig, *, timeout_s: float = 30.0) -> RenewalOutcome:
    """Get a new certificate for the device's key now and save it."""
    identity = config.identity
    current = _current(config)
    if current is None:
        raise ConfigError(f"device {config.device_id} has no certificate to renew; enroll it")
    key = load_or_create_key(config)
    ca_pem = identity.ca_file.read_bytes()
    csr = make_csr(key, config.device_id)
    signed_at = int(time.time())
    body = {
        "certificate": identity.cert_file.read_text(),
        "csr": csr.decode(),
        "signed_at": signed_at,
        "signature": sign_renewal(key, config.device_id, csr, signed_at),
    }
    url = f"{config.server_url.rstrip('/')}/api/enroll/renew"
    response = _post_json(url, body, timeout_s, ca_pem)
    cert_pem = str(response.get("certificate") or "").encode()
    cert = check_certificate(cert_pem, ca_pem, key, config.device_id)
    write_bytes_atomic(identity.cert_file, cert_pem)
    logger.info(
        "device %s: certificate renewed, serial %x, valid until %s",
        config.device_id,
        cert.serial_number,
        cert.not_valid_after_utc,
    )
    return RenewalOutcome(cert.serial_number, cert.not_valid_after_utc.timestamp())


def renew_if_due(
    config: AgentConfig, now: float | None = None, *, timeout_s: float = 30.0
) -> RenewalOutcome | None:
    """Renew if the certificate is due (see `renewal_due`); None if nothing was done."""
    current = _current(config)
    if current is None or not renewal_due(current, time.time() if now is None else now):
        return None
    return renew(config, timeout_s=timeout_s)
