"""Scale-out: the worker registry, the shared rate budget, and NOTIFY on new changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION kantata_sync_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kantata_sync_changes', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "sync_workers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sync_workers_heartbeat_at", "sync_workers", ["heartbeat_at"])
    op.create_table(
        "sync_rate_limits",
        sa.Column("token_key", sa.Text, primary_key=True),
        sa.Column("budget", sa.Float, nullable=False),
        sa.Column("rate", sa.Float, nullable=False),
        sa.Column("next_slot", sa.Float, nullable=False, server_default="0"),
        sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("changed_at", sa.Float, nullable=False, server_default="0"),
        sa.Column("throttled", sa.BigInteger, nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(
            "CREATE TRIGGER sync_changes_notify AFTER INSERT ON sync_changes "
            "FOR EACH STATEMENT EXECUTE FUNCTION kantata_sync_notify()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS sync_changes_notify ON sync_changes")
        op.execute("DROP FUNCTION IF EXISTS kantata_sync_notify()")
    op.drop_table("sync_rate_limits")
    op.drop_table("sync_workers")
