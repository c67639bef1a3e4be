"""a decision's reason and shadow reason as the API words them, with their rule's tag (`kind_limit:<tag>`, a tag
up to 40 characters): the audit events' columns held 32, and PostgreSQL would refuse the row of a longer one
(SQLite does not enforce a VARCHAR length: nothing to do there)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_REASONS = (
    ("audit_events", "reason"),
    ("audit_events", "shadow"),
    ("ledger_events", "reason"),
    ("ledger_events", "shadow"),
    ("decisions", "reason"),
)
NARROW, WIDE = 32, 100


def _resize(*, widen: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    old, new = (NARROW, WIDE) if widen else (WIDE, NARROW)
    for table, column in _REASONS:
        op.alter_column(table, column, type_=sa.String(length=new), existing_type=sa.String(length=old))


def upgrade() -> None:
    """Widen the reason columns (PostgreSQL: a catalogue change only, no table rewrite)."""
    _resize(widen=True)


def downgrade() -> None:
    """Narrow them again (fails on PostgreSQL if a longer reason is stored)."""
    _resize(widen=False)
