"""`/api/releases`: signed releases (TUF targets) and re-signing the timestamp.

    GET  /api/releases[?model=]     viewer   each with the path its artifact downloads from
    POST /api/tuf/timestamp         admin    re-sign timestamp.json now
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from server.api.deps import AdminDep, RegistryDep, SettingsDep, ViewerDep
from server.registry.registry import ReleaseRecord
from server.trust.repository import TufRepository

__all__ = ["ReleasePublic", "release_public", "router"]

router = APIRouter(prefix="/api", tags=["registry"])


class ReleasePublic(BaseModel):
    id: int
    model: str
    version: int
    format: str
    target_path: str
    targets_version: int
    artifact_sha256: str
    size_bytes: int
    download_path: str  # relative to the server's public URL
    created_at: datetime


def release_public(record: ReleaseRecord) -> ReleasePublic:
    directory, _, name = record.target_path.rpartition("/")
    consistent = (
        f"{directory}/{record.artifact_sha256}.{name}"
        if directory
        else f"{record.artifact_sha256}.{name}"
    )
    return ReleasePublic(
        id=record.id,
        model=record.model,
        version=record.version,
        format=record.format,
        target_path=record.target_path,
        targets_version=record.targets_version,
        artifact_sha256=record.artifact_sha256,
        size_bytes=record.size_bytes,
        download_path=f"/tuf/targets/{consistent}",
        created_at=record.created_at,
    )


@router.get("/releases", response_model=list[ReleasePublic])
def list_releases(
    _user: ViewerDep, registry: RegistryDep, model: str | None = None
) -> list[ReleasePublic]:
    return [release_public(r) for r in registry.list_releases(model)]


@router.post("/tuf/timestamp")
def refresh_timestamp(_user: AdminDep, settings: SettingsDep) -> dict[str, int]:
    """Re-sign timestamp.json now (the server also does this on its own before expiry)."""
    return {"timestamp_version": TufRepository(settings.tuf_dir).refresh_timestamp()}
