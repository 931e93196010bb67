"""Index retry times: a claim finds the workspaces waiting for a retry without a table scan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sync_changes_next_attempt_at", "sync_changes", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_sync_changes_next_attempt_at", table_name="sync_changes")
