"""`/api/models` and `/api/releases`: the registry as JSON, and admin-only changes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from server.api.deps import AdminDep, RegistryDep, SettingsDep
from server.registry.registry import Registry, ReleaseRecord
from server.trust.repository import TufRepository

__all__ = ["ModelCreate", "ModelPublic", "ReleasePublic", "VersionPublic", "router"]

router = APIRouter(prefix="/api", tags=["registry"])
MODEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class VersionPublic(BaseModel):
    id: int
    version: int
    format: str
    artifact_sha256: str
    size_bytes: int
    metrics: dict[str, Any]
    parent_version_id: int | None
    training_run_id: int | None
    data_fingerprint: str | None
    code_version: str | None
    created_at: datetime


class ModelPublic(BaseModel):
    name: str
    task: str
    created_at: datetime
    versions: list[VersionPublic] = []


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME)
    task: str = Field(min_length=1, max_length=200)


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


def _versions(registry: Registry, model_name: str) -> list[VersionPublic]:
    return [
        VersionPublic(
            id=v.id,
            version=v.version,
            format=v.format,
            artifact_sha256=v.artifact_sha256,
            size_bytes=v.size_bytes,
            metrics=v.metrics,
            parent_version_id=v.lineage.parent_version_id,
            training_run_id=v.lineage.training_run_id,
            data_fingerprint=v.lineage.data_fingerprint,
            code_version=v.lineage.code_version,
            created_at=v.created_at,
        )
        for v in registry.list_versions(model_name)
    ]


@router.get("/models", response_model=list[ModelPublic])
def list_models(registry: RegistryDep) -> list[ModelPublic]:
    result = []
    for model in registry.list_models():
        versions = _versions(registry, model.name)
        result.append(
            ModelPublic(
                name=model.name, task=model.task, created_at=model.created_at, versions=versions
            )
        )
    return result


@router.get("/models/{name}/versions", response_model=list[VersionPublic])
def list_model_versions(
    name: Annotated[str, Path(pattern=MODEL_NAME)], registry: RegistryDep
) -> list[VersionPublic]:
    """Every version of one model, in both formats, with metrics and lineage."""
    return _versions(registry, name)


@router.post("/models", response_model=ModelPublic, status_code=201, dependencies=[AdminDep])
def create_model(body: ModelCreate, registry: RegistryDep) -> ModelPublic:
    model = registry.create_model(body.name, body.task)
    return ModelPublic(name=model.name, task=model.task, created_at=model.created_at)


@router.get("/releases", response_model=list[ReleasePublic])
def list_releases(registry: RegistryDep, model: str | None = None) -> list[ReleasePublic]:
    return [release_public(r) for r in registry.list_releases(model)]


@router.post("/tuf/timestamp", dependencies=[AdminDep])
def refresh_timestamp(settings: SettingsDep) -> dict[str, int]:
    """Re-sign timestamp.json now (the server also does this on its own before expiry)."""
    return {"timestamp_version": TufRepository(settings.tuf_dir).refresh_timestamp()}
