"""audit events carry an id of what they tell of, unique, so that recording one twice keeps one

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add audit_events.event_id (`decision:<request id>`, `stream_end:<stream id>`; NULL for the rows written
    before), unique: the distributed drainer's INSERT skips an event a redelivery brings again."""
    op.add_column("audit_events", sa.Column("event_id", sa.String(length=100), nullable=True))
    op.create_index("uq_audit_events_event_id", "audit_events", ["event_id"], unique=True)


def downgrade() -> None:
    """Drop audit_events.event_id and its index."""
    op.drop_index("uq_audit_events_event_id", table_name="audit_events")
    op.drop_column("audit_events", "event_id")
