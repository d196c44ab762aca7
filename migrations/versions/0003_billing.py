"""billing: applied usage-sample ids and per-minute usage rollups

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # One row per applied usage sample (its envelope id): the SQL half of "counted exactly once".
    op.create_table(
        "billing_samples",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("minute_ms", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", sa.BigInteger(), nullable=False),  # unix ms
        sa.PrimaryKeyConstraint("id", name="pk_billing_samples"),
    )
    op.create_index("ix_billing_samples_minute", "billing_samples", ["minute_ms"])

    op.create_table(
        "usage_rollups",
        sa.Column("id", SEQ_TYPE, primary_key=True, autoincrement=True),
        sa.Column("minute_ms", sa.BigInteger(), nullable=False),  # bucket start, unix ms
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("room", sa.Text(), nullable=False),
        sa.Column("room_sid", sa.String(64), nullable=False),
        sa.Column("participant_sid", sa.String(64), nullable=False),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("packets", sa.BigInteger(), nullable=False),
        sa.Column("connection_ms", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),  # +1 per transaction that changed it
        sa.Column("published_revision", sa.Integer(), nullable=False),  # last revision published
        sa.Column("dirty", sa.Boolean(), nullable=False),  # revision > published_revision
        sa.Column("updated_at", sa.BigInteger(), nullable=False),  # unix ms
        sa.PrimaryKeyConstraint("id", name="pk_usage_rollups"),
        sa.UniqueConstraint("minute_ms", "project", "room", "room_sid", "participant_sid", "direction",
                            name="uq_usage_rollups_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_usage_rollups_project_room_minute", "usage_rollups", ["project", "room", "minute_ms"])
    op.create_index("ix_usage_rollups_minute", "usage_rollups", ["minute_ms"])
    op.create_index("ix_usage_rollups_dirty_minute", "usage_rollups", ["dirty", "minute_ms"])


def downgrade() -> None:
    op.drop_index("ix_usage_rollups_dirty_minute", table_name="usage_rollups")
    op.drop_index("ix_usage_rollups_minute", table_name="usage_rollups")
    op.drop_index("ix_usage_rollups_project_room_minute", table_name="usage_rollups")
    op.drop_table("usage_rollups")
    op.drop_index("ix_billing_samples_minute", table_name="billing_samples")
    op.drop_table("billing_samples")
