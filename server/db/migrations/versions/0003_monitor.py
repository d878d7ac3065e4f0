"""Fleet monitor: window scores, events, cohort confirmation state, the single-monitor lease.

Mirrors the classes after `RolloutDevice` in server/db/tables.py.

Revision ID: 0003_monitor
Revises: 0002_rollouts
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_monitor"
down_revision: str | None = "0002_rollouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monitor_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cohort", sa.String(length=400), nullable=False),
        sa.Column("release", sa.String(length=300), nullable=False),
        sa.Column("group_name", sa.String(length=64), nullable=True),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("drifted_share", sa.Float(), nullable=False),
        sa.Column("max_psi", sa.Float(), nullable=True),
        sa.Column("prior_shift", sa.Float(), nullable=True),
        sa.Column("estimated_accuracy", sa.Float(), nullable=True),
        sa.Column("naive_accuracy", sa.Float(), nullable=True),
        sa.Column("realised_accuracy", sa.Float(), nullable=True),
        sa.Column("feedback_count", sa.Integer(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cohort", "window_start"),
    )
    op.create_index(op.f("ix_monitor_windows_cohort"), "monitor_windows", ["cohort"])
    op.create_index(op.f("ix_monitor_windows_window_start"), "monitor_windows", ["window_start"])
    op.create_table(
        "monitor_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("cohort", sa.String(length=400), nullable=False),
        sa.Column("release", sa.String(length=300), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_monitor_events_kind"), "monitor_events", ["kind"])
    op.create_index(op.f("ix_monitor_events_cohort"), "monitor_events", ["cohort"])
    op.create_table(
        "monitor_cohort_state",
        sa.Column("cohort", sa.String(length=400), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cohort"),
    )
    op.create_table(
        "monitor_lease",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("watermark", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("monitor_lease")
    op.drop_table("monitor_cohort_state")
    op.drop_index(op.f("ix_monitor_events_cohort"), table_name="monitor_events")
    op.drop_index(op.f("ix_monitor_events_kind"), table_name="monitor_events")
    op.drop_table("monitor_events")
    op.drop_index(op.f("ix_monitor_windows_window_start"), table_name="monitor_windows")
    op.drop_index(op.f("ix_monitor_windows_cohort"), table_name="monitor_windows")
    op.drop_table("monitor_windows")
