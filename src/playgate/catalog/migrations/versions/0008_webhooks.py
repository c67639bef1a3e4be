"""the webhook outbox and its delivery log

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 03:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create webhook_events (the outbox) and webhook_deliveries (one row per event and endpoint)."""
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("msg_id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_webhook_events_msg_id")),
    )
    op.create_index(op.f("ix_webhook_events_at"), "webhook_events", ["at"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("msg_id", sa.String(length=100), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_attempt_at", sa.Float(), nullable=True),
        sa.Column("last_attempt_at", sa.Float(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("msg_id", "endpoint", name="uq_webhook_deliveries_msg_id_endpoint"),
    )
    op.create_index(
        "ix_webhook_deliveries_status_endpoint_user_id_at",
        "webhook_deliveries",
        ["status", "endpoint", "user_id", "at", "id"],
        unique=False,
    )


def downgrade() -> None:
    """Drop the webhook tables."""
    op.drop_index("ix_webhook_deliveries_status_endpoint_user_id_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_webhook_events_at"), table_name="webhook_events")
    op.drop_table("webhook_events")
