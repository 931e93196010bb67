"""Engines and migrations: SQLite in WAL mode with a busy timeout, or PostgreSQL via asyncpg.

SQLAlchemy and driver errors are translated here and in :mod:`worker.store` into
:class:`~worker.exceptions.DatabaseError`, never above.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .exceptions import DatabaseError, DatabaseGone, NotMigratedError

SQLITE_BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")

WORKER_SESSION_SETTINGS = {
    # A worker never waits unboundedly on a lock another session holds (a frozen worker's
    # claim, say): the statement fails and the worker retries, or skips.
    "lock_timeout": "3000",
    "statement_timeout": "60000",
    # A worker's transactions await nothing but the database, so one idle for seconds belongs
    # to a stalled process (SIGSTOP, a VM pause): PostgreSQL ends it and frees its locks.
    "idle_in_transaction_session_timeout": "5000",
}
"""PostgreSQL settings of every session a worker opens (``db upgrade`` keeps the defaults)."""
WORKER_APPLICATION_PREFIX = "kantata-sync/"
"""How a worker's PostgreSQL sessions are named in ``pg_stat_activity`` (then its name)."""


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    application_name: str | None = None,
    worker: bool = False,
) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE``.

    On PostgreSQL, ``worker`` bounds every wait on another session's locks
    (:data:`WORKER_SESSION_SETTINGS`), and ``application_name`` names the sessions in
    ``pg_stat_activity``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    server_settings = dict(WORKER_SESSION_SETTINGS) if worker else {}
    if application_name:
        server_settings["application_name"] = application_name[:63]
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=(
            # A server that stops answering (a partition, a frozen host) fails a connect or
            # a statement in bounded time too, not only one that refuses.
            {"server_settings": server_settings, "timeout": 10, "command_timeout": 90}
            if worker
            else {"server_settings": server_settings}
        ),
    )


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


SCHEMA_HEAD = "0005"
"""The newest migration this version ships, as a constant so that a ``run`` need not load
alembic to check the schema (a test keeps it equal to alembic's own head)."""


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config  # alembic is loaded only to migrate

    config = Config()
    config.set_main_option("script_location", str(files("worker.migrations")))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this version of kantata-sync ships, as alembic reads it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("no migrations found in the installed package")
    return head


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str]:
    """Apply every pending migration; return the revisions before and after."""

    from alembic import command
    from alembic.runtime.migration import MigrationContext

    def _upgrade(connection: Connection) -> str | None:
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(_alembic_config(connection), "head")
        return before

    async with translate_errors("migrating the database"), engine.begin() as connection:
        before = await connection.run_sync(_upgrade)
    return before, head_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision alembic recorded in ``alembic_version`` (None: no kantata-sync tables)."""

    def _current(connection: Connection) -> str | None:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        found = [str(v) for v in versions.scalars()]
        return found[0] if len(found) == 1 else None

    async with translate_errors("reading the schema version"), engine.connect() as connection:
        return await connection.run_sync(_current)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise :class:`NotMigratedError` unless the database is at this version's head."""
    revision = await current_revision(engine)
    head = SCHEMA_HEAD
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
        raise DatabaseError(f"{doing}: {describe(getattr(exc, 'orig', None) or exc)}") from exc
    except OSError as exc:
        raise DatabaseError(f"{doing}: {exc.strerror or describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """The first line of an error's text, at most 300 characters; its class where it has none
    (a driver's ``TimeoutError()`` says nothing by itself)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


async def ride_out(
    operation: Callable[[], Awaitable[T]],
    *,
    within: float,
    on_retry: Callable[[DatabaseError, int], None] = lambda _exc, _failures: None,
    clock: Callable[[], float] = time.monotonic,
    first_delay: float = 0.1,
    max_delay: float = 2.0,
) -> T:
    """Run ``operation``, retrying a failed database for up to ``within`` seconds.

    Blips (a restart, a failover, a lock timeout, a frozen session that PostgreSQL ends) are
    ridden out with backoff; when the database stays unusable the *last* error is raised. A
    schema error or a vanished file is never retried. ``on_retry`` hears each failure.
    """
    started = clock()
    failures = 0
    while True:
        try:
            return await operation()
        except (NotMigratedError, DatabaseGone):
            raise
        except DatabaseError as exc:
            failures += 1
            delay = min(max_delay, first_delay * 2 ** (failures - 1))
            if clock() - started + delay > within:
                raise
            on_retry(exc, failures)
            await asyncio.sleep(delay)


def sqlite_path(url: Any) -> str | None:
    """The file of a SQLite URL (None for PostgreSQL and in-memory databases)."""
    parsed = make_url(str(url)) if not hasattr(url, "get_backend_name") else url
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return str(Path(database).resolve())


class FileWatch:
    """Whether a SQLite file is still the one first seen there (always so for PostgreSQL).

    SQLite goes on working on a file that was deleted or replaced under an open connection,
    so a query cannot tell; the file's device and inode can.
    """

    def __init__(self, url: Any) -> None:
        self.path = sqlite_path(url)
        self._identity = self._current()

    def _current(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def change(self) -> str | None:
        """``"missing"``, ``"replaced"``, or None while the file is the one first seen."""
        if self.path is None:
            return None
        identity = self._current()
        if identity is None:
            return "missing"
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            return "replaced"
        return None


def describe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)
