"""The tables: the ``sync_changes`` outbox (a public contract), the attempt log and the run log.

The same definitions serve SQLite and PostgreSQL; alembic's migrations in ``migrations/`` create
exactly these (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NOW = sa.text("CURRENT_TIMESTAMP")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; ``timestamptz`` on PostgreSQL, naive UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; kantata-sync stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


STATES = ("pending", "in_flight", "succeeded", "failed", "invalid", "cancelled")

sync_changes = sa.Table(
    "sync_changes",
    metadata,
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
    sa.Column("superseded_by", sa.BigInteger, nullable=True),
    sa.Column("operator_note", sa.Text, nullable=True),
    sa.CheckConstraint(
        "state IN ('pending', 'in_flight', 'succeeded', 'failed', 'invalid', 'cancelled')",
        name="ck_sync_changes_state",
    ),
    sa.Index("ix_sync_changes_state_id", "state", "id"),
    sa.Index("ix_sync_changes_workspace_state_id", "workspace_id", "state", "id"),
    sa.Index("ix_sync_changes_lease_expires_at", "lease_expires_at"),
    sa.Index("ix_sync_changes_next_attempt_at", "next_attempt_at"),
    sa.Index("ix_sync_changes_superseded_by", "superseded_by"),
    sa.Index("ix_sync_changes_merged_into_id", "merged_into_id"),
    sqlite_autoincrement=True,
)

sync_attempts = sa.Table(
    "sync_attempts",
    metadata,
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
    sa.Index("ix_sync_attempts_workspace_id", "workspace_id"),
    sa.Index("ix_sync_attempts_run_id", "run_id"),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
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
    sa.Index("ix_sync_runs_started_at", "started_at"),
)

sync_workers = sa.Table(
    "sync_workers",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Index("ix_sync_workers_heartbeat_at", "heartbeat_at"),
)

sync_rate_limits = sa.Table(
    "sync_rate_limits",
    metadata,
    sa.Column("token_key", sa.Text, primary_key=True),
    sa.Column("budget", sa.Float, nullable=False),
    sa.Column("rate", sa.Float, nullable=False),
    sa.Column("next_slot", sa.Float, nullable=False, server_default="0"),
    sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
    sa.Column("changed_at", sa.Float, nullable=False, server_default="0"),
    sa.Column("throttled", sa.BigInteger, nullable=False, server_default="0"),
    # rate_limit = "auto": what is learned of the limit (worker.learning.Learned).
    sa.Column("auto", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("good", sa.Float, nullable=False, server_default="0"),
    sa.Column("bad", sa.Float, nullable=True),
    sa.Column("step_at", sa.Float, nullable=False, server_default="0"),
    sa.Column("step_used", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("step_refused", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lowered_at", sa.Float, nullable=True),
    sa.Column("probed_at", sa.Float, nullable=False, server_default="0"),
    sa.Column("estimated_at", sa.Float, nullable=True),
    sa.Column("sent", sa.BigInteger, nullable=False, server_default="0"),
)
