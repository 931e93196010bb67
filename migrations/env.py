"""Alembic environment: kantata-sync hands it an open connection (``kantata-sync db upgrade``)."""

from __future__ import annotations

from alembic import context

from worker.models import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise SystemExit("kantata-sync migrations run through `kantata-sync db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
