"""Enrollment API: one-time tokens for operators, certificates for devices.

    POST /api/enroll              {token, csr}            -> the device certificate and the CA
    POST /api/enroll/renew        {certificate, csr, signed_at, signature} -> a new certificate
    POST /api/enroll/tokens       {device_id?, ttl_s?}    -> a one-time token (admin)
    POST /api/enroll/revocations  {device_id}             -> its certificates revoked, CRL out (admin)
    GET  /api/enroll/ca                                   -> the fleet CA certificate (PEM)

`/api/enroll` needs no admin token: the one-time token is the credential; `/renew` neither:
the signature by the device's current, unrevoked key is (edgeops.renewal). Refusals come
from `server.identity.enrollment` as domain errors, mapped to HTTP in one place
(server.api.errors): a bad, used or expired token, an already enrolled id, or a bad renewal
proof is 403, a broken CSR 422, a reserved device id 400.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from server.api.deps import AdminDep, EnrollmentDep
from server.identity.enrollment import DEFAULT_TOKEN_TTL_S

__all__ = [
    "EnrollPublic",
    "EnrollRequest",
    "RenewRequest",
    "RevocationCreate",
    "RevocationPublic",
    "TokenCreate",
    "TokenPublic",
    "router",
]

router = APIRouter(prefix="/api/enroll", tags=["enrollment"])


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=8, max_length=256)
    csr: str = Field(min_length=1, max_length=16 * 1024, description="PEM CSR, CN = device id")


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    certificate: str = Field(min_length=1, max_length=16 * 1024, description="current PEM cert")
    csr: str = Field(min_length=1, max_length=16 * 1024, description="PEM CSR, same device id")
    signed_at: int = Field(description="unix time the device signed the request")
    signature: str = Field(min_length=1, max_length=512,
                           description="base64 ECDSA by the current key (edgeops.renewal)")


class RevocationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(min_length=1, max_length=64)


class RevocationPublic(BaseModel):
    device_id: str
    revoked_serials: list[str]
    crl_files: list[str]


class EnrollPublic(BaseModel):
    device_id: str
    mode: str
    ca_certificate: str
    certificate: str | None = None
    username: str | None = None
    password: str | None = None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str | None = Field(default=None, description="Bind the token to one device id")
    ttl_s: float = Field(default=DEFAULT_TOKEN_TTL_S, gt=0, le=365 * 24 * 3600)


class TokenPublic(BaseModel):
    token: str
    device_id: str | None
    expires_at: float


@router.post("", response_model=EnrollPublic)
def enroll(body: EnrollRequest, enrollment: EnrollmentDep) -> EnrollPublic:
    """Spend a one-time token: the CSR's device id gets a certificate (or a password)."""
    result = enrollment.enroll(body.token, body.csr.encode())
    return EnrollPublic(**result.__dict__)


@router.post("/renew", response_model=EnrollPublic)
def renew(body: RenewRequest, enrollment: EnrollmentDep) -> EnrollPublic:
    """A new certificate for a device that proves it holds its current, unrevoked key."""
    result = enrollment.renew(body.certificate.encode(), body.csr.encode(), body.signed_at,
                              body.signature)
    return EnrollPublic(**result.__dict__)


@router.post("/revocations", response_model=RevocationPublic, status_code=201)
def revoke(body: RevocationCreate, _user: AdminDep, enrollment: EnrollmentDep) -> RevocationPublic:
    """Revoke every certificate of a device and rewrite the CRL the broker checks."""
    result = enrollment.revoke(body.device_id)
    return RevocationPublic(**result.__dict__)


@router.post("/tokens", response_model=TokenPublic, status_code=201)
def create_token(body: TokenCreate, _user: AdminDep, enrollment: EnrollmentDep) -> TokenPublic:
    token, record = enrollment.tokens.create(ttl_s=body.ttl_s, device_id=body.device_id)
    return TokenPublic(token=token, device_id=record.device_id, expires_at=record.expires_at)


@router.get("/ca", response_class=PlainTextResponse)
def ca_certificate(enrollment: EnrollmentDep) -> str:
    return enrollment.ca().ca_pem.decode()
