"""`/api/models`: registered models and their versions with metrics and lineage.

    GET  /api/models                     viewer   every model with its versions
    GET  /api/models/{name}/versions     viewer
    POST /api/models {name, task}        admin    201; a duplicate name is 409 (RegistryError)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from server.api.deps import AdminDep, RegistryDep, ViewerDep
from server.registry.registry import Registry

__all__ = ["MODEL_NAME", "ModelCreate", "ModelPublic", "VersionPublic", "router"]

router = APIRouter(prefix="/api/models", tags=["registry"])
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


@router.get("", response_model=list[ModelPublic])
def list_models(_user: ViewerDep, registry: RegistryDep) -> list[ModelPublic]:
    return [
        ModelPublic(name=model.name, task=model.task, created_at=model.created_at,
                    versions=_versions(registry, model.name))
        for model in registry.list_models()
    ]


@router.get("/{name}/versions", response_model=list[VersionPublic])
def list_model_versions(
    name: Annotated[str, Path(pattern=MODEL_NAME)], _user: ViewerDep, registry: RegistryDep
) -> list[VersionPublic]:
    """Every version of one model, in both formats, with metrics and lineage."""
    return _versions(registry, name)


@router.post("", response_model=ModelPublic, status_code=201)
def create_model(body: ModelCreate, _user: AdminDep, registry: RegistryDep) -> ModelPublic:
    model = registry.create_model(body.name, body.task)
    return ModelPublic(name=model.name, task=model.task, created_at=model.created_at)
