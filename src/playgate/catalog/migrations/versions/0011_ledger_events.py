"""the SQLite ledger logs its audit events as rows (ledger_events) instead of JSON, and they are recorded with no
event id, which the unique index then skips: the SQLite journal records each once, in the transaction that forgets it

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_WITH_AN_ID = sa.text("event_id IS NOT NULL")
# What 0010's ledger_changes holds (each row a JSON array of events, each an array of audit_events' columns in the
# order below), into ledger_events, in order.
_FROM_JSON = (
    "INSERT INTO ledger_events (at, kind, user_id, video_id, device_id, outcome, request_id, stream_id, reason, "
    'policy, active, "limit", shadow) '
    "SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, e.value ->> 4, e.value ->> 5, e.value ->> 6, "
    "e.value ->> 7, e.value ->> 8, e.value ->> 9, e.value ->> 10, e.value ->> 11, e.value ->> 12 "
    "FROM ledger_changes AS c, json_each(c.changes) AS e ORDER BY c.seq, e.key"
)
# And back, an event per row.
_TO_JSON = (
    "INSERT INTO ledger_changes (changes) SELECT json_array(json_array(at, kind, user_id, video_id, device_id, "
    'outcome, request_id, stream_id, reason, policy, active, "limit", shadow)) FROM ledger_events ORDER BY seq'
)


def upgrade() -> None:
    """Create ledger_events, move what ledger_changes still holds into it (SQLite; the table is always empty on
    PostgreSQL), drop ledger_changes; index only the audit rows that carry an event id."""
    op.create_table(
        "ledger_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("video_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("stream_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("policy", sa.String(length=32), nullable=True),
        sa.Column("active", sa.Integer(), nullable=True),
        sa.Column("limit", sa.Integer(), nullable=True),
        sa.Column("shadow", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ledger_events")),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(_FROM_JSON)
    op.drop_table("ledger_changes")
    op.drop_index("uq_audit_events_event_id", table_name="audit_events")
    op.create_index(
        "uq_audit_events_event_id",
        "audit_events",
        ["event_id"],
        unique=True,
        sqlite_where=_WITH_AN_ID,
        postgresql_where=_WITH_AN_ID,
    )


def downgrade() -> None:
    """Index every audit row's event id again; log what ledger_events holds as JSON again, an event per row."""
    op.drop_index("uq_audit_events_event_id", table_name="audit_events")
    op.create_index("uq_audit_events_event_id", "audit_events", ["event_id"], unique=True)
    op.create_table(
        "ledger_changes",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("changes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ledger_changes")),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(_TO_JSON)
    op.drop_table("ledger_events")
