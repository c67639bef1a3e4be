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

# Owned ids (64 -> 160), and the ids built on one: an audit event's, a webhook message's (100 -> 200).
_OWNED_IDS = (
    ("streams", "id"),
    ("decisions", "request_id"),
    ("decisions", "stream_id"),
    ("audit_events", "request_id"),
    ("audit_events", "stream_id"),
    ("ledger_events", "request_id"),
    ("ledger_events", "stream_id"),
    ("idempotency_keys", "request_id"),
    ("shadow_denials", "request_id"),
)
_EVENT_IDS = (("audit_events", "event_id"), ("webhook_events", "msg_id"), ("webhook_deliveries", "msg_id"))
_WIDTHS = ((_OWNED_IDS, 64, 160), (_EVENT_IDS, 100, 200))


def _resize(*, widen: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for columns, narrow, wide in _WIDTHS:
        old, new = (narrow, wide) if widen else (wide, narrow)
        for table, column in columns:
            op.alter_column(table, column, type_=sa.String(length=new), existing_type=sa.String(length=old))


def upgrade() -> None:
    """Widen the id columns (PostgreSQL: a catalogue change only, no table rewrite)."""
    _resize(widen=True)


def downgrade() -> None:
    """Narrow them again (fails on PostgreSQL if a longer id is stored)."""
    _resize(widen=False)
