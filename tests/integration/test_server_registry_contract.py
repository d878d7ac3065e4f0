"""One registry contract suite, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError, NotFoundError, RegistryError
from server.db.engine import close_database, open_database
from server.db.tables import Base, TrainingRun
from server.registry.artifact_store import ArtifactStore
from server.registry.registry import Lineage, NewVersion, Registry
from tests.server.helpers import postgres_available, postgres_schema_url

pytestmark = [pytest.mark.pipeline, pytest.mark.integration]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_schema_url() as url:
        yield url


@pytest.fixture
def session_factory(database_url: str) -> Iterator[sessionmaker]:
    factory = open_database(database_url)
    yield factory
    close_database(factory)


@pytest.fixture
def registry(session_factory: sessionmaker, tmp_path: Path) -> Registry:
    return Registry(session_factory, ArtifactStore(tmp_path / "artifacts"))


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"model bytes")
    return path


def test_migrations_create_exactly_the_orm_schema(
    session_factory: sessionmaker, database_url: str
) -> None:
    engine = session_factory.kw["bind"]
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    assert diff == []
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    # Opening again is a no-op upgrade.
    close_database(open_database(database_url))


def test_models_are_created_listed_and_unique(registry: Registry) -> None:
    created = registry.create_model("digits", "edgeops.tasks.digits:digits")

    assert registry.get_model("digits") == created
    assert [m.name for m in registry.list_models()] == ["digits"]
    with pytest.raises(RegistryError, match="already exists"):
        registry.create_model("digits", "other")
    assert registry.ensure_model("digits", "edgeops.tasks.digits:digits") == created
    with pytest.raises(RegistryError, match="belongs to task"):
        registry.ensure_model("digits", "other")
    with pytest.raises(NotFoundError):
        registry.get_model("nope")


def test_register_version_stores_artifact_metrics_and_lineage(
    registry: Registry, artifact: Path, session_factory: sessionmaker
) -> None:
    registry.create_model("digits", "t")
    assert registry.next_version("digits") == 1
    with session_factory.begin() as session:
        run = TrainingRun(task="t", kind="federated")
        session.add(run)
        session.flush()
        run_id = run.id

    first = registry.register_version(
        "digits",
        1,
        "fp32",
        artifact,
        metrics={"accuracy": 0.9},
        release_info={"k": [1, 2]},
        lineage=Lineage(training_run_id=run_id, data_fingerprint="f" * 64, code_version="abc"),
    )
    second = registry.register_version(
        "digits", 2, "fp32", artifact, lineage=Lineage(parent_version_id=first.id)
    )

    assert registry.next_version("digits") == 3
    assert registry.get_version("digits", 1, "fp32") == first
    assert first.metrics == {"accuracy": 0.9} and first.release_info == {"k": [1, 2]}
    assert first.lineage == Lineage(None, run_id, "f" * 64, "abc")
    assert second.lineage.parent_version_id == first.id
    assert first.artifact_sha256 == second.artifact_sha256 and first.size_bytes == len(
        b"model bytes"
    )
    assert [(v.version, v.format) for v in registry.list_versions("digits")] == [
        (1, "fp32"),
        (2, "fp32"),
    ]


def test_duplicate_version_and_format_is_refused(registry: Registry, artifact: Path) -> None:
    registry.create_model("digits", "t")
    registry.register_version("digits", 1, "int8", artifact)
    registry.register_version("digits", 1, "fp32", artifact)  # another format is fine

    with pytest.raises(RegistryError, match="already has version 1 in format int8"):
        registry.register_version("digits", 1, "int8", artifact)


def test_unknown_things_are_not_found(registry: Registry, artifact: Path) -> None:
    with pytest.raises(NotFoundError):
        registry.register_version("ghost", 1, "int8", artifact)
    registry.create_model("digits", "t")
    with pytest.raises(NotFoundError):
        registry.get_version("digits", 1, "int8")
    with pytest.raises(NotFoundError, match="training run 999"):
        registry.register_version(
            "digits", 1, "int8", artifact, lineage=Lineage(training_run_id=999)
        )
    with pytest.raises(NotFoundError, match="parent version id 999"):
        registry.register_version(
            "digits", 1, "int8", artifact, lineage=Lineage(parent_version_id=999)
        )
    assert registry.next_version("ghost") == 1


def test_bad_arguments_are_config_errors(registry: Registry, artifact: Path) -> None:
    registry.create_model("digits", "t")
    with pytest.raises(ConfigError, match="format"):
        registry.register_version("digits", 1, "fp16", artifact)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="version must be"):
        registry.register_version("digits", 0, "int8", artifact)
    with pytest.raises(ConfigError, match="code_version"):
        registry.register_version(
            "digits", 1, "int8", artifact, lineage=Lineage(code_version="x" * 65)
        )


def test_versions_and_release_are_atomic(registry: Registry, artifact: Path) -> None:
    items = [NewVersion("fp32", artifact), NewVersion("int8", artifact)]
    records = registry.register_versions(
        "digits", "t", 1, items, release=("int8", "digits/1/model.int8.onnx", 2)
    )

    [release] = registry.list_releases()
    assert (release.model, release.version, release.format, release.targets_version) == (
        "digits",
        1,
        "int8",
        2,
    )
    assert release.model_version_id == records[1].id
    # The same target again fails as a whole: no version 2 rows remain.
    with pytest.raises(RegistryError, match="already released"):
        registry.register_versions(
            "digits", "t", 2, items, release=("int8", "digits/1/model.int8.onnx", 3)
        )
    assert registry.next_version("digits") == 2
    registry.delete_version("digits", 1)
    assert registry.list_releases() == [] and registry.list_versions("digits") == []
