"""an allowed decision names its stream's start and whether it plays away from the household, so that its playback
token names them as a heartbeat's does (the start is earlier than the decision when the device asked again for the
stream it plays); rows decided before get NULL and false, and their token names the decision's instant, at home

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add decisions.started_at (NULL for existing rows) and decisions.away (false for existing rows)."""
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("away", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Drop decisions.away and decisions.started_at."""
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("away")
        batch_op.drop_column("started_at")
