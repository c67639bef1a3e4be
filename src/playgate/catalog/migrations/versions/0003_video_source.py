"""videos.source: a folder of the admin's own HLS/DASH media

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Additive: the version still running keeps working on the new schema.
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("source", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("source")
