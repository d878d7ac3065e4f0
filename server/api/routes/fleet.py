"""`/api/devices`, `/api/ingest/stats` and `/api/deployments`: the fleet over HTTP.

    fleet_router(session_factory, publisher, ingest, require_admin) -> APIRouter

Reads are open; `POST /api/deployments` is guarded by the `require_admin` dependency.
Domain errors (NotFoundError, CommandDeliveryError) are raised as they are and turned into
HTTP responses by the app's one error handler (server.app.http_app: 404, 503).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeops.errors import NotFoundError
from edgeops.messages import Command
from edgeops.topics import DEVICE_ID_PATTERN
from server.api.deps import require_viewer
from server.db.tables import Device, DeviceLabel, Release
from server.fleet import inventory
from server.fleet.commands import CommandPublisher
from server.fleet.ingest.worker import Ingest

__all__ = ["DeploymentCreate", "DeploymentPublic", "DevicePublic", "fleet_router"]

logger = logging.getLogger(__name__)

MAX_DEVICES_PER_REQUEST = 10_000
# A TUF target path: relative, '/'-separated segments each starting with a letter or digit
# (so no empty, '.', '..' or hidden segments).
TARGET_PATH_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(?:/[A-Za-z0-9][A-Za-z0-9._+-]*)*$")


class DevicePublic(BaseModel):
    device_id: str
    online: bool
    state: str | None
    model: str | None
    version: int | None
    release: str | None
    target: str | None
    reason: str | None
    agent_version: str | None
    telemetry_messages: int
    last_status_at: datetime | None
    last_seen_at: datetime | None
    group: str = "default"
    tags: list[str] = []

    @classmethod
    def of(cls, device: Device, label: DeviceLabel | None = None) -> DevicePublic:
        return cls(
            group=label.group_name if label is not None else "default",
            tags=list(label.tags or []) if label is not None else [],
            device_id=device.device_id,
            online=bool(device.online),
            state=device.state,
            model=device.model,
            version=device.version,
            release=device.release,
            target=device.target,
            reason=device.reason,
            agent_version=device.agent_version,
            telemetry_messages=device.telemetry_messages or 0,
            last_status_at=_utc(device.last_status_at),
            last_seen_at=_utc(device.last_seen_at),
        )


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=300, description="TUF target path of a release")
    devices: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_DEVICES_PER_REQUEST,
        description="device ids; null deploys to every known device",
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


def fleet_router(
    session_factory: Callable[[], Session],
    publisher: CommandPublisher,
    ingest: Ingest | None,
    require_admin: Callable[..., Any],
    *,
    require_release: bool = True,
) -> APIRouter:
    """The fleet API. `ingest` is None when this process runs no ingest worker.

    With `require_release`, a deployment's target must be a release in the registry.
    """
    router = APIRouter(prefix="/api", tags=["fleet"])

    @router.get(
        "/devices", response_model=list[DevicePublic], dependencies=[Depends(require_viewer)]
    )
    def list_devices(
        group: Annotated[str | None, Query(max_length=64)] = None,
        tag: Annotated[list[str] | None, Query(max_length=20)] = None,
    ) -> list[DevicePublic]:
        """Every device, with its group and tags; filter by group and by tags (all given)."""
        with session_factory() as session:
            labels = {label.device_id: label for label in session.scalars(select(DeviceLabel))}
            result = []
            for d in inventory.list_devices(session):
                public = DevicePublic.of(d, labels.get(d.device_id))
                if group is not None and public.group != group:
                    continue
                if tag and not set(tag) <= set(public.tags):
                    continue
                result.append(public)
            return result

    @router.get(
        "/devices/{device_id}",
        response_model=DevicePublic,
        dependencies=[Depends(require_viewer)],
    )
    def get_device(device_id: str) -> DevicePublic:
        with session_factory() as session:
            device = inventory.get_device(session, device_id)
            return DevicePublic.of(device, session.get(DeviceLabel, device_id))

    @router.get("/ingest/stats", dependencies=[Depends(require_viewer)])
    def ingest_stats() -> dict[str, Any]:
        if ingest is None:
            raise HTTPException(503, detail="no MQTT ingest runs in this server process")
        return asdict(ingest.stats())

    @router.post(
        "/deployments",
        response_model=DeploymentPublic,
        status_code=202,
        dependencies=[Depends(require_admin)],
    )
    def create_deployment(body: DeploymentCreate) -> DeploymentPublic:
        with session_factory() as session:
            if require_release and session.scalar(
                select(Release.id).where(Release.target_path == body.target)
            ) is None:
                raise NotFoundError(f"no release has target path {body.target!r}")
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
        command = Command(kind="update", target=body.target)
        publisher.send_many(devices, command)  # CommandDeliveryError -> 503
        logger.info("deployment %s of %s sent to %d devices", command.command_id, body.target,
                    len(devices))
        return DeploymentPublic(command_id=command.command_id, target=body.target, devices=devices)

    return router
