"""request ids, stream ids and the ids built on them as long as they are made: an owned id is the user id as hex (up
to 128 characters) and 25 more, where the columns held 64; PostgreSQL refused the audit trail's rows of any user id
longer than 19 characters (SQLite does not enforce a VARCHAR length: nothing to do there)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 16:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

OWNED_ID = 160
EVENT_ID = 200
# (table, column, length before, length after)
_COLUMNS = (
    ("streams", "id", 64, OWNED_ID),
    ("decisions", "request_id", 64, OWNED_ID),
    ("decisions", "stream_id", 64, OWNED_ID),
    ("audit_events", "request_id", 64, OWNED_ID),
    ("audit_events", "stream_id", 64, OWNED_ID),
    ("audit_events", "event_id", 100, EVENT_ID),
    ("ledger_events", "request_id", 64, OWNED_ID),
    ("ledger_events", "stream_id", 64, OWNED_ID),
    ("idempotency_keys", "request_id", 64, OWNED_ID),
    ("shadow_denials", "request_id", 64, OWNED_ID),
    ("webhook_events", "msg_id", 100, EVENT_ID),
    ("webhook_deliveries", "msg_id", 100, EVENT_ID),
)


def _alter(lengths: int) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, before, after in _COLUMNS:
        old, new = (before, after) if lengths == 1 else (after, before)
        op.alter_column(table, column, type_=sa.String(length=new), existing_type=sa.String(length=old))


def upgrade() -> None:
    """Widen the id columns (PostgreSQL: a catalogue change only, no table rewrite)."""
    _alter(1)


def downgrade() -> None:
    """Narrow them again (fails on PostgreSQL if a longer id is stored)."""
    _alter(-1)
