"""Issued device certificates: what the fleet CA signed, for whom, and what was revoked.

Mirrors IssuedCertificate in server/db/tables.py.

Revision ID: 0006_certificates
Revises: 0005_governance
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_certificates"
down_revision: str | None = "0005_governance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issued_certificates",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renewed_from", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_index("ix_issued_certificates_device_id", "issued_certificates", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_issued_certificates_device_id", table_name="issued_certificates")
    op.drop_table("issued_certificates")
