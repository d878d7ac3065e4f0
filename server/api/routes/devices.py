"""`/api/devices` and `/api/groups`: the fleet inventory, device groups and tags (what
rollouts select by), status history and recent telemetry.

    GET /api/devices[?group=&tag=]           viewer    every device with its labels
    GET /api/devices/{id}                    viewer
    PUT /api/devices/{id}/labels             operator  group and tags
    GET /api/devices/{id}/history|telemetry  viewer
    GET /api/groups                          viewer

An unknown device is a NotFoundError, a 404 through the app's one error handler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from edgeops.topics import DEVICE_ID_PATTERN
from server.api.audit import note
from server.api.deps import OperatorDep, SessionFactoryDep, ViewerDep
from server.api.labels import LABEL, clean_tags
from server.db.tables import Device, DeviceEvent, DeviceLabel, TelemetryRecord, as_utc
from server.fleet import inventory

__all__ = [
    "DeviceEventPublic",
    "DeviceLabelsPublic",
    "DeviceLabelsUpdate",
    "DevicePublic",
    "GroupPublic",
    "router",
]

router = APIRouter(prefix="/api", tags=["devices"])

DeviceId = Annotated[str, Path(max_length=64, pattern=DEVICE_ID_PATTERN.pattern)]


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
    return None if moment is None else as_utc(moment)


class DeviceLabelsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = Field(default="default", pattern=LABEL)
    tags: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return clean_tags(value)


class DeviceLabelsPublic(BaseModel):
    device_id: str
    group: str
    tags: list[str]


class DeviceEventPublic(BaseModel):
    at: datetime
    online: bool
    state: str | None
    release: str | None
    target: str | None
    reason: str | None


class GroupPublic(BaseModel):
    group: str
    devices: int


@router.get("/devices", response_model=list[DevicePublic])
def list_devices(
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
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


@router.get("/devices/{device_id}", response_model=DevicePublic)
def get_device(
    device_id: str, _user: ViewerDep, session_factory: SessionFactoryDep
) -> DevicePublic:
    with session_factory() as session:
        device = inventory.get_device(session, device_id)
        return DevicePublic.of(device, session.get(DeviceLabel, device_id))


@router.put("/devices/{device_id}/labels", response_model=DeviceLabelsPublic)
def set_labels(device_id: DeviceId, body: DeviceLabelsUpdate, _user: OperatorDep,
               session_factory: SessionFactoryDep, request: Request) -> DeviceLabelsPublic:
    """Put a device in a group and give it tags (replacing the previous ones)."""
    with session_factory.begin() as session:
        inventory.get_device(session, device_id)  # NotFoundError -> 404
        label = session.get(DeviceLabel, device_id)
        if label is None:
            label = DeviceLabel(device_id=device_id)
            session.add(label)
        label.group_name = body.group
        label.tags = body.tags
        label.updated_at = datetime.now(UTC)
    note(request, f"device {device_id}: group {body.group}, tags {body.tags}")
    return DeviceLabelsPublic(device_id=device_id, group=body.group, tags=body.tags)


@router.get("/groups", response_model=list[GroupPublic])
def list_groups(_user: ViewerDep, session_factory: SessionFactoryDep) -> list[GroupPublic]:
    """Groups and how many devices each holds (unlabelled devices are in "default")."""
    with session_factory() as session:
        labelled = dict(
            session.execute(
                select(DeviceLabel.group_name, func.count()).group_by(DeviceLabel.group_name)
            ).all()
        )
        total = session.scalar(select(func.count()).select_from(Device)) or 0
        known_labelled = session.scalar(
            select(func.count()).select_from(DeviceLabel).join(
                Device, Device.device_id == DeviceLabel.device_id)
        ) or 0
        labelled["default"] = labelled.get("default", 0) + max(0, total - known_labelled)
        return [GroupPublic(group=g, devices=n) for g, n in sorted(labelled.items()) if n]


@router.get("/devices/{device_id}/history", response_model=list[DeviceEventPublic])
def device_history(
    device_id: DeviceId,
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeviceEventPublic]:
    """Status changes the server observed, newest first."""
    with session_factory() as session:
        inventory.get_device(session, device_id)
        rows = session.scalars(
            select(DeviceEvent).where(DeviceEvent.device_id == device_id)
            .order_by(DeviceEvent.id.desc()).limit(limit)
        )
        return [
            DeviceEventPublic(at=as_utc(e.at), online=e.online, state=e.state, release=e.release,
                              target=e.target, reason=e.reason)
            for e in rows
        ]


@router.get("/devices/{device_id}/telemetry")
def device_telemetry(
    device_id: DeviceId,
    _user: ViewerDep,
    session_factory: SessionFactoryDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[dict[str, Any]]:
    """The latest telemetry batches of the device as received (newest first)."""
    with session_factory() as session:
        inventory.get_device(session, device_id)
        rows = session.scalars(
            select(TelemetryRecord).where(TelemetryRecord.device_id == device_id)
            .order_by(TelemetryRecord.window_end.desc()).limit(limit)
        )
        return [dict(r.payload) for r in rows]
