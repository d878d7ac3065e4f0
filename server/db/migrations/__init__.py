"""Alembic migrations of the server database (run by server.db.engine.open_database)."""
