"""The fleet certificate authority: device certificates, server identities, the broker's cert.

    <home>/ca/ca.key                 the CA private key (0600, never leaves the server home;
                                     encrypted with the passphrase in ca_key_passphrase_file)
    <home>/ca/ca.crt                 the CA certificate (devices and the broker trust it)
    <home>/ca/identities/<name>.key  server-side identities (0600): the broker's TLS cert and
    <home>/ca/identities/<name>.crt  one MQTT client cert per server connection

Pure functions build and check certificates (`sign_device_csr`, `issue_certificate`,
`load_csr`); `FleetCA` is the thin file shell around them. Keys are ECDSA P-256.

Identity rules
- A device certificate's subject CN is the device id, the only name the broker uses
  (`use_identity_as_username`), so the CSR may propose nothing else: the subject is rebuilt
  from the id, and only the CSR's public key (proven by its signature) is kept.
- Names starting with `SERVER_IDENTITY_PREFIX`, with the configured `broker_identity` or
  with any server-side identity minted here (`identities/`, e.g. `--server-client` names)
  are reserved: the broker ACL grants them fleet-wide rights, so no device may enroll as one.
- Device certificates live `DEVICE_VALIDITY` (397 days, below the CA/Browser Forum's old
  825-day ceiling) and are renewed by the agent; revoked ones are listed in the CRL
  (`sign_crl`) the broker checks (`crlfile`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError, PayloadError, TrustError
from edgeops.topics import validate_device_id
from edgeops.x509 import common_name as _name
from edgeops.x509 import key_pem, make_csr, new_private_key

if TYPE_CHECKING:
    from server.config.settings import ServerSettings

__all__ = [
    "CA_DIR",
    "CRL_FILE",
    "DEVICE_VALIDITY",
    "SERVER_IDENTITY_PREFIX",
    "FleetCA",
    "IdentityFiles",
    "build_crl",
    "ca_key_passphrase",
    "check_device_name",
    "check_device_validity",
    "issue_certificate",
    "load_csr",
    "new_private_key",
    "sign_device_csr",
]

logger = logging.getLogger(__name__)

CA_DIR = "ca"
SERVER_IDENTITY_PREFIX = "edgeops-server"
CA_VALIDITY = dt.timedelta(days=3650)
DEVICE_VALIDITY = dt.timedelta(days=397)
MAX_DEVICE_VALIDITY = dt.timedelta(days=825)  # exclusive
CRL_FILE = "crl.pem"
MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True)
class IdentityFiles:
    """A certificate and its key on disk, with the CA that signed it."""

    cert_file: Path
    key_file: Path
    ca_file: Path


# Pure core ------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def check_device_name(device_id: str, reserved: Sequence[str] = ()) -> str:
    """`device_id` if a device may enroll under it, else ConfigError.

    A name starting with `SERVER_IDENTITY_PREFIX` or one of `reserved` (compared without
    case) collides with a server identity or a client id derived from it
    (`<identity>-commands`, `<identity>-ingest`).
    """
    validate_device_id(device_id)
    lowered = device_id.lower()
    for prefix in (SERVER_IDENTITY_PREFIX, *reserved):
        if prefix and lowered.startswith(prefix.lower()):
            raise ConfigError(
                f"device id {device_id!r} is reserved: names starting with {prefix!r} "
                "belong to the server's MQTT identities"
            )
    return device_id


def check_device_validity(validity: dt.timedelta) -> dt.timedelta:
    """`validity` if it is a sound device certificate lifetime, else ConfigError."""
    if not dt.timedelta(days=1) <= validity < MAX_DEVICE_VALIDITY:
        raise ConfigError(
            f"device certificates must live at least 1 day and less than "
            f"{MAX_DEVICE_VALIDITY.days} days, not {validity.days} days"
        )
    return validity


def make_ca_certificate(
    key: ec.EllipticCurvePrivateKey, name: str, now: dt.datetime
) -> x509.Certificate:
    subject = _name(name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    now: dt.datetime,
    *,
    server: bool = False,
    hosts: tuple[str, ...] = (),
    validity: dt.timedelta = DEVICE_VALIDITY,
) -> x509.Certificate:
    """A leaf certificate for `public_key`: a TLS client (default) or a TLS server for `hosts`."""
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature; PayloadError if it is not one."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise PayloadError(f"CSR of {len(csr_pem)} bytes exceeds {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise PayloadError(f"not a PEM certificate signing request: {err}") from err
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError) as err:
        raise PayloadError(f"the CSR's signature cannot be checked: {err}") from err
    if not valid:
        raise TrustError("the CSR is not signed by the key it carries")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise PayloadError("the CSR must carry an EC (P-256) public key")
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PayloadError("the CSR subject must hold exactly one common name (the device id)")
    return str(names[0].value)


def sign_device_csr(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    device_id: str,
    now: dt.datetime,
    *,
    validity: dt.timedelta = DEVICE_VALIDITY,
    reserved: Sequence[str] = (),
) -> x509.Certificate:
    """A client certificate with CN = `device_id` for the CSR's (verified) public key."""
    check_device_name(device_id, reserved)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)  # load_csr checked it
    return issue_certificate(
        ca_key, ca_cert, public, device_id, now, validity=check_device_validity(validity)
    )


def build_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Sequence[tuple[int, dt.datetime]],
    now: dt.datetime,
) -> x509.CertificateRevocationList:
    """The CA's CRL listing `revoked` (serial, when). It is valid until the CA expires: the
    broker reads it from a local file, and OpenSSL refuses every client once it is stale."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial, at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


# File shell -----------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=0o600)


def _ca_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    if passphrase is None:
        return key_pem(key)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def ca_key_passphrase(settings: ServerSettings) -> bytes | None:
    """The CA key passphrase from `settings.ca_key_passphrase_file` (relative to the home),
    without its trailing newline; None if no file is configured."""
    if not settings.ca_key_passphrase_file:
        return None
    path = settings.home / settings.ca_key_passphrase_file
    try:
        passphrase = path.read_bytes().rstrip(b"\r\n")
    except OSError as err:
        raise ConfigError(f"cannot read ca_key_passphrase_file {path}: {err}") from err
    if not passphrase:
        raise ConfigError(f"ca_key_passphrase_file {path} is empty")
    return passphrase


class FleetCA:
    """The CA kept in `<home>/ca/`. `FleetCA.ensure(home)` creates it on first use."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.directory = Path(directory)
        self._key = key
        self.cert = cert

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return cert_pem(self.cert)

    @classmethod
    def for_settings(cls, settings: ServerSettings) -> FleetCA:
        """`ensure` for the server home of `settings`, with its CA key passphrase."""
        return cls.ensure(settings.home, passphrase=ca_key_passphrase(settings))

    @classmethod
    def ensure(
        cls, home: Path, name: str = "EdgeOps fleet CA", *, passphrase: bytes | None = None
    ) -> FleetCA:
        """Load the CA of the server home `home`, creating it (key 0600, encrypted with
        `passphrase` if given) if absent."""
        directory = Path(home) / CA_DIR
        key_file, cert_file = directory / "ca.key", directory / "ca.crt"
        if key_file.exists():
            return cls.load(home, passphrase=passphrase)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = new_private_key()
        cert = make_ca_certificate(key, name, dt.datetime.now(dt.UTC))
        _write_private(key_file, _ca_key_pem(key, passphrase))
        write_bytes_atomic(cert_file, cert_pem(cert), mode=0o644)
        logger.info("created the fleet CA in %s", directory)
        return cls(directory, key, cert)

    @classmethod
    def load(cls, home: Path, *, passphrase: bytes | None = None) -> FleetCA:
        """The CA of `home`. A key stored in clear is encrypted in place once a
        `passphrase` is configured."""
        directory = Path(home) / CA_DIR
        key_file = directory / "ca.key"
        try:
            data = key_file.read_bytes()
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load the fleet CA from {directory}: {err}") from err
        encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
        if encrypted and passphrase is None:
            raise ConfigError(
                f"the fleet CA key {key_file} is encrypted: set ca_key_passphrase_file in "
                "server.toml (or EDGEOPS_SERVER_CA_KEY_PASSPHRASE_FILE) to the file holding "
                "its passphrase"
            )
        try:
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
        except (ValueError, TypeError) as err:
            hint = "wrong passphrase, or " if encrypted else ""
            raise ConfigError(f"cannot load the fleet CA key {key_file}: {hint}{err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_file} is not an EC key")
        if passphrase is not None and not encrypted:
            _write_private(key_file, _ca_key_pem(key, passphrase))
            logger.warning("encrypted the fleet CA key %s with the configured passphrase", key_file)
        return cls(directory, key, cert)

    def sign_csr(
        self, csr_pem: bytes, device_id: str, now: dt.datetime | None = None, *,
        validity: dt.timedelta = DEVICE_VALIDITY,
        reserved: Sequence[str] = (),
    ) -> bytes:
        csr = load_csr(csr_pem)
        now = now or dt.datetime.now(dt.UTC)
        return cert_pem(sign_device_csr(self._key, self.cert, csr, device_id, now,
                                        validity=validity, reserved=reserved))

    def sign_crl(self, revoked: Sequence[tuple[int, dt.datetime]]) -> bytes:
        """PEM CRL of this CA listing `revoked` (serial, when)."""
        crl = build_crl(self._key, self.cert, revoked, dt.datetime.now(dt.UTC))
        return crl.public_bytes(serialization.Encoding.PEM)

    def server_identities(self) -> tuple[str, ...]:
        """The names of the server-side identities minted so far (`identities/<name>.crt`)."""
        return tuple(sorted(path.stem for path in (self.directory / "identities").glob("*.crt")))

    def identity(
        self, name: str, *, server: bool = False, hosts: tuple[str, ...] = (),
        reissue: bool = False,
    ) -> IdentityFiles:
        """Key and certificate for a server-side `name` (created once and reused, unless
        `reissue`)."""
        validate_device_id(name)
        directory = self.directory / "identities"
        files = IdentityFiles(directory / f"{name}.crt", directory / f"{name}.key", self.ca_file)
        if files.cert_file.exists() and files.key_file.exists() and not reissue:
            return files
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = new_private_key()
        now = dt.datetime.now(dt.UTC)
        cert = issue_certificate(
            self._key, self.cert, key.public_key(), name, now, server=server, hosts=hosts,
            validity=CA_VALIDITY,
        )
        _write_private(files.key_file, key_pem(key))
        write_bytes_atomic(files.cert_file, cert_pem(cert))
        return files

    def device_identity(self, device_id: str, directory: Path) -> IdentityFiles:
        """Enroll a device without the API (simulations, tests): key made here, in `directory`."""
        key = new_private_key()
        cert = self.sign_csr(make_csr(key, device_id), device_id)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = IdentityFiles(directory / "device.crt", directory / "device.key", directory / "ca.crt")
        _write_private(files.key_file, key_pem(key))
        write_bytes_atomic(files.cert_file, cert)
        write_bytes_atomic(files.ca_file, self.ca_pem)
        return files
