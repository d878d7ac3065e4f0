"""The model registry: models, their versions (one row per format) with lineage, releases.

A thin service over a SQLAlchemy session factory and an artifact store. Every public
method runs in its own transaction and returns frozen records, never ORM objects, so
callers cannot touch a session by accident.

A withdrawn release keeps its rows (lineage and device history still name it) but is marked
with when and why; `check_not_withdrawn` is what rollouts and deployments call before they
send it anywhere. `server.pipeline.withdrawal` removes its target from the signed targets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgeops.errors import ConfigError, NotFoundError, RegistryError
from edgeops.schemas import ModelFormat
from server.db.tables import (
    Artifact,
    Model,
    ModelVersion,
    Release,
    Rollout,
    TrainingRun,
    as_utc,
)
from server.registry.aliases import CHAMPION, get_alias
from server.registry.artifact_store import BlobStore

__all__ = [
    "FORMATS",
    "Lineage",
    "ModelRecord",
    "NewVersion",
    "Registry",
    "ReleaseRecord",
    "ReleaseWithdrawnError",
    "VersionRecord",
    "check_not_withdrawn",
]

logger = logging.getLogger(__name__)

FORMATS: tuple[ModelFormat, ...] = ("fp32", "int8")
MAX_LINEAGE_CHARS = 64  # data_fingerprint and code_version columns are String(64)


@dataclass(frozen=True)
class Lineage:
    """Where a model version comes from."""

    parent_version_id: int | None = None
    training_run_id: int | None = None
    data_fingerprint: str | None = None
    code_version: str | None = None


@dataclass(frozen=True)
class NewVersion:
    """One format of a model version to register; the file goes into the artifact store."""

    format: ModelFormat
    artifact_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    release_info: dict[str, Any] = field(default_factory=dict)
    lineage: Lineage = Lineage()


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    task: str
    created_at: datetime


@dataclass(frozen=True)
class VersionRecord:
    id: int
    model: str
    version: int
    format: str
    artifact_sha256: str
    size_bytes: int
    metrics: dict[str, Any]
    release_info: dict[str, Any]
    lineage: Lineage
    created_at: datetime


@dataclass(frozen=True)
class ReleaseRecord:
    id: int
    model: str
    version: int
    format: str
    target_path: str
    targets_version: int
    artifact_sha256: str
    size_bytes: int
    model_version_id: int
    created_at: datetime
    withdrawn_at: datetime | None = None
    withdrawn_reason: str | None = None


class ReleaseWithdrawnError(RegistryError):
    """The release was withdrawn: it is not in the signed targets and is never sent again."""


def check_not_withdrawn(session: Session, target_path: str) -> None:
    """NotFoundError if no release has `target_path`, ReleaseWithdrawnError if it was
    withdrawn: the check before a rollout or deployment sends the target to devices."""
    release = session.scalar(select(Release).where(Release.target_path == target_path))
    if release is None:
        raise NotFoundError(f"no release has target path {target_path!r}")
    if release.withdrawn_at is not None:
        raise ReleaseWithdrawnError(
            f"release {target_path} was withdrawn on {as_utc(release.withdrawn_at).isoformat()}"
            f" ({release.withdrawn_reason or 'no reason given'}); publish a new version instead"
        )


def _model_record(row: Model) -> ModelRecord:
    return ModelRecord(id=row.id, name=row.name, task=row.task, created_at=as_utc(row.created_at))


def _version_record(row: ModelVersion, model_name: str) -> VersionRecord:
    return VersionRecord(
        id=row.id,
        model=model_name,
        version=row.version,
        format=row.format,
        artifact_sha256=row.artifact_sha256,
        size_bytes=row.size_bytes,
        metrics=dict(row.metrics or {}),
        release_info=dict(row.release_info or {}),
        lineage=Lineage(
            parent_version_id=row.parent_version_id,
            training_run_id=row.training_run_id,
            data_fingerprint=row.data_fingerprint,
            code_version=row.code_version,
        ),
        created_at=as_utc(row.created_at),
    )


def _release_record(release: Release, version: ModelVersion, model_name: str) -> ReleaseRecord:
    return ReleaseRecord(
        id=release.id,
        model=model_name,
        version=version.version,
        format=version.format,
        target_path=release.target_path,
        targets_version=release.targets_version,
        artifact_sha256=version.artifact_sha256,
        size_bytes=version.size_bytes,
        model_version_id=version.id,
        created_at=as_utc(release.created_at),
        withdrawn_at=as_utc(release.withdrawn_at) if release.withdrawn_at else None,
        withdrawn_reason=release.withdrawn_reason,
    )


def _check_lineage(lineage: Lineage) -> None:
    for name in ("data_fingerprint", "code_version"):
        value = getattr(lineage, name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_LINEAGE_CHARS):
            raise ConfigError(
                f"lineage.{name} must be a string of at most {MAX_LINEAGE_CHARS} characters"
            )


class Registry:
    """Models, versions and releases over a session factory and an artifact store."""

    def __init__(self, session_factory: sessionmaker, artifact_store: BlobStore) -> None:
        self._session_factory = session_factory
        self._store = artifact_store

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        try:
            with self._session_factory.begin() as session:
                yield session
        except IntegrityError as err:
            raise RegistryError(f"the registry refused the change: {err.orig}") from err
        except SQLAlchemyError as err:
            raise RegistryError(f"registry database error: {err}") from err

    # ---- models -------------------------------------------------------------------------

    def create_model(self, name: str, task: str) -> ModelRecord:
        """Create a model; RegistryError if the name is taken."""
        with self._transaction() as session:
            if session.scalar(select(Model).where(Model.name == name)) is not None:
                raise RegistryError(f"model {name!r} already exists")
            row = Model(name=name, task=task)
            session.add(row)
            session.flush()
            logger.info("created model %s (task %s)", name, task)
            return _model_record(row)

    def ensure_model(self, name: str, task: str) -> ModelRecord:
        """Get the model `name`, creating it if needed; RegistryError if its task differs."""
        with self._transaction() as session:
            row = self._get_or_create_model(session, name, task)
            return _model_record(row)

    def get_model(self, name: str) -> ModelRecord:
        with self._transaction() as session:
            return _model_record(self._model_row(session, name))

    def list_models(self) -> list[ModelRecord]:
        with self._transaction() as session:
            rows = session.scalars(select(Model).order_by(Model.name)).all()
            return [_model_record(row) for row in rows]

    # ---- versions -----------------------------------------------------------------------

    def next_version(self, model_name: str) -> int:
        """The next free version number of `model_name` (1 for a model not yet registered)."""
        with self._transaction() as session:
            model = session.scalar(select(Model).where(Model.name == model_name))
            if model is None:
                return 1
            latest = session.scalar(
                select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
            )
            return (latest or 0) + 1

    def register_version(
        self,
        model_name: str,
        version: int,
        fmt: ModelFormat,
        artifact_path: Path,
        *,
        metrics: dict[str, Any] | None = None,
        release_info: dict[str, Any] | None = None,
        lineage: Lineage = Lineage(),
    ) -> VersionRecord:
        """Store `artifact_path` and record it as `model_name` `version` in format `fmt`."""
        new = NewVersion(
            fmt, Path(artifact_path), dict(metrics or {}), dict(release_info or {}), lineage
        )
        return self.register_versions(model_name, None, version, [new])[0]

    def register_versions(
        self,
        model_name: str,
        task: str | None,
        version: int,
        items: Sequence[NewVersion],
        *,
        release: tuple[ModelFormat, str, int] | None = None,
    ) -> list[VersionRecord]:
        """Register several formats of one version, and optionally its release, atomically.

        `task` given: the model is created if missing. `release` is (format, target path,
        targets metadata version): a Release row for that format is added in the same
        transaction. Artifacts are stored first (content-addressed, so harmless if the
        transaction then fails).
        """
        if version < 1:
            raise ConfigError(f"version must be >= 1, got {version}")
        formats = [item.format for item in items]
        for fmt in formats:
            if fmt not in FORMATS:
                raise ConfigError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
        if len(set(formats)) != len(formats):
            raise ConfigError(f"a format appears twice: {formats}")
        if release is not None and release[0] not in formats:
            raise ConfigError(f"the release format {release[0]!r} is not among {formats}")
        for item in items:
            _check_lineage(item.lineage)
        stored = [self._store.put_file(item.artifact_path) for item in items]

        with self._transaction() as session:
            if task is None:
                model = self._model_row(session, model_name)
            else:
                model = self._get_or_create_model(session, model_name, task)
            records: list[VersionRecord] = []
            rows: dict[str, ModelVersion] = {}
            for item, (sha256, size) in zip(items, stored, strict=True):
                self._check_free(session, model, version, item.format)
                self._check_lineage_refs(session, item.lineage)
                if session.get(Artifact, sha256) is None:
                    session.add(Artifact(sha256=sha256, size_bytes=size))
                    session.flush()
                row = ModelVersion(
                    model_id=model.id,
                    version=version,
                    format=item.format,
                    artifact_sha256=sha256,
                    size_bytes=size,
                    metrics=item.metrics,
                    release_info=item.release_info,
                    parent_version_id=item.lineage.parent_version_id,
                    training_run_id=item.lineage.training_run_id,
                    data_fingerprint=item.lineage.data_fingerprint,
                    code_version=item.lineage.code_version,
                )
                session.add(row)
                session.flush()
                rows[item.format] = row
                records.append(_version_record(row, model.name))
            if release is not None:
                fmt, target_path, targets_version = release
                if session.scalar(select(Release).where(Release.target_path == target_path)):
                    raise RegistryError(f"target {target_path!r} is already released")
                session.add(
                    Release(
                        model_version_id=rows[fmt].id,
                        target_path=target_path,
                        targets_version=targets_version,
                    )
                )
                session.flush()
            logger.info("registered %s version %d (%s)", model_name, version, ", ".join(formats))
            return records

    def delete_version(self, model_name: str, version: int) -> None:
        """Remove every format of one version and its release (undo of a failed publish)."""
        with self._transaction() as session:
            model = self._model_row(session, model_name)
            ids = session.scalars(
                select(ModelVersion.id).where(
                    ModelVersion.model_id == model.id, ModelVersion.version == version
                )
            ).all()
            if not ids:
                return
            session.execute(delete(Release).where(Release.model_version_id.in_(ids)))
            session.execute(delete(ModelVersion).where(ModelVersion.id.in_(ids)))
            logger.warning("deleted %s version %d from the registry", model_name, version)

    def get_version(self, model_name: str, version: int, fmt: ModelFormat) -> VersionRecord:
        with self._transaction() as session:
            model = self._model_row(session, model_name)
            row = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_id == model.id,
                    ModelVersion.version == version,
                    ModelVersion.format == fmt,
                )
            )
            if row is None:
                raise NotFoundError(
                    f"model {model_name!r} has no version {version} in format {fmt}"
                )
            return _version_record(row, model.name)

    def list_versions(self, model_name: str) -> list[VersionRecord]:
        with self._transaction() as session:
            model = self._model_row(session, model_name)
            rows = session.scalars(
                select(ModelVersion)
                .where(ModelVersion.model_id == model.id)
                .order_by(ModelVersion.version, ModelVersion.format)
            ).all()
            return [_version_record(row, model.name) for row in rows]

    # ---- releases -----------------------------------------------------------------------

    def list_releases(self, model_name: str | None = None) -> list[ReleaseRecord]:
        with self._transaction() as session:
            query = (
                select(Release, ModelVersion, Model)
                .join(ModelVersion, Release.model_version_id == ModelVersion.id)
                .join(Model, ModelVersion.model_id == Model.id)
                .order_by(Release.id)
            )
            if model_name is not None:
                query = query.where(Model.name == model_name)
            return [_release_record(r, v, m.name) for r, v, m in session.execute(query).all()]

    def get_release(self, model_name: str, version: int) -> ReleaseRecord:
        """The release of `model_name` `version`; NotFoundError if that version has none."""
        for release in self.list_releases(model_name):
            if release.version == version:
                return release
        raise NotFoundError(f"model {model_name!r} has no release of version {version}")

    def find_release(self, target_path: str) -> ReleaseRecord:
        """The release with `target_path`; NotFoundError if there is none."""
        for release in self.list_releases():
            if release.target_path == target_path:
                return release
        raise NotFoundError(f"no release has target path {target_path!r}")

    def mark_withdrawn(
        self, target_path: str, reason: str, *, force: bool = False, now: datetime | None = None
    ) -> ReleaseRecord:
        """Mark the release withdrawn so no rollout or deployment sends it again.

        Refuses (RegistryError, naming the way out) a release that is its model's champion
        or the target of an active rollout, unless `force`: withdrawing what the fleet is
        told to run is a decision, not a side effect. A release withdrawn before is
        returned as it is (the signed targets may still need the removal: the caller
        finishes it)."""
        with self._transaction() as session:
            row = session.scalar(select(Release).where(Release.target_path == target_path))
            if row is None:
                raise NotFoundError(f"no release has target path {target_path!r}")
            version = session.get(ModelVersion, row.model_version_id)
            assert version is not None  # a foreign key
            model = session.get(Model, version.model_id)
            assert model is not None
            if row.withdrawn_at is None:
                if not force:
                    self._check_withdrawable(session, row, model.name, version.version)
                row.withdrawn_at = now or datetime.now(UTC)
                row.withdrawn_reason = reason
                session.flush()
                logger.warning("withdrew release %s: %s", target_path, reason)
            return _release_record(row, version, model.name)

    @staticmethod
    def _check_withdrawable(session: Session, row: Release, model: str, version: int) -> None:
        active = session.scalars(
            select(Rollout.id).where(
                Rollout.target == row.target_path, Rollout.active_scope.is_not(None)
            )
        ).all()
        if active:
            ids = ", ".join(str(i) for i in active)
            raise RegistryError(
                f"release {row.target_path} is the target of active rollout {ids}: abort it "
                f"first ('edgeops rollout abort {active[0]}'), or pass --force to withdraw it "
                "anyway (devices not yet updated then fail verification)"
            )
        if get_alias(session, model, CHAMPION) == version:
            raise RegistryError(
                f"release {row.target_path} is the champion of {model} (v{version}): promote "
                "or roll back to another version first, or pass --force to withdraw it anyway"
            )

    # ---- helpers ------------------------------------------------------------------------

    @staticmethod
    def _model_row(session: Session, name: str) -> Model:
        row = session.scalar(select(Model).where(Model.name == name))
        if row is None:
            raise NotFoundError(f"model {name!r} is not in the registry")
        return row

    @staticmethod
    def _get_or_create_model(session: Session, name: str, task: str) -> Model:
        row = session.scalar(select(Model).where(Model.name == name))
        if row is None:
            row = Model(name=name, task=task)
            session.add(row)
            session.flush()
            logger.info("created model %s (task %s)", name, task)
        elif row.task != task:
            raise RegistryError(f"model {name!r} belongs to task {row.task!r}, not {task!r}")
        return row

    @staticmethod
    def _check_free(session: Session, model: Model, version: int, fmt: str) -> None:
        taken = session.scalar(
            select(ModelVersion.id).where(
                ModelVersion.model_id == model.id,
                ModelVersion.version == version,
                ModelVersion.format == fmt,
            )
        )
        if taken is not None:
            raise RegistryError(
                f"model {model.name!r} already has version {version} in format {fmt}; "
                f"versions are immutable, publish a new one"
            )

    @staticmethod
    def _check_lineage_refs(session: Session, lineage: Lineage) -> None:
        if (
            lineage.parent_version_id is not None
            and session.get(ModelVersion, lineage.parent_version_id) is None
        ):
            raise NotFoundError(
                f"lineage parent version id {lineage.parent_version_id} does not exist"
            )
        if (
            lineage.training_run_id is not None
            and session.get(TrainingRun, lineage.training_run_id) is None
        ):
            raise NotFoundError(f"lineage training run {lineage.training_run_id} does not exist")
