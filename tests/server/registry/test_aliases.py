"""Champion/challenger aliases on a migrated SQLite registry: set, move, read, delete."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edgeops.errors import ConfigError, NotFoundError
from server.db.tables import Artifact, Model, ModelAlias, ModelVersion
from server.registry.aliases import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    delete_alias,
    get_alias,
    list_aliases,
    set_alias,
)

pytestmark = pytest.mark.pipeline

SHA = "a" * 64


def add_model(session: Session, name: str, versions: dict[int, str]) -> None:
    """A model with one row per {version: format}, all on one shared artifact."""
    if session.get(Artifact, SHA) is None:
        session.add(Artifact(sha256=SHA, size_bytes=1))
    model = Model(name=name, task="edgeops.tasks.digits:digits")
    session.add(model)
    session.flush()
    for version, fmt in versions.items():
        session.add(ModelVersion(model_id=model.id, version=version, format=fmt,
                                 artifact_sha256=SHA, size_bytes=1))
    session.flush()


@pytest.fixture
def registry(session_factory: sessionmaker) -> sessionmaker:
    with session_factory.begin() as session:
        add_model(session, "digits", {1: "int8", 2: "int8", 3: "fp32"})
        add_model(session, "keywords", {1: "int8"})
    return session_factory


def test_the_aliases_are_champion_and_challenger() -> None:
    assert ALIASES == (CHAMPION, CHALLENGER) == ("champion", "challenger")


def test_set_then_get_and_list(registry: sessionmaker) -> None:
    with registry.begin() as session:
        set_alias(session, "digits", CHAMPION, 1, "alice")
        set_alias(session, "digits", CHALLENGER, 2, "pipeline")
        set_alias(session, "keywords", CHAMPION, 1, "alice")
    with registry() as session:
        assert get_alias(session, "digits", CHAMPION) == 1
        assert get_alias(session, "digits", CHALLENGER) == 2
        assert get_alias(session, "keywords", CHALLENGER) is None
        assert get_alias(session, "nobody", CHAMPION) is None
        assert list_aliases(session) == {"digits": {"champion": 1, "challenger": 2},
                                         "keywords": {"champion": 1}}
        assert list_aliases(session, "keywords") == {"keywords": {"champion": 1}}
        assert list_aliases(session, "nobody") == {}
        row = session.get(ModelAlias, (1, CHALLENGER))
        assert row is not None and row.updated_by == "pipeline"


def test_a_version_in_any_format_can_carry_an_alias(registry: sessionmaker) -> None:
    with registry.begin() as session:
        set_alias(session, "digits", CHAMPION, 3, "alice")  # only an fp32 row exists
        assert get_alias(session, "digits", CHAMPION) == 3


def test_moving_an_alias_updates_its_one_row(registry: sessionmaker) -> None:
    with registry.begin() as session:
        set_alias(session, "digits", CHAMPION, 1, "alice")
    with registry() as session:
        first = session.get(ModelAlias, (1, CHAMPION))
        assert first is not None
        first_at = first.updated_at
    with registry.begin() as session:
        set_alias(session, "digits", CHAMPION, 2, "pipeline")
    with registry() as session:
        rows = session.scalars(select(ModelAlias)).all()
        assert [(r.alias, r.version, r.updated_by) for r in rows] == [
            ("champion", 2, "pipeline")]
        assert rows[0].updated_at >= first_at
        assert get_alias(session, "digits", CHAMPION) == 2


def test_delete_removes_only_that_alias(registry: sessionmaker) -> None:
    with registry.begin() as session:
        set_alias(session, "digits", CHAMPION, 1, "alice")
        set_alias(session, "digits", CHALLENGER, 2, "alice")
        set_alias(session, "keywords", CHALLENGER, 1, "alice")
    with registry.begin() as session:
        delete_alias(session, "digits", CHALLENGER)
        delete_alias(session, "digits", CHALLENGER)  # already gone: nothing to do
        delete_alias(session, "nobody", CHAMPION)  # unknown model: nothing to do
    with registry() as session:
        assert list_aliases(session) == {"digits": {"champion": 1},
                                         "keywords": {"challenger": 1}}


def test_an_unknown_alias_is_a_config_error(registry: sessionmaker) -> None:
    with registry() as session, pytest.raises(ConfigError) as caught:
        set_alias(session, "digits", "production", 1, "alice")
    assert str(caught.value) == (
        "unknown alias 'production' (expected one of champion, challenger)")


def test_an_unknown_version_or_model_is_not_found(registry: sessionmaker) -> None:
    with registry() as session:
        with pytest.raises(NotFoundError, match="model 'digits' has no version 9"):
            set_alias(session, "digits", CHAMPION, 9, "alice")
        with pytest.raises(NotFoundError, match="model 'keywords' has no version 2"):
            set_alias(session, "keywords", CHAMPION, 2, "alice")  # digits has a 2
        with pytest.raises(NotFoundError, match="model 'nobody' is not in the registry"):
            set_alias(session, "nobody", CHAMPION, 1, "alice")
        assert session.scalar(select(func.count()).select_from(ModelAlias)) == 0
