"""`/api/lineage`: what a device ran at a moment and why; a release's chain and its devices.

    GET /api/lineage/devices/{id}?at=ISO|now    viewer   the release then, since/until, chain
    GET /api/lineage/releases/{target|model:v}  viewer   the chain plus devices and intervals

The answers are server.governance.lineage's. An unknown device or release is a 404, a time
that is not ISO 8601 with a timezone (or "now") a 400, through the app's one error handler.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from edgeops.topics import DEVICE_ID_PATTERN
from server.api.deps import SessionFactoryDep, SettingsDep, ViewerDep
from server.governance.lineage import device_lineage, parse_time, release_lineage

__all__ = ["router"]

router = APIRouter(prefix="/api/lineage", tags=["governance"])

DeviceId = Annotated[str, Path(max_length=64, pattern=DEVICE_ID_PATTERN.pattern)]
ReleaseName = Annotated[str, Path(min_length=1, max_length=300,
                                  description="a TUF target path, or model:version")]
At = Annotated[str, Query(max_length=64, description="ISO 8601 with a timezone, or 'now'")]


@router.get("/devices/{device_id}", response_model=dict[str, Any])
def device_at(
    device_id: DeviceId, _user: ViewerDep, session_factory: SessionFactoryDep,
    settings: SettingsDep, at: At = "now",
) -> dict[str, Any]:
    """Which release the device ran at `at`, and where that release came from."""
    moment = parse_time(at)
    with session_factory() as session:
        return device_lineage(session, device_id, moment, settings.tuf_dir)


@router.get("/releases/{name:path}", response_model=dict[str, Any])
def release_devices(
    name: ReleaseName, _user: ViewerDep, session_factory: SessionFactoryDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """The release's chain (model version, publishing, training, signing, approval) and the
    devices that had it installed, with their intervals."""
    with session_factory() as session:
        return release_lineage(session, name, settings.tuf_dir)
