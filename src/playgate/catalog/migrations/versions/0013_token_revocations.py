"""token_revocations: the users whose tokens died lately (epoch raised, disabled, deleted), so that the sockets'
sweep asks about those users instead of every connected one

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create token_revocations, indexed by time (the sweep reads the latest; writers prune the oldest)."""
    op.create_table(
        "token_revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_revocations")),
    )
    op.create_index(op.f("ix_token_revocations_at"), "token_revocations", ["at"])


def downgrade() -> None:
    """Drop token_revocations (the sweep of an older build asks about every connected user)."""
    op.drop_index(op.f("ix_token_revocations_at"), table_name="token_revocations")
    op.drop_table("token_revocations")
