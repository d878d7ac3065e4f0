"""The X.509 pieces device and server must make the same way: the fleet's key type (EC P-256),
its PEM encoding, and the certificate signing request a device sends to enroll (CN = the
device id). The agent makes its key and CSR with these; the server's CA
(server/identity/ca.py) makes its own keys and the server-side identities' CSRs with them.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["common_name", "key_pem", "make_csr", "new_private_key"]


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh key of the fleet's type (EC P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM (the file holding it is mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def common_name(name: str) -> x509.Name:
    """An X.509 name holding only the common name `name`."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A PEM CSR for the common name `name` signed by `key` (what a device sends to enroll)."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(common_name(name)).sign(
        key, hashes.SHA256()
    )
    return csr.public_bytes(serialization.Encoding.PEM)
