"""Device enrollment: one-time tokens in, a certificate (or, in simulation, a password) out.

    <home>/ca/enroll_tokens.json    token records (0600): sha256 of the token, never the token
    <home>/ca/passwords             Mosquitto password file (0600), password mode only

Flow (`Enrollment.enroll`): check the CSR (signature, CN = device id, not reserved: the
fixed server prefix, `broker_identity` and every server identity the CA minted) *before*
spending the token, so a broken request does not burn it; then, under a file lock, so two
requests racing with one token (or for one id) cannot both win: check the token (exists,
unexpired, unused, bound to this device if it names one; an unbound token cannot enroll an
id that is already enrolled), sign, record the certificate in `issued_certificates`, and
only then mark the token spent. Refusals raise `TrustError` (bad, used or expired token, or
an enrolled id: HTTP 403), `PayloadError` (bad CSR: 422) or `ConfigError` (reserved id: 400).

Renewal (`Enrollment.renew`): the device presents its current certificate, a CSR and a
signature by its current key over both and a timestamp (edgeops.renewal); the certificate
must be one this CA issued to that device, recorded, unrevoked and unexpired.
Revocation (`Enrollment.revoke`): the device's certificates are marked revoked and the CRL
is republished (server.identity.crl).

Password mode (`device_auth = "password"`) issues a random broker password instead of a
certificate, stored hashed in Mosquitto's PBKDF2-SHA512 format. It exists for simulations:
it is refused unless the settings say `allow_password_auth = true`.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import sessionmaker

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError, NotFoundError, PayloadError, TrustError
from edgeops.renewal import check_renewal_signature
from server.auth.tokens import hash_token
from server.config.settings import ServerSettings
from server.identity.ca import (
    CA_DIR,
    FleetCA,
    check_device_name,
    check_device_validity,
    csr_common_name,
    load_csr,
)
from server.identity.certificates import CertificateStore, serial_hex
from server.identity.crl import CrlFiles

__all__ = [
    "DEFAULT_TOKEN_TTL_S",
    "EnrollmentResult",
    "Enrollment",
    "RevocationResult",
    "TokenRecord",
    "TokenStore",
    "check_password_mode",
    "consume_token",
    "mosquitto_password_hash",
]

DEFAULT_TOKEN_TTL_S = 24 * 3600
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes for `$7$`
T = TypeVar("T")


@dataclass(frozen=True)
class TokenRecord:
    token_sha256: str
    created_at: float
    expires_at: float
    device_id: str | None = None  # None: the device names itself in its CSR
    used_at: float | None = None
    used_by: str | None = None


@dataclass(frozen=True)
class EnrollmentResult:
    device_id: str
    mode: Literal["certificate", "password"]
    ca_certificate: str
    certificate: str | None = None
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class RevocationResult:
    device_id: str
    revoked_serials: list[str]  # revoked now (a second revocation finds none)
    crl_files: list[str]  # the CRL and its copies, rewritten


# Pure core ------------------------------------------------------------------------------


def consume_token(
    records: list[TokenRecord], token: str, device_id: str, now: float, *, enrolled: bool = False
) -> list[TokenRecord]:
    """The records with `token` spent by `device_id`; TrustError if it cannot be spent.

    `enrolled`: `device_id` already has a certificate, so only a token bound to it (the
    operator's explicit re-enrollment) may enroll it again."""
    digest = hash_token(token)
    for index, record in enumerate(records):  # noqa: B007 (index is used after the loop)
        if hmac.compare_digest(record.token_sha256, digest):
            break
    else:
        raise TrustError("unknown enrollment token")
    if record.used_at is not None:
        raise TrustError("this enrollment token was already used")
    if now >= record.expires_at:
        raise TrustError("this enrollment token has expired")
    if record.device_id is not None and record.device_id != device_id:
        raise TrustError(f"this enrollment token is for another device, not {device_id!r}")
    if record.device_id is None and enrolled:
        raise TrustError(
            f"device {device_id!r} is already enrolled: an unbound token cannot enroll it "
            "again. To re-enroll it, create a token bound to it: "
            f"edgeops server enroll-token --device-id {device_id}"
        )
    spent = replace(record, used_at=now, used_by=device_id)
    return [*records[:index], spent, *records[index + 1 :]]


def prune(records: list[TokenRecord], now: float, keep_s: float = 30 * 24 * 3600) -> list[TokenRecord]:
    """Drop records expired or used more than `keep_s` ago (the file stays small)."""
    return [r for r in records if max(r.expires_at, r.used_at or 0.0) + keep_s > now]


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    """`$7$` PBKDF2-SHA512 hash, the format of mosquitto_passwd (Mosquitto >= 2.0)."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password_mode(settings: ServerSettings) -> None:
    """ConfigError unless password authentication is explicitly allowed."""
    if not settings.allow_password_auth:
        raise ConfigError(
            "password authentication of devices is for simulations; production uses "
            "certificates. Set allow_password_auth = true in server.toml to allow it anyway."
        )


# File shell -----------------------------------------------------------------------------


class TokenStore:
    """Token records in one JSON file, changed under an exclusive lock (several workers)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[list[TokenRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[TokenRecord]:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read enrollment tokens {self.path}: {err}") from err
        return [TokenRecord(**item) for item in raw]

    def _write(self, records: list[TokenRecord]) -> None:
        data = json.dumps([asdict(r) for r in records], indent=1).encode()
        write_bytes_atomic(self.path, data, mode=0o600)

    def create(
        self, *, ttl_s: float = DEFAULT_TOKEN_TTL_S, device_id: str | None = None,
        now: float | None = None,
    ) -> tuple[str, TokenRecord]:
        """A new token (returned once, stored only as its hash) and its record."""
        if ttl_s <= 0:
            raise ConfigError("an enrollment token needs a positive lifetime")
        if device_id is not None:
            check_device_name(device_id)
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(24)
        record = TokenRecord(hash_token(token), now, now + ttl_s, device_id)
        with self._locked() as records:
            self._write([*prune(records, now), record])
        return token, record

    def consume(self, token: str, device_id: str, now: float | None = None) -> None:
        self.spend(token, device_id, lambda: None, now=now)

    def spend(
        self, token: str, device_id: str, issue: Callable[[], T], *,
        enrolled: Callable[[], bool] = lambda: False, now: float | None = None,
    ) -> T:
        """Check `token` for `device_id`, run `issue`, then mark the token spent, all under
        the lock; if `issue` raises, the token stays unspent."""
        now = time.time() if now is None else now
        with self._locked() as records:
            spent = consume_token(records, token, device_id, now, enrolled=enrolled())
            result = issue()
            self._write(spent)
        return result

    def records(self) -> list[TokenRecord]:
        return self._read()


class PasswordFile:
    """Mosquitto's password file: `<username>:<hash>` lines, one per device."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def set(self, username: str, password: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                lines = self.path.read_text().splitlines() if self.path.exists() else []
                kept = [line for line in lines if line.split(":", 1)[0] != username]
                kept.append(f"{username}:{mosquitto_password_hash(password)}")
                write_bytes_atomic(self.path, ("\n".join(kept) + "\n").encode(), mode=0o600)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def has(self, username: str) -> bool:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        return any(line.split(":", 1)[0] == username for line in lines)


class Enrollment:
    """Enrollment for one server home (the API and the CLI both use this).

    Issuing, renewing and revoking certificates needs `session_factory` (the certificate
    table); tokens and server passwords do not."""

    def __init__(
        self, settings: ServerSettings, session_factory: sessionmaker | None = None
    ) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self.tokens = TokenStore(settings.home / CA_DIR / "enroll_tokens.json")
        self.passwords = PasswordFile(settings.home / CA_DIR / "passwords")
        self.validity = check_device_validity(
            dt.timedelta(days=settings.device_cert_validity_days)
        )

    def ca(self) -> FleetCA:
        return FleetCA.for_settings(self._settings)

    @property
    def certificates(self) -> CertificateStore:
        if self._session_factory is None:
            raise ConfigError("issuing device certificates needs the server database")
        return CertificateStore(self._session_factory)

    def reserved_names(self, ca: FleetCA) -> tuple[str, ...]:
        """Prefixes no device id may start with: the server's MQTT identities."""
        return (self._settings.broker_identity, *ca.server_identities())

    def server_password(self, name: str) -> str:
        """The broker password of the server's own client `name` (password mode), created
        once, kept in `<home>/ca/server_passwords.json` (0600) and in the password file."""
        check_password_mode(self._settings)
        path = self._settings.home / CA_DIR / "server_passwords.json"
        with open(path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                known = json.loads(path.read_text()) if path.exists() else {}
                if name not in known:
                    known[name] = secrets.token_urlsafe(24)
                    write_bytes_atomic(path, json.dumps(known).encode(), mode=0o600)
                    self.passwords.set(name, known[name])
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return str(known[name])

    def enroll(self, token: str, csr_pem: bytes) -> EnrollmentResult:
        csr = load_csr(csr_pem)
        ca = self.ca()
        reserved = self.reserved_names(ca)
        device_id = check_device_name(csr_common_name(csr), reserved)
        if self._settings.device_auth == "password":
            check_password_mode(self._settings)
            password = secrets.token_urlsafe(24)
            self.tokens.spend(token, device_id, lambda: self.passwords.set(device_id, password),
                              enrolled=lambda: self.passwords.has(device_id))
            return EnrollmentResult(
                device_id, "password", ca.ca_pem.decode(), username=device_id, password=password
            )
        store = self.certificates

        def issue() -> bytes:
            pem = ca.sign_csr(csr_pem, device_id, validity=self.validity, reserved=reserved)
            store.record(x509.load_pem_x509_certificate(pem), device_id)
            return pem

        certificate = self.tokens.spend(token, device_id, issue,
                                        enrolled=lambda: store.is_enrolled(device_id))
        return EnrollmentResult(device_id, "certificate", ca.ca_pem.decode(), certificate.decode())

    def renew(
        self, certificate_pem: bytes, csr_pem: bytes, signed_at: int, signature: str,
        now: float | None = None,
    ) -> EnrollmentResult:
        """A new certificate for the device holding `certificate_pem`'s key (see module doc)."""
        now = time.time() if now is None else now
        ca = self.ca()
        current = _load_issued(certificate_pem, ca)
        device_id = _device_of(current)
        store = self.certificates
        record = store.check_usable(current, device_id, dt.datetime.fromtimestamp(now, dt.UTC))
        csr = load_csr(csr_pem)
        if csr_common_name(csr) != device_id:
            raise TrustError(f"a renewal CSR must name the same device, {device_id!r}")
        public = current.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # the CA signs only EC keys
        check_renewal_signature(public, signature, device_id, csr_pem, signed_at, now)
        pem = ca.sign_csr(csr_pem, device_id, validity=self.validity,
                          reserved=self.reserved_names(ca))
        store.record(x509.load_pem_x509_certificate(pem), device_id, renewed_from=record.serial)
        return EnrollmentResult(device_id, "certificate", ca.ca_pem.decode(), pem.decode())

    def revoke(self, device_id: str) -> RevocationResult:
        """Revoke every certificate of `device_id` and republish the CRL."""
        store = self.certificates
        if not store.is_enrolled(device_id):
            raise NotFoundError(f"no certificate was issued to device {device_id!r}")
        serials = store.revoke_device(device_id, dt.datetime.now(dt.UTC))
        files = self.publish_crl()
        return RevocationResult(device_id, serials, [str(path) for path in files])

    def publish_crl(self) -> list[Path]:
        """Sign the CRL of every revoked certificate and write it and its copies."""
        ca = self.ca()
        return CrlFiles(ca).publish(ca.sign_crl(self.certificates.revoked()))


def _device_of(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise TrustError("a device certificate names exactly one device")
    return str(names[0].value)


def _load_issued(certificate_pem: bytes, ca: FleetCA) -> x509.Certificate:
    """`certificate_pem` parsed, if this CA signed it; else TrustError."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as err:
        raise PayloadError(f"not a PEM certificate: {err}") from err
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (InvalidSignature, ValueError, TypeError) as err:
        raise TrustError(f"certificate {serial_hex(cert.serial_number)} is not from the fleet CA") from err
    return cert
