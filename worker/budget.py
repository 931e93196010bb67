"""The rate budget every worker using one API token shares, through the database.

The budget of a token is one row of ``sync_rate_limits``, keyed by a fingerprint of the token
(never the token). Workers reserve blocks of send slots from one global schedule, spaced
``1 / rate`` apart in the database's clock, so the sum over all workers stays within the budget
in every window. A fixed budget (``rate_limit = N``) halves its rate on a 429 reported by any
worker and pauses the schedule for everyone on a ``Retry-After``. A learned budget
(``rate_limit = "auto"``, :mod:`worker.learning`) is a row per token and endpoint class whose
rate the workers' reports of 429s and sends move, inside the same transaction.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import learning
from .db import ride_out, transaction, translate_errors
from .learning import Bounds, Learned
from .models import sync_rate_limits
from .ratelimit import HEADROOM, RateState, after_throttled, recovered
from .sharedrate import SharedRateLimiter, SlotBlock

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
    block, after = lay_out(next_slot, paused_until, now, state.rate, count)
    return block, after, state


def lay_out(
    next_slot: float, paused_until: float, now: float, rate: float, count: int
) -> tuple[SlotBlock, float]:
    """Pure: ``count`` slots ``1 / rate`` apart from the schedule's next free one (not before
    now, nor within a pause); the block and the schedule's new next slot."""
    start = max(next_slot, now, paused_until)
    spacing = 1.0 / rate
    return SlotBlock(now, start, spacing, count), start + count * spacing


class SharedBudget:
    """Reservations from the shared schedules of one database (the registry's coordinator
    is one: :class:`worker.coordination.Coordinator`)."""

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
        """A :class:`~worker.sharedrate.SlotSource` for one token's shared budget.

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
        """A :class:`~worker.sharedrate.SlotSource` that learns its rate (``rate_limit = auto``)."""
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
            state = learning.learn_from(
                replace(before, rate=bounds.clamp(before.rate)),
                bounds,
                now,
                sent=sent,
                refused=refused,
            )
            paused_until = min(row.paused_until, now + max_pause)
            if throttled:
                paused_until = max(paused_until, now + min(throttled, max_pause))
            block, next_slot = lay_out(row.next_slot, paused_until, now, state.rate, count)
            values = learned_values(state)
            values.update(
                budget=bounds.ceiling,
                changed_at=now,
                next_slot=next_slot,
                paused_until=paused_until,
                sent=r.sent + sent,
                throttled=r.throttled + refused,
            )
            await conn.execute(
                sa.update(sync_rate_limits).where(r.token_key == key).values(**values)
            )
            return replace(block, local=local, sent=asked, learned=state.good)

    async def _db_now(self, conn: AsyncConnection) -> float:
        if self.dialect == "postgresql":
            query = sa.text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
            return float((await conn.execute(query)).scalar_one())
        return time.time()

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
            asked, now, local, row = await self._locked_budget(conn, key, initial)
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
            return replace(reservation, local=local, sent=asked)

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


def shared_limiter(
    shared: SharedBudget,
    token: str,
    budget: float,
    *,
    max_pause: float = 120.0,
    db_retry_seconds: float = 30.0,
) -> SharedRateLimiter:
    """The limiter every worker using ``token`` should share (``budget`` in requests/s)."""
    source = shared.slot_source(
        token, budget * HEADROOM, max_pause=max_pause, db_retry_seconds=db_retry_seconds
    )
    return SharedRateLimiter(budget, source)


def learning_limiter(
    shared: SharedBudget,
    token: str,
    bounds: Bounds,
    endpoint_class: str,
    *,
    max_pause: float = 120.0,
    db_retry_seconds: float = 30.0,
) -> SharedRateLimiter:
    """The limiter of ``rate_limit = "auto"``: one learned budget per token and endpoint class."""
    source = shared.learning_source(
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
