"""streams carry a readable device name

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add streams.device_name ("Chrome on Linux", or what the viewer named the device); old rows get ""."""
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_name", sa.String(length=200), nullable=False, server_default=""))


def downgrade() -> None:
    """Drop streams.device_name."""
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_column("device_name")
