"""Device transfers: how a release last reached each device (delta, compressed copy, full
artifact or cache) and how many bytes it took, from the `transfer` of its status, so a
rollout's summary shows the bytes sent against what full downloads would have cost.

Mirrors DeviceTransfer in server/db/tables.py.

Revision ID: 0009_device_transfers
Revises: 0008_release_withdrawal
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_device_transfers"
down_revision: str | None = "0008_release_withdrawal"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_transfers",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("how", sa.String(length=16), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("full_bytes", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "target"),
    )


def downgrade() -> None:
    op.drop_table("device_transfers")
