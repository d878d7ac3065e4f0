"""Governance: the hash-chained audit log and its signed anchors, token owners.

Mirrors AuditEntry, AuditAnchor and ApiToken in server/db/tables.py.

Revision ID: 0005_governance
Revises: 0004_pipeline
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_governance"
down_revision: str | None = "0004_pipeline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("action", existing_type=sa.String(length=16),
                           type_=sa.String(length=64), existing_nullable=False)
        batch.alter_column("status_code", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("target", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("entry_hash", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_audit_log_entry_hash", ["entry_hash"])
    op.create_table(
        "audit_anchors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False,
                                   server_default="person"))
        batch.add_column(sa.Column("owner", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("owner")
        batch.drop_column("kind")
    op.drop_table("audit_anchors")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_log_entry_hash", type_="unique")
        batch.drop_column("entry_hash")
        batch.drop_column("prev_hash")
        batch.drop_column("reason")
        batch.drop_column("target")
        batch.alter_column("status_code", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("action", existing_type=sa.String(length=64),
                           type_=sa.String(length=16), existing_nullable=False)
