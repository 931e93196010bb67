"""Fixtures shared by every tier: real SQLite files and fresh PostgreSQL databases."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from worker import db as dbmod
from worker.store import Store

PG_ADMIN_URL = os.environ.get(
    "KANTATA_SYNC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("KANTATA_SYNC_REQUIRE_POSTGRES") == "1"
_pg_state: dict[str, str | None] = {}


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults, whatever an earlier test configured (a
    command run in-process configures logging at its level)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


async def _pg_unavailable() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per session)."""
    if "reason" not in _pg_state:
        try:
            conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
            await conn.close()
            _pg_state["reason"] = None
        except (OSError, asyncpg.PostgresError) as exc:
            _pg_state["reason"] = f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}"
    return _pg_state["reason"]


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards; skips (or fails) without one."""
    reason = await _pg_unavailable()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason} (KANTATA_SYNC_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    name = f"kantata_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'kantata-sync.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'kantata-sync.db'}"
        return
    async with fresh_pg_database() as url:
        yield url


@contextlib.asynccontextmanager
async def migrated_store(url: str) -> AsyncIterator[Store]:
    """A store on ``url`` after ``db upgrade``, disposed of afterwards."""
    engine = dbmod.create_engine(url)
    await dbmod.upgrade(engine)
    try:
        yield Store(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated store on each engine."""
    async with migrated_store(database_url) as migrated:
        yield migrated


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[Store]:
    async with migrated_store(sqlite_url) as migrated:
        yield migrated
