"""`/api/deployments`: send one update command to a set of devices at once (admin).

    POST /api/deployments {target, devices?}  -> 202 {command_id, target, devices}

The target must be a release in the registry and every device known to the inventory
(NotFoundError, 404); a broker that is down is a CommandDeliveryError (503). Staged
rollouts with waves and automatic abort are `/api/rollouts`.
"""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select

from edgeops.errors import NotFoundError
from edgeops.messages import Command
from edgeops.topics import DEVICE_ID_PATTERN
from server.api.deps import AdminDep, PublisherDep, SessionFactoryDep
from server.db.tables import Device
from server.fleet import inventory
from server.registry.registry import check_not_withdrawn

__all__ = ["DeploymentCreate", "DeploymentPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/deployments", tags=["fleet"])

MAX_DEVICES_PER_REQUEST = 10_000
# A TUF target path: relative, '/'-separated segments each starting with a letter or digit
# (so no empty, '.', '..' or hidden segments).
TARGET_PATH_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(?:/[A-Za-z0-9][A-Za-z0-9._+-]*)*$")


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=300, description="TUF target path of a release")
    devices: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_DEVICES_PER_REQUEST,
        description="device ids; null deploys to every known device",
    )
    allow_downgrade: bool = Field(
        default=False,
        description="an explicit rollback: devices install the target even if it is older "
        "than the release they run (they refuse a downgrade otherwise)",
    )

    @field_validator("target")
    @classmethod
    def _target_path(cls, value: str) -> str:
        if not TARGET_PATH_PATTERN.match(value):
            raise ValueError(
                "target must be a relative TUF target path like 'models/digits/3/int8.onnx'"
            )
        return value

    @field_validator("devices")
    @classmethod
    def _device_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [d for d in value if not DEVICE_ID_PATTERN.match(d)]
        if bad:
            raise ValueError(f"invalid device ids: {bad[:10]!r}")
        return list(dict.fromkeys(value))


class DeploymentPublic(BaseModel):
    command_id: str
    target: str
    devices: list[str]


def _named(ids: list[str], limit: int = 20) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


@router.post("", response_model=DeploymentPublic, status_code=202)
def create_deployment(
    body: DeploymentCreate,
    _user: AdminDep,
    session_factory: SessionFactoryDep,
    publisher: PublisherDep,
) -> DeploymentPublic:
    """Send `update` to the devices (every known device when `devices` is null)."""
    with session_factory() as session:
        check_not_withdrawn(session, body.target)  # NotFoundError / ReleaseWithdrawnError
        if body.devices is None:
            devices = [d.device_id for d in inventory.list_devices(session)]
            if not devices:
                raise HTTPException(409, detail="no devices are known to the fleet inventory")
        else:
            devices = body.devices
            known = set(
                session.scalars(select(Device.device_id).where(Device.device_id.in_(devices)))
            )
            unknown = [d for d in devices if d not in known]
            if unknown:
                raise NotFoundError(f"unknown devices: {_named(unknown)}")
    command = Command(
        kind="update", target=body.target, allow_downgrade=body.allow_downgrade or None
    )
    publisher.send_many(devices, command)  # CommandDeliveryError -> 503
    logger.info("deployment %s of %s sent to %d devices", command.command_id, body.target,
                len(devices))
    return DeploymentPublic(command_id=command.command_id, target=body.target, devices=devices)
