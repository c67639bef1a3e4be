"""the SQLite ledger logs each transaction's changes, for the audit trail to record in batches off the hot path

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ledger_changes: a row per ledger transaction that decided or ended something, its changes as JSON,
    deleted once the audit trail has recorded them (no index but the sequence: written on every decision)."""
    op.create_table(
        "ledger_changes",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("changes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ledger_changes")),
    )


def downgrade() -> None:
    """Drop ledger_changes (changes still in it are not recorded)."""
    op.drop_table("ledger_changes")
