"""Engines and migrations: SQLite in WAL mode with a busy timeout, or PostgreSQL via asyncpg.

SQLAlchemy and driver errors are translated here and in :mod:`worker.store` into
:class:`~worker.exceptions.DatabaseError`, never above.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .exceptions import DatabaseError, NotMigratedError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that "begin" below decides the mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so a claim never fails half-way on a busy file.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("worker.migrations")))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this version of kantata-sync ships."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("no migrations found in the installed package")
    return head


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str]:
    """Apply every pending migration; return the revisions before and after."""

    def _upgrade(connection: Connection) -> str | None:
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(_alembic_config(connection), "head")
        return before

    async with translate_errors("migrating the database"), engine.begin() as connection:
        before = await connection.run_sync(_upgrade)
    return before, head_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with translate_errors("reading the schema version"), engine.connect() as connection:
        return await connection.run_sync(_current)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise :class:`NotMigratedError` unless the database is at this version's head."""
    revision = await current_revision(engine)
    head = head_revision()
    if revision != head:
        found = "no kantata-sync tables" if revision is None else f"schema {revision}"
        raise NotMigratedError(
            f"database has {found}, this version needs {head}: run `kantata-sync db upgrade`"
        )


async def ping(engine: AsyncEngine) -> None:
    async with translate_errors("connecting to the database"), engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))


_write_locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine, doing: str) -> AsyncIterator[AsyncConnection]:
    """``engine.begin()`` with errors translated; on SQLite, one at a time per engine.

    A SQLite file has a single write lock, and every transaction here takes it up front. The
    transactions of one process queue for it in an asyncio lock, in order, rather than in
    SQLite's busy handler, which polls in sleeps of up to 100 ms: a flush that collided with
    a claim used to wait tens of milliseconds for a lock freed long before.
    """
    lock = None
    if engine.dialect.name == "sqlite":
        lock = _write_locks.get(engine.sync_engine)
        if lock is None:
            lock = _write_locks[engine.sync_engine] = asyncio.Lock()
    async with translate_errors(doing):
        if lock is None:
            async with engine.begin() as conn:
                yield conn
        else:
            async with lock, engine.begin() as conn:
                yield conn


@contextlib.asynccontextmanager
async def translate_errors(doing: str) -> AsyncIterator[None]:
    """Turn SQLAlchemy and driver errors into :class:`DatabaseError`, naming what failed."""
    try:
        yield
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        raise DatabaseError(f"{doing}: {detail}") from exc
    except OSError as exc:
        raise DatabaseError(f"{doing}: {exc.strerror or exc}") from exc


def describe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)
