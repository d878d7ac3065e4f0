"""Open the server database: run the Alembic migrations to head, return a session factory.

The schema is owned by the migrations in `server/db/migrations`; nothing calls
`Base.metadata.create_all`. Works for SQLite files and PostgreSQL URLs alike.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from edgeops.errors import ConfigError
from server.db.tables import make_engine, make_session_factory

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "close_database",
    "migrate_database",
    "open_database",
    "upgrade_database",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` on `engine` inside one transaction."""
    config = alembic_config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except (SQLAlchemyError, CommandError) as err:
        url, detail = _without_password(engine.url.render_as_string(hide_password=False),
                                        str(err))
        raise ConfigError(f"cannot migrate the database at {url}: {detail}") from err


def open_database(database_url: str) -> sessionmaker:
    """Migrate the database at `database_url` to the latest schema; return a session factory."""
    return make_session_factory(_open_migrated_engine(database_url))


def migrate_database(database_url: str) -> None:
    """Migrate the database at `database_url` to the latest schema and close it."""
    _open_migrated_engine(database_url).dispose()


def _open_migrated_engine(database_url: str) -> Engine:
    if not database_url:
        raise ConfigError("no database URL given")
    if database_url.startswith("sqlite:///") and not database_url.startswith("sqlite:///:memory:"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = make_engine(database_url)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        shown, detail = _without_password(database_url, str(err))
        # from None: the cause's own text quotes the URL, password included
        raise ConfigError(f"cannot open database URL {shown!r}: {detail}") from None
    upgrade_database(engine)
    logger.info("database ready at %s", engine.url.render_as_string(hide_password=True))
    return engine


def _without_password(database_url: str, text: str) -> tuple[str, str]:
    """`database_url` and `text` (an error that may quote the URL) with the password masked."""
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):  # unparsable: mask what sits between "user:" and "@"
        masked = re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", database_url)
        return masked, text.replace(database_url, masked)
    masked = url.render_as_string(hide_password=True)
    text = text.replace(database_url, masked)
    return masked, text.replace(url.password, "***") if url.password else text


def close_database(session_factory: sessionmaker) -> None:
    """Dispose of the engine behind a session factory made by `open_database`."""
    bind = session_factory.kw.get("bind")
    if isinstance(bind, Engine):
        bind.dispose()
