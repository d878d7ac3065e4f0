"""Console sessions: the login cookie names a server-side session, not the API token.

Mirrors ConsoleSession in server/db/tables.py.

Revision ID: 0007_console_sessions
Revises: 0006_certificates
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_console_sessions"
down_revision: str | None = "0006_certificates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_sha256"),
    )
    op.create_index("ix_console_sessions_token_sha256", "console_sessions", ["token_sha256"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_token_sha256", table_name="console_sessions")
    op.drop_table("console_sessions")
