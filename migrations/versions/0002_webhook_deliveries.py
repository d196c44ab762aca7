"""webhook deliveries: which webhook (stable id) reached which URL (hash)

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("url_hash", sa.String(64), nullable=False),  # services/room/webhooks.py url_hash()
        sa.Column("webhook_id", sa.String(64), nullable=False),  # WebhookEvent.id, "EV_" + event id
        sa.Column("room", sa.Text(), nullable=True),
        sa.Column("event", sa.String(64), nullable=False),  # room_started, participant_joined, ...
        sa.Column("delivered_at", sa.BigInteger(), nullable=False),  # unix ms
        # one row per (URL, webhook): the unique key that makes a redelivery a no-op
        sa.PrimaryKeyConstraint("url_hash", "webhook_id", name="pk_webhook_deliveries"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
