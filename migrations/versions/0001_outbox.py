"""The outbox, the attempt log and the run log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.models import BigId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "sync_changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("source_ref", sa.Text, nullable=True, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False, server_default=NOW),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("lease_owner", sa.Text, nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("merged_into_id", sa.BigInteger, nullable=True),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("error_type", sa.Text, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("error_field", sa.Text, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'in_flight', 'succeeded', 'failed', 'invalid', 'cancelled')",
            name="ck_sync_changes_state",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sync_changes_state_id", "sync_changes", ["state", "id"])
    op.create_index(
        "ix_sync_changes_workspace_state_id", "sync_changes", ["workspace_id", "state", "id"]
    )
    op.create_index("ix_sync_changes_lease_expires_at", "sync_changes", ["lease_expires_at"])

    op.create_table(
        "sync_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("change_ids", sa.Text, nullable=False),
        sa.Column("workspace_id", sa.BigInteger, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("error_type", sa.Text, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.Column("attempted_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sync_attempts_workspace_id", "sync_attempts", ["workspace_id"])
    op.create_index("ix_sync_attempts_run_id", "sync_attempts", ["run_id"])

    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("ended_because", sa.Text, nullable=True),
        sa.Column("claimed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("invalid", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retried", sa.Integer, nullable=False, server_default="0"),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.Column("duration_s", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("sync_runs")
    op.drop_table("sync_attempts")
    op.drop_table("sync_changes")
