"""Withdrawn releases: `edgeops release withdraw` removes a target from the signed targets
and records when and why here, so the release is never rolled out again.

Mirrors Release.withdrawn_at and Release.withdrawn_reason in server/db/tables.py.

Revision ID: 0008_release_withdrawal
Revises: 0007_console_sessions
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_release_withdrawal"
down_revision: str | None = "0007_console_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("withdrawn_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("withdrawn_reason")
        batch.drop_column("withdrawn_at")
