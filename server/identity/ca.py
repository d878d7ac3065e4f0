"""The fleet certificate authority: device certificates, server identities, the broker's cert.

    <home>/ca/ca.key                 the CA private key (0600, never leaves the server home)
    <home>/ca/ca.crt                 the CA certificate (devices and the broker trust it)
    <home>/ca/identities/<name>.key  server-side identities (0600): the broker's TLS cert and
    <home>/ca/identities/<name>.crt  one MQTT client cert per server connection

Pure functions build and check certificates (`sign_device_csr`, `issue_certificate`,
`load_csr`); `FleetCA` is the thin file shell around them. Keys are ECDSA P-256.

Identity rules
- A device certificate's subject CN is the device id, the only name the broker uses
  (`use_identity_as_username`), so the CSR may propose nothing else: the subject is rebuilt
  from the id, and only the CSR's public key (proven by its signature) is kept.
- Names starting with `SERVER_IDENTITY_PREFIX` are reserved for the server's own
  identities, which the broker ACL grants fleet-wide rights: no device may enroll as one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

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

__all__ = [
    "CA_DIR",
    "SERVER_IDENTITY_PREFIX",
    "FleetCA",
    "IdentityFiles",
    "check_device_name",
    "issue_certificate",
    "load_csr",
    "new_private_key",
    "sign_device_csr",
]

logger = logging.getLogger(__name__)

CA_DIR = "ca"
SERVER_IDENTITY_PREFIX = "edgeops-server"
CA_VALIDITY = dt.timedelta(days=3650)
DEVICE_VALIDITY = dt.timedelta(days=825)
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


def check_device_name(device_id: str) -> str:
    """`device_id` if a device may enroll under it, else ConfigError."""
    validate_device_id(device_id)
    if device_id.lower().startswith(SERVER_IDENTITY_PREFIX):
        raise ConfigError(
            f"device id {device_id!r} is reserved: names starting with "
            f"{SERVER_IDENTITY_PREFIX!r} belong to the server"
        )
    return device_id


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
) -> x509.Certificate:
    """A client certificate with CN = `device_id` for the CSR's (verified) public key."""
    check_device_name(device_id)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)  # load_csr checked it
    return issue_certificate(ca_key, ca_cert, public, device_id, now)


# File shell -----------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=0o600)


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
    def ensure(cls, home: Path, name: str = "EdgeOps fleet CA") -> FleetCA:
        """Load the CA of the server home `home`, creating it (key 0600) if absent."""
        directory = Path(home) / CA_DIR
        key_file, cert_file = directory / "ca.key", directory / "ca.crt"
        if key_file.exists():
            return cls.load(home)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = new_private_key()
        cert = make_ca_certificate(key, name, dt.datetime.now(dt.UTC))
        _write_private(key_file, key_pem(key))
        write_bytes_atomic(cert_file, cert_pem(cert), mode=0o644)
        logger.info("created the fleet CA in %s", directory)
        return cls(directory, key, cert)

    @classmethod
    def load(cls, home: Path) -> FleetCA:
        directory = Path(home) / CA_DIR
        try:
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load the fleet CA from {directory}: {err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{directory / 'ca.key'} is not an EC key")
        return cls(directory, key, cert)

    def sign_csr(self, csr_pem: bytes, device_id: str, now: dt.datetime | None = None) -> bytes:
        csr = load_csr(csr_pem)
        now = now or dt.datetime.now(dt.UTC)
        return cert_pem(sign_device_csr(self._key, self.cert, csr, device_id, now))

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
