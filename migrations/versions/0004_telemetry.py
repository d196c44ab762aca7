"""telemetry: track analytics samples (telemetry.track / telemetry.subscription events), kept
for a retention period

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per telemetry event (its envelope id: a redelivery inserts nothing). The indexed
    # columns serve the per-room query and the retention delete; the payload is kept whole.
    op.create_table(
        "telemetry_samples",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),  # unix ms of the sample
        sa.Column("kind", sa.String(16), nullable=False),  # "track" | "subscription"
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("room", sa.Text(), nullable=False),
        sa.Column("room_sid", sa.String(64), nullable=False),
        sa.Column("track_sid", sa.String(64), nullable=False),
        sa.Column("participant_sid", sa.String(64), nullable=False),  # publisher (track) or subscriber
        sa.Column("payload", sa.Text(), nullable=False),  # the event payload as JSON
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_samples"),
    )
    op.create_index("ix_telemetry_samples_room_ts", "telemetry_samples", ["project", "room", "ts_ms"])
    op.create_index("ix_telemetry_samples_ts", "telemetry_samples", ["ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_telemetry_samples_ts", table_name="telemetry_samples")
    op.drop_index("ix_telemetry_samples_room_ts", table_name="telemetry_samples")
    op.drop_table("telemetry_samples")
