"""What workers share through the database: who is alive, one rate budget, and wake-ups.

There is no coordinator of our own. Each worker registers in ``sync_workers`` and heartbeats.
A claim takes over the leases of workers whose heartbeat has gone stale, so a dead worker's
changes return promptly instead of waiting out their lease. The rate budget of one API token is
one row of ``sync_rate_limits``, keyed by a fingerprint of the token (never the token). Workers
reserve blocks of send slots from one global schedule, spaced ``1 / rate`` apart in the
database's clock, so the sum over all workers stays within the budget in every window. A 429
seen by any worker halves the shared rate and pauses the schedule for everyone. On PostgreSQL
a trigger NOTIFYs ``kantata_sync_changes`` on every insert, and on SQLite an idle daemon watches
the file's ``data_version``, so idle workers wake within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import learning
from .db import ride_out, sqlite_path, transaction, translate_errors
from .learning import Bounds, Learned
from .models import sync_rate_limits, sync_workers
from .ratelimit import (
    HEADROOM,
    RateState,
    SharedRateLimiter,
    SlotBlock,
    after_throttled,
    recovered,
)

NOTIFY_CHANNEL = "kantata_sync_changes"
DATA_VERSION_POLL = 0.05
"""Seconds between looks at SQLite's ``data_version`` while a daemon idles."""
r = sync_rate_limits.c


def token_key(token: str, endpoint_class: str | None = None) -> str:
    """A stable, non-reversible name for a token's budget (a learned one: per endpoint class)."""
    key = "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]
    return f"{key}/{endpoint_class}" if endpoint_class else key


def learned_of(row: Any) -> Learned:
    """The learned state stored in a ``sync_rate_limits`` row."""
    return Learned(
        rate=row.rate,
        good=row.good,
        bad=math.inf if row.bad is None else row.bad,
        step_at=row.step_at,
        used=row.step_used,
        refused=row.step_refused,
        lowered_at=-math.inf if row.lowered_at is None else row.lowered_at,
        probed_at=row.probed_at,
        estimated_at=-math.inf if row.estimated_at is None else row.estimated_at,
    )


def learned_values(state: Learned) -> dict[str, Any]:
    """The columns that store ``state`` (infinities as NULL)."""

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "rate": state.rate,
        "good": state.good,
        "bad": finite(state.bad),
        "step_at": state.step_at,
        "step_used": state.used,
        "step_refused": state.refused,
        "lowered_at": finite(state.lowered_at),
        "probed_at": state.probed_at,
        "estimated_at": finite(state.estimated_at),
    }


def learn_from(state: Learned, bounds: Bounds, now: float, *, sent: int, refused: int) -> Learned:
    """Pure: a worker's news with its reservation (429s seen, requests sent) applied."""
    for _ in range(refused):
        state = learning.throttled(state, now, bounds)
    return learning.taken(state, sent, now, bounds)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    host: str
    pid: int
    command: str
    started_at: datetime
    heartbeat_at: datetime


def reserve_slots(
    *,
    next_slot: float,
    paused_until: float,
    state: RateState,
    budget: float,
    now: float,
    count: int,
) -> tuple[SlotBlock, float, RateState]:
    """Pure: take ``count`` slots from the schedule; return them, the new next slot and rate."""
    state = recovered(state, budget, now)
    start = max(next_slot, now, paused_until)
    spacing = 1.0 / state.rate
    return SlotBlock(now, start, spacing, count), start + count * spacing, state


class Coordinator:
    """The worker registry, the shared budget and notifications, on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def slot_source(
        self,
        token: str,
        budget: float,
        *,
        max_pause: float = 120.0,
        db_retry_seconds: float = 30.0,
    ) -> Any:
        """A :class:`~worker.ratelimit.SlotSource` for one token's shared budget.

        A reservation rides out database blips for up to ``db_retry_seconds``; no pause
        longer than ``max_pause`` is ever stored or honoured.
        """
        key = token_key(token)

        async def source(count: int, throttled: float | None) -> SlotBlock:
            return await ride_out(
                lambda: self.reserve(key, budget, count, throttled, max_pause=max_pause),
                within=db_retry_seconds,
            )

        return source

    def learning_source(
        self,
        token: str,
        bounds: Bounds,
        endpoint_class: str,
        *,
        max_pause: float = 120.0,
        db_retry_seconds: float = 30.0,
    ) -> Any:
        """A :class:`~worker.ratelimit.SlotSource` whose rate is learned (``rate_limit = auto``)."""
        key = token_key(token, endpoint_class)

        async def source(
            count: int, throttled: float | None, *, refused: int = 0, sent: int = 0
        ) -> SlotBlock:
            return await ride_out(
                lambda: self.reserve_learned(
                    key,
                    bounds,
                    count,
                    throttled,
                    refused=refused,
                    sent=sent,
                    max_pause=max_pause,
                ),
                within=db_retry_seconds,
            )

        return source

    async def reserve_learned(
        self,
        key: str,
        bounds: Bounds,
        count: int,
        throttled: float | None = None,
        *,
        refused: int = 0,
        sent: int = 0,
        max_pause: float = 120.0,
    ) -> SlotBlock:
        """Take ``count`` slots at the learned rate, after learning from this worker's news.

        ``refused`` 429s seen and ``sent`` requests sent since its last reservation;
        ``throttled`` is a ``Retry-After`` to honour (0 or None: none was given, and a learned
        budget pauses for none: the step down is the answer).
        """

        def initial(now: float) -> dict[str, Any]:
            start = learned_values(learning.start(bounds, now))
            return {"budget": bounds.ceiling, "auto": True, "changed_at": now, **start}

        async with transaction(self.engine, "reserving rate budget") as conn:
            asked, now, local, row = await self._locked_budget(conn, key, initial)
            before = learned_of(row)
            state = learn_from(
                replace(before, rate=bounds.clamp(before.rate)),
                bounds,
                now,
                sent=sent,
                refused=refused,
            )
            paused_until = min(row.paused_until, now + max_pause)
            if throttled:
                paused_until = max(paused_until, now + min(throttled, max_pause))
            start = max(row.next_slot, now, paused_until)
            spacing = 1.0 / state.rate
            values = learned_values(state)
            values.update(
                budget=bounds.ceiling,
                changed_at=now,
                next_slot=start + count * spacing,
                paused_until=paused_until,
                sent=r.sent + sent,
                throttled=r.throttled + refused,
            )
            await conn.execute(
                sa.update(sync_rate_limits).where(r.token_key == key).values(**values)
            )
            return SlotBlock(
                now, start, spacing, count, local=local, sent=asked, learned=state.good
            )

    async def _db_now(self, conn: AsyncConnection) -> float:
        if self.dialect == "postgresql":
            query = sa.text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
            return float((await conn.execute(query)).scalar_one())
        return time.time()

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

    async def reserve(
        self,
        key: str,
        budget: float,
        count: int,
        throttled: float | None = None,
        *,
        max_pause: float = 120.0,
    ) -> SlotBlock:
        """Take ``count`` slots of the shared schedule; report a 429 first when ``throttled``.

        ``throttled`` is the Retry-After of a 429 this worker saw (0 when none was given). A
        stored pause never reaches more than ``max_pause`` seconds past now, whoever wrote it.
        """

        def initial(now: float) -> dict[str, Any]:
            return {"budget": budget, "rate": budget, "changed_at": now}

        async with transaction(self.engine, "reserving rate budget") as conn:
            sent, now, local, row = await self._locked_budget(conn, key, initial)
            state = RateState(min(row.rate, budget), row.changed_at)
            paused_until = min(row.paused_until, now + max_pause)
            values: dict[str, Any] = {"budget": budget}
            if throttled is not None:
                state = after_throttled(state, budget, now)
                paused_until = max(paused_until, now + min(throttled or 1.0, max_pause))
                values["throttled"] = r.throttled + 1
            reservation, next_slot, state = reserve_slots(
                next_slot=row.next_slot,
                paused_until=paused_until,
                state=state,
                budget=budget,
                now=now,
                count=count,
            )
            values.update(
                rate=state.rate,
                changed_at=state.changed_at,
                next_slot=next_slot,
                paused_until=paused_until,
            )
            await conn.execute(
                sa.update(sync_rate_limits).where(r.token_key == key).values(**values)
            )
            return replace(reservation, local=local, sent=sent)

    async def _locked_budget(
        self, conn: AsyncConnection, key: str, initial: Callable[[float], dict[str, Any]]
    ) -> tuple[float, float, float, Any]:
        """The budget's row, locked, created from ``initial(now)`` if new; with the clock
        sample: our monotonic time when asked, the database's time, ours when it answered."""
        asked = time.monotonic()
        now = await self._db_now(conn)
        local = time.monotonic()
        insert: Any = (
            postgresql.insert(sync_rate_limits)
            if self.dialect == "postgresql"
            else sqlite.insert(sync_rate_limits)
        )
        await conn.execute(insert.values(token_key=key, **initial(now)).on_conflict_do_nothing())
        locked = sa.select(sync_rate_limits).where(r.token_key == key).with_for_update()
        return asked, now, local, (await conn.execute(locked)).one()

    async def budgets(self) -> list[dict[str, Any]]:
        """Every token's shared budget: its configured rate, current rate and 429 count.

        Tokens appear by fingerprint only; ``status`` shows them to the operator.
        """
        query = sa.select(
            r.token_key,
            r.budget,
            r.rate,
            r.throttled,
            r.paused_until,
            r.auto,
            r.good,
            r.bad,
            r.sent,
        ).order_by(r.token_key)
        async with translate_errors("reading the rate budgets"), self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [dict(row._mapping) for row in rows]

    @contextlib.asynccontextmanager
    async def notifications(self) -> AsyncIterator[asyncio.Event | None]:
        """An event set soon after changes are inserted; None where that cannot be known.

        PostgreSQL: a trigger NOTIFYs on every insert. SQLite: ``PRAGMA data_version`` on a
        connection of its own, read every :data:`DATA_VERSION_POLL` seconds, moves whenever
        another connection commits (a producer's insert, or this worker's own writes); reading
        it touches no lock and costs microseconds.
        """
        if self.dialect == "sqlite" and sqlite_path(self.engine.url) is not None:
            async with self._data_version_watch() as event:
                yield event
            return
        if self.dialect != "postgresql":
            yield None
            return
        event = asyncio.Event()

        def _on_notify(*_args: object) -> None:
            event.set()

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
    async def _data_version_watch(self) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        async with translate_errors("watching for new changes"), self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # autocommit: the pragma opens no transaction

            async def version() -> object:
                cursor = await driver.execute("PRAGMA data_version")
                row = await cursor.fetchone()
                await cursor.close()
                return row[0] if row else None

            async def watch() -> None:
                seen = await version()
                while True:
                    await asyncio.sleep(DATA_VERSION_POLL)
                    try:
                        current = await version()
                    except Exception:
                        current = seen  # unreadable now: the daemon's polls report the database
                    if current != seen:
                        seen = current
                        event.set()

            task = asyncio.create_task(watch())
            try:
                yield event
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def shared_limiter(
    coordinator: Coordinator,
    token: str,
    budget: float,
    *,
    max_pause: float = 120.0,
    db_retry_seconds: float = 30.0,
) -> SharedRateLimiter:
    """The limiter every worker using ``token`` should share (``budget`` in requests/s)."""
    source = coordinator.slot_source(
        token, budget * HEADROOM, max_pause=max_pause, db_retry_seconds=db_retry_seconds
    )
    return SharedRateLimiter(budget, source)


def learning_limiter(
    coordinator: Coordinator,
    token: str,
    bounds: Bounds,
    endpoint_class: str,
    *,
    max_pause: float = 120.0,
    db_retry_seconds: float = 30.0,
) -> SharedRateLimiter:
    """The limiter of ``rate_limit = "auto"``: one learned budget per token and endpoint class."""
    source = coordinator.learning_source(
        token, bounds, endpoint_class, max_pause=max_pause, db_retry_seconds=db_retry_seconds
    )
    return SharedRateLimiter(
        bounds.ceiling,
        source,
        headroom=1.0,
        initial_rate=bounds.floor,
        endpoint_class=endpoint_class,
        learns=True,
    )
