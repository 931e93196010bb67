"""Every change explainable, and retention: who superseded or moved a change, and why.

``superseded_by`` points a failed, invalid or cancelled change at the change that replaced it
(``enqueue --supersede``); the replaced row gives its ``source_ref`` to its successor and keeps
its history. ``operator_note`` holds one line per operator action (``retry``, ``cancel``,
supersede): when, who, and the reason given. The indexes let ``prune`` ask whether a kept
change still points at a candidate (``superseded_by``, ``merged_into_id``), ``show`` find a
change's predecessors, and ``runs`` list the newest runs first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sync_changes", sa.Column("superseded_by", sa.BigInteger, nullable=True))
    op.add_column("sync_changes", sa.Column("operator_note", sa.Text, nullable=True))
    op.create_index("ix_sync_changes_superseded_by", "sync_changes", ["superseded_by"])
    op.create_index("ix_sync_changes_merged_into_id", "sync_changes", ["merged_into_id"])
    op.create_index("ix_sync_runs_started_at", "sync_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_sync_runs_started_at", table_name="sync_runs")
    op.drop_index("ix_sync_changes_merged_into_id", table_name="sync_changes")
    op.drop_index("ix_sync_changes_superseded_by", table_name="sync_changes")
    with op.batch_alter_table("sync_changes") as batch:
        batch.drop_column("operator_note")
        batch.drop_column("superseded_by")
