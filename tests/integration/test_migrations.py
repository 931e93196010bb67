"""`db upgrade` creates exactly the tables the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from worker import db as dbmod
from worker.exceptions import NotMigratedError
from worker.models import metadata


async def test_upgrade_head_matches_models(database_url: str) -> None:
    engine = dbmod.create_engine(database_url)
    try:
        before, after = await dbmod.upgrade(engine)
        assert before is None
        assert after == dbmod.head_revision()

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
        again = await dbmod.upgrade(engine)
        assert again == (after, after)
    finally:
        await engine.dispose()


async def test_unmigrated_database_is_refused_with_the_fix(database_url: str) -> None:
    engine = dbmod.create_engine(database_url)
    try:
        with pytest.raises(NotMigratedError, match="kantata-sync db upgrade"):
            await dbmod.check_schema(engine)
        await dbmod.upgrade(engine)
        await dbmod.check_schema(engine)
    finally:
        await engine.dispose()
