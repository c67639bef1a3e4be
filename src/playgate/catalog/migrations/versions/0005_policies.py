"""policies: plan rules and shadow policy, video kinds, households, devices, shadow denials

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 00:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch_op:
        batch_op.add_column(sa.Column("rules", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("shadow", sa.JSON(), nullable=True))
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("household", sa.JSON(), nullable=True))
    with op.batch_alter_table("videos") as batch_op:
        batch_op.add_column(sa.Column("kinds", sa.JSON(), nullable=True))
    with op.batch_alter_table("streams") as batch_op:
        batch_op.add_column(sa.Column("kinds", sa.String(length=2000), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("away", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("shadow_reason", sa.String(length=100), nullable=True))
    op.create_table(
        "devices",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", name=op.f("pk_devices")),
    )
    op.create_table(
        "shadow_denials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("video_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("enforced", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_denials")),
    )
    with op.batch_alter_table("shadow_denials") as batch_op:
        batch_op.create_index(batch_op.f("ix_shadow_denials_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_shadow_denials_decided_at"), ["decided_at"], unique=False)


def downgrade() -> None:
    op.drop_table("shadow_denials")
    op.drop_table("devices")
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_column("shadow_reason")
    with op.batch_alter_table("streams") as batch_op:
        batch_op.drop_column("away")
        batch_op.drop_column("kinds")
    with op.batch_alter_table("videos") as batch_op:
        batch_op.drop_column("kinds")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("household")
    with op.batch_alter_table("plans") as batch_op:
        batch_op.drop_column("shadow")
        batch_op.drop_column("rules")
