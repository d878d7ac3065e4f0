"""The table of device certificates the fleet CA issued (`issued_certificates`).

Enrollment and renewal `record` every certificate; `revoke_device` marks all of a device's
certificates revoked and `revoked` lists them for the CRL. A device id with any row, revoked
or not, counts as enrolled: only a token bound to it re-enrolls it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edgeops.errors import TrustError
from edgeops.renewal import key_sha256
from server.db.tables import IssuedCertificate, as_utc

__all__ = ["CertificateStore", "IssuedRecord", "serial_hex"]


def serial_hex(serial: int) -> str:
    return format(serial, "x")


@dataclass(frozen=True)
class IssuedRecord:
    serial: str
    device_id: str
    key_sha256: str
    issued_at: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None
    renewed_from: str | None


def _record(row: IssuedCertificate) -> IssuedRecord:
    return IssuedRecord(
        row.serial,
        row.device_id,
        row.key_sha256,
        as_utc(row.issued_at),
        as_utc(row.not_after),
        as_utc(row.revoked_at) if row.revoked_at else None,
        row.renewed_from,
    )


class CertificateStore:
    def __init__(self, session_factory: sessionmaker) -> None:
        self._sessions = session_factory

    def record(
        self, cert: x509.Certificate, device_id: str, *, renewed_from: str | None = None
    ) -> IssuedRecord:
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # the CA signs only EC keys
        row = IssuedCertificate(
            serial=serial_hex(cert.serial_number),
            device_id=device_id,
            key_sha256=key_sha256(public),
            issued_at=dt.datetime.now(dt.UTC),
            not_after=cert.not_valid_after_utc,
            renewed_from=renewed_from,
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def for_device(self, device_id: str) -> list[IssuedRecord]:
        with self._sessions() as session:
            rows = session.scalars(
                select(IssuedCertificate)
                .where(IssuedCertificate.device_id == device_id)
                .order_by(IssuedCertificate.issued_at)
            )
            return [_record(row) for row in rows]

    def is_enrolled(self, device_id: str) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(IssuedCertificate.serial)
                .where(IssuedCertificate.device_id == device_id)
                .limit(1)
            )
            return found is not None

    def check_usable(
        self, cert: x509.Certificate, device_id: str, now: dt.datetime
    ) -> IssuedRecord:
        """The record of `cert` if it was issued to `device_id`, is unrevoked and unexpired;
        else TrustError."""
        serial = serial_hex(cert.serial_number)
        with self._sessions() as session:
            row = session.get(IssuedCertificate, serial)
            record = _record(row) if row is not None else None
        if record is None or record.device_id != device_id:
            raise TrustError(f"certificate {serial} was not issued to device {device_id!r}")
        if record.revoked_at is not None:
            raise TrustError(f"certificate {serial} of {device_id!r} is revoked")
        if record.not_after <= now:
            raise TrustError(
                f"certificate {serial} of {device_id!r} expired at {record.not_after:%Y-%m-%d}: "
                "re-enroll the device with a token bound to it"
            )
        return record

    def revoke_device(self, device_id: str, now: dt.datetime) -> list[str]:
        """Mark every unrevoked certificate of `device_id` revoked; their serials."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(IssuedCertificate).where(
                    IssuedCertificate.device_id == device_id,
                    IssuedCertificate.revoked_at.is_(None),
                )
            ).all()
            for row in rows:
                row.revoked_at = now
            return [row.serial for row in rows]

    def revoked(self) -> list[tuple[int, dt.datetime]]:
        """(serial, revoked at) of every revoked certificate, for the CRL."""
        with self._sessions() as session:
            rows = session.execute(
                select(IssuedCertificate.serial, IssuedCertificate.revoked_at)
                .where(IssuedCertificate.revoked_at.is_not(None))
                .order_by(IssuedCertificate.revoked_at)
            ).all()
            return [(int(serial, 16), as_utc(at)) for serial, at in rows]
