"""The server database: SQLAlchemy tables, the engine, Alembic migrations.

    tables        the ORM classes (schema owned by the migrations), utcnow, as_utc
    engine        open_database / migrate_database: migrate to head, return a session factory
    migrations/   Alembic revisions
"""
