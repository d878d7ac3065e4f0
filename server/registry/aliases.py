"""Model aliases: `champion` is the version the fleet should run, `challenger` the candidate a
pipeline run is canarying. Aliases replace stages (MLflow's move from stages to aliases): one
name points at one version, and moving it is one row update inside the caller's transaction,
so a promotion and the pipeline run's verdict commit together.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from edgeops.errors import ConfigError, NotFoundError
from server.db.tables import Model, ModelAlias, ModelVersion

__all__ = ["ALIASES", "CHALLENGER", "CHAMPION", "delete_alias", "get_alias", "list_aliases",
           "set_alias"]

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)


def _model(session: Session, name: str) -> Model:
    row = session.scalar(select(Model).where(Model.name == name))
    if row is None:
        raise NotFoundError(f"model {name!r} is not in the registry")
    return row


def set_alias(session: Session, model: str, alias: str, version: int, actor: str) -> None:
    """Point `alias` of `model` at `version`; ConfigError for an unknown alias,
    NotFoundError if the version does not exist."""
    if alias not in ALIASES:
        raise ConfigError(f"unknown alias {alias!r} (expected one of {', '.join(ALIASES)})")
    row = _model(session, model)
    if session.scalar(
        select(ModelVersion.id).where(ModelVersion.model_id == row.id,
                                      ModelVersion.version == version).limit(1)
    ) is None:
        raise NotFoundError(f"model {model!r} has no version {version}")
    existing = session.get(ModelAlias, (row.id, alias))
    now = datetime.now(UTC)
    if existing is None:
        session.add(ModelAlias(model_id=row.id, alias=alias, version=version,
                               updated_by=actor, updated_at=now))
    else:
        existing.version, existing.updated_by, existing.updated_at = version, actor, now
    session.flush()


def get_alias(session: Session, model: str, alias: str) -> int | None:
    """The version `alias` points at, or None (also for an unknown model)."""
    return session.scalar(
        select(ModelAlias.version).join(Model, Model.id == ModelAlias.model_id)
        .where(Model.name == model, ModelAlias.alias == alias)
    )


def delete_alias(session: Session, model: str, alias: str) -> None:
    row = session.scalar(select(Model).where(Model.name == model))
    if row is not None:
        session.execute(delete(ModelAlias).where(ModelAlias.model_id == row.id,
                                                 ModelAlias.alias == alias))


def list_aliases(session: Session, model: str | None = None) -> dict[str, dict[str, int]]:
    """{model: {alias: version}}."""
    query = select(Model.name, ModelAlias.alias, ModelAlias.version).join(
        Model, Model.id == ModelAlias.model_id)
    if model is not None:
        query = query.where(Model.name == model)
    out: dict[str, dict[str, int]] = {}
    for name, alias, version in session.execute(query):
        out.setdefault(name, {})[alias] = version
    return out
