"""A learned rate limit: what ``rate_limit = "auto"`` knows of each token's limit.

A learning budget is a row of ``sync_rate_limits`` like a fixed one, keyed by the token's
fingerprint and the endpoint class (``…/write``, ``…/read``), with ``auto`` set. ``good`` is the
highest rate held without a 429, ``bad`` the lowest that drew one (NULL: none yet); the step
columns hold the evidence of the rate being tried now. ``sent`` counts the requests the workers
report sending, so that ``throttled / sent`` is the share of requests that drew a 429.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("auto", sa.Boolean, "0"),
    ("good", sa.Float, "0"),
    ("bad", sa.Float, None),
    ("step_at", sa.Float, "0"),
    ("step_used", sa.BigInteger, "0"),
    ("step_refused", sa.BigInteger, "0"),
    ("lowered_at", sa.Float, None),
    ("probed_at", sa.Float, "0"),
    ("estimated_at", sa.Float, None),
    ("sent", sa.BigInteger, "0"),
)


def upgrade() -> None:
    for name, type_, default in COLUMNS:
        op.add_column(
            "sync_rate_limits",
            sa.Column(
                name,
                type_,
                nullable=default is None,
                server_default=sa.false() if type_ is sa.Boolean else default,
            ),
        )


def downgrade() -> None:
    with op.batch_alter_table("sync_rate_limits") as batch:
        for name, _type, _default in reversed(COLUMNS):
            batch.drop_column(name)
