"""event store: append-only events table and consumer offsets

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT everywhere except SQLite, where only INTEGER PRIMARY KEY autoincrements (rowid alias).
# seq is the order readers page on (`after_seq`); it is never reused.
SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", SEQ_TYPE, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),  # event time, unix ms
        sa.Column("dc", sa.String(32), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("room", sa.Text(), nullable=True),
        sa.Column("v", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),  # JSON
        sa.Column("stored_at", sa.BigInteger(), nullable=False),  # unix ms
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("id", name="uq_events_id"),
        sqlite_autoincrement=True,  # never reuse a seq, even if the last row were deleted
    )
    op.create_index("ix_events_room_seq", "events", ["room", "seq"])
    op.create_index("ix_events_type", "events", ["type"])

    op.create_table(
        "consumer_offsets",
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),  # unix ms
        sa.PrimaryKeyConstraint("consumer", name="pk_consumer_offsets"),
    )


def downgrade() -> None:
    op.drop_table("consumer_offsets")
    op.drop_index("ix_events_type", table_name="events")
    op.drop_index("ix_events_room_seq", table_name="events")
    op.drop_table("events")
