"""What workers share through the database: who is alive, one rate budget, and wake-ups.

There is no coordinator of our own. Each worker registers in ``sync_workers`` and heartbeats.
A claim takes over the leases of workers whose heartbeat has gone stale, so a dead worker's
changes return promptly instead of waiting out their lease. The rate budget of one API token
is a shared schedule in ``sync_rate_limits`` (:mod:`worker.budget`, whose reservations the
coordinator makes). On PostgreSQL a trigger NOTIFYs ``kantata_sync_changes`` on every insert,
and on SQLite an idle daemon watches the file's ``data_version``, so idle workers wake within
milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .budget import SharedBudget
from .db import sqlite_path, transaction, translate_errors
from .models import sync_changes, sync_workers

NOTIFY_CHANNEL = "kantata_sync_changes"
DATA_VERSION_POLL = 0.05
"""Seconds between looks at SQLite's ``data_version`` while a daemon idles."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    host: str
    pid: int
    command: str
    started_at: datetime
    heartbeat_at: datetime


class Coordinator(SharedBudget):
    """The worker registry and wake-ups, on one engine; the shared budget's reservations too."""

    async def register(self, name: str, host: str, pid: int, command: str, now: datetime) -> None:
        values = {
            "name": name,
            "host": host,
            "pid": pid,
            "command": command,
            "started_at": now,
            "heartbeat_at": now,
        }
        async with transaction(self.engine, "registering the worker") as conn:
            await conn.execute(sa.delete(sync_workers).where(sync_workers.c.name == name))
            await conn.execute(sa.insert(sync_workers).values(**values))

    async def heartbeat(self, name: str, now: datetime) -> None:
        async with transaction(self.engine, "heartbeating") as conn:
            await conn.execute(
                sa.update(sync_workers).where(sync_workers.c.name == name).values(heartbeat_at=now)
            )

    async def deregister(self, name: str) -> None:
        async with transaction(self.engine, "deregistering the worker") as conn:
            await conn.execute(sa.delete(sync_workers).where(sync_workers.c.name == name))

    async def workers(self, now: datetime, dead_after: float) -> tuple[list[WorkerInfo], int]:
        """Live workers (heartbeat within ``dead_after`` seconds) and the count of dead ones."""
        query = sa.select(sync_workers).order_by(sync_workers.c.started_at)
        async with translate_errors("listing workers"), self.engine.connect() as conn:
            rows = [WorkerInfo(**row._mapping) for row in await conn.execute(query)]
        cutoff = now - timedelta(seconds=dead_after)
        live = [w for w in rows if w.heartbeat_at >= cutoff]
        return live, len(rows) - len(live)

    @contextlib.asynccontextmanager
    async def notifications(
        self, inserts: asyncio.Event | None = None
    ) -> AsyncIterator[asyncio.Event | None]:
        """An event set soon after the outbox changes; None where that cannot be known.

        PostgreSQL: a trigger NOTIFYs on every insert. SQLite: ``PRAGMA data_version`` on a
        connection of its own, read every :data:`DATA_VERSION_POLL` seconds, moves whenever
        another connection commits (a producer's insert, or this worker's own writes); reading
        it touches no lock and costs microseconds. ``inserts``, when given, is set only for
        new changes: every NOTIFY, or on SQLite a larger ``max(id)`` after a move.
        """
        if self.dialect == "sqlite" and sqlite_path(self.engine.url) is not None:
            async with self._data_version_watch(inserts) as event:
                yield event
            return
        if self.dialect != "postgresql":
            yield None
            return
        event = asyncio.Event()

        def _on_notify(*_args: object) -> None:
            event.set()
            if inserts is not None:
                inserts.set()

        async with translate_errors("listening for new changes"), self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(NOTIFY_CHANNEL, _on_notify)
            try:
                yield event
            finally:
                with contextlib.suppress(Exception):
                    await driver.remove_listener(NOTIFY_CHANNEL, _on_notify)

    @contextlib.asynccontextmanager
    async def _data_version_watch(
        self, inserts: asyncio.Event | None
    ) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        async with translate_errors("watching for new changes"), self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # autocommit: a read opens no transaction

            async def one(sql: str) -> object:
                cursor = await driver.execute(sql)
                row = await cursor.fetchone()
                await cursor.close()
                return row[0] if row else None

            newest_change = str(
                sa.select(sa.func.max(sync_changes.c.id)).compile(dialect=self.engine.dialect)
            )

            async def newest() -> object:
                return None if inserts is None else await one(newest_change)

            async def watch(seen: object, last_id: object) -> None:
                while True:
                    await asyncio.sleep(DATA_VERSION_POLL)
                    try:
                        current = await one("PRAGMA data_version")
                        if current == seen:
                            continue
                        seen = current
                        event.set()
                        newest_id = await newest()
                    except Exception:  # noqa: S112 - the daemon's polls report the database
                        continue
                    if inserts is not None and newest_id != last_id:
                        last_id = newest_id
                        inserts.set()

            # Read before anything is yielded: what commits from then on is seen.
            task = asyncio.create_task(watch(await one("PRAGMA data_version"), await newest()))
            try:
                yield event
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
