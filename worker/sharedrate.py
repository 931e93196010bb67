"""A rate limiter fed from a budget that several workers share (``sync_rate_limits``).

The shared schedule hands out send slots in blocks (:class:`SlotBlock`) through a
:class:`SlotSource`, the database in production (:mod:`worker.budget`). Each block is mapped
from the source's clock to ours as it arrives, so hosts need not agree on the time; the local
one-second ``Throttler`` of :mod:`worker.ratelimit` stays as the last guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from asyncio_throttle import Throttler

from .logging import get_logger
from .ratelimit import HEADROOM

OFFSET_SAMPLES = 64
"""Recent clock-offset samples kept; the window follows slow drift between clocks."""
LATE_TOLERANCE = 0.005
"""Seconds a shared slot may be late before it is given up (or half a spacing, if more)."""
MAX_SKIPS = 3
"""Late slots one acquire gives up before it takes a late one: a process that always wakes
late (a loaded host) still sends, one request a wake-up, never a burst."""
GOOD_ROUND_TRIP = 0.002
"""A clock sample whose round trip took longer than this may be off by as much."""
CLOCK_RETRIES = 5


class SlotSource(Protocol):
    """Where a shared limiter gets its send slots (the database, in production).

    A learning source also hears, as ``refused`` and ``sent``, the 429s seen and the requests
    sent since the last reservation.
    """

    async def __call__(self, count: int, throttled: float | None) -> SlotBlock: ...


@dataclass(frozen=True, slots=True)
class SlotBlock:
    """``count`` slots from ``first``, every ``spacing`` s, in the source's clock at ``now``."""

    now: float
    first: float
    spacing: float
    count: int
    local: float | None = None
    """Our monotonic clock when the source read ``now``; None means "on arrival"."""
    sent: float | None = None
    """Our monotonic clock when the request for this block left; with ``local`` it bounds the
    round trip, and so the error of the clock sample."""
    learned: float | None = None
    """A learned budget's highest rate known good (None: a fixed budget)."""


class SharedRateLimiter:
    """A limiter fed from a budget shared with other workers.

    Slots come in blocks worth ``block_seconds`` of the budget, each mapped from the source's
    clock to ours at the moment it arrives, so hosts need not agree on the time. A 429 drops the
    slots in hand and is reported with the next reservation, which halves the shared rate. The
    local one-second ``Throttler`` stays as a last guard.
    """

    def __init__(
        self,
        budget: float,
        source: SlotSource,
        *,
        headroom: float = HEADROOM,
        block_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        initial_rate: float | None = None,
        endpoint_class: str = "all",
        learns: bool = False,
        size_to_demand: bool = True,
    ) -> None:
        self.budget = budget * headroom
        self.endpoint_class = endpoint_class
        self.learns = learns
        """Whether the source learns the rate (``rate_limit = "auto"``); it then hears the
        429s seen and the requests sent with each reservation."""
        self.learned: float | None = None
        """The learned budget's highest rate known good, as of the last reservation."""
        self.acquired = 0
        self._waiting = 0
        """Senders inside :meth:`acquire` now: the demand a reservation is sized to."""
        self._size_to_demand = size_to_demand
        self._refused = 0
        self._reported = 0
        """:attr:`acquired` as of the last reservation: the sends since are the news."""
        self._source = source
        self._sleep = sleep
        self._block_seconds = block_seconds
        self._clock = clock
        self._slots: deque[float] = deque()
        self._rate = initial_rate if initial_rate is not None else self.budget
        self._spacing = 1.0 / self.budget if self.budget > 0 else 0.0
        self._pending_throttle: float | None = None
        self._low_water = 0
        self._offsets: deque[float] = deque(maxlen=OFFSET_SAMPLES)
        self._calibrated = False
        """Whether the first reservation has looked for a quick clock sample."""
        self._lock = asyncio.Lock()
        # The guard allows the full budget: at the paced rate it would hold back every release
        # that lands a hair under one second after the one a budget earlier.
        self._throttler = Throttler(
            rate_limit=max(1, math.floor(budget)), period=1.0, retry_interval=0.002
        )
        self._refilling: asyncio.Task[None] | None = None
        self._generation = 0
        self.throttled = 0
        self.skipped = 0

    @property
    def rate(self) -> float:
        return self._rate

    async def acquire(self) -> float:
        started = self._clock()
        self._waiting += 1
        try:
            return await self._acquire(started)
        finally:
            self._waiting -= 1

    async def _acquire(self, started: float) -> float:
        async with self._lock:
            skipped = 0
            while True:
                slot = await self._next_slot(late_ok=skipped >= MAX_SKIPS)
                wait = slot - self._clock()
                if wait > 0:
                    await self._sleep(wait)
                if skipped >= MAX_SKIPS or self._clock() - slot <= self._tolerance():
                    # The local guard counts requests sent, not slots given up.
                    await self._throttler.acquire()
                    break
                # The loop woke late (it was busy, or the process was not scheduled): this
                # slot's time is gone, and sending now would crowd the next holder's.
                skipped += 1
                self.skipped += 1
            self.acquired += 1
        return self._clock() - started

    def _tolerance(self) -> float:
        return max(LATE_TOLERANCE, 0.5 * self._spacing)

    async def _next_slot(self, *, late_ok: bool = False) -> float:
        """The next slot not already past: a late slot is skipped, not sent late.

        Sending late would push this worker's requests into the time other workers were
        given, and the server's one-second window would see more than the budget. After
        :data:`MAX_SKIPS` (``late_ok``), the latest of the past slots is taken: one late
        request, which uses a slot reserved for it, where the skipped ones went unused.
        """
        while True:
            if len(self._slots) <= self._low_water and self._refilling is None:
                # Reserve the next block before this one runs out, in the background: it then
                # continues the schedule where this one ends, and the slots in hand keep being
                # released while the reservation travels (or waits for SQLite's write lock).
                self._refilling = asyncio.create_task(self._refill(self._block_size()))
                self._refilling.add_done_callback(_retrieve)
            if not self._slots:
                assert self._refilling is not None
                await asyncio.shield(self._refilling)
                continue
            slot = self._slots.popleft()
            now = self._clock()
            if slot >= now - self._tolerance():
                return slot
            if late_ok and (not self._slots or self._slots[0] > now):
                return slot
            self.skipped += 1

    def _block_size(self) -> int:
        """Slots to reserve: a block's worth, but no more than the senders waiting now.

        Consecutive slots that this worker cannot fill (its requests all still in flight
        behind a slow API) would go unused, while other workers, idle, hold only later ones.
        """
        full = max(1, round(self._rate * self._block_seconds))
        return min(full, self._waiting) if self._waiting and self._size_to_demand else full

    async def _refill(self, count: int | None = None) -> None:
        try:
            await self._reserve(count)
        finally:
            self._refilling = None

    async def _reserve(self, count: int | None = None) -> None:
        count = count or self._block_size()
        self._low_water = count // 2
        throttled, self._pending_throttle = self._pending_throttle, None
        refused, self._refused = self._refused, 0
        reported, self._reported = self._reported, self.acquired
        sent = self.acquired - reported
        generation = self._generation
        try:
            if self.learns:
                source: Any = self._source
                block = await source(count, throttled, refused=refused, sent=sent)
            else:
                block = await self._source(count, throttled)
        except BaseException:
            if throttled is not None:
                self._pending_throttle = max(self._pending_throttle or 0.0, throttled)
            self._refused += refused
            self._reported = reported
            raise
        if block.learned is not None:
            self._note_learned(block.learned)
        if generation != self._generation:
            return  # a 429 came while this block was reserved at the old rate: drop it
        offset = self._offset(block)
        if not self._calibrated:
            # A first sample that came back slowly (the loop was busy at start-up) could place
            # the whole schedule late. A few more readings, taking no slots, find a quick one.
            sample = block
            for _ in range(CLOCK_RETRIES):
                if _quick(sample):
                    break
                sample = await self._source(0, None)
                offset = self._offset(sample)
            self._calibrated = True
        self._spacing = block.spacing
        self._note_rate(1.0 / block.spacing)
        self._slots.extend(block.first + i * block.spacing - offset for i in range(block.count))

    def _note_learned(self, learned: float) -> None:
        """Log the learned ceiling when it moves (by more than 1%)."""
        before, self.learned = self.learned, learned
        if learned > 0 and (before is None or abs(learned - before) > 0.01 * max(before, 1e-9)):
            get_logger().info(
                "rate.learned",
                endpoint_class=self.endpoint_class,
                learned_per_s=round(learned, 2),
                from_per_s=None if before is None else round(before, 2),
            )

    def _note_rate(self, rate: float) -> None:
        """Take the shared rate; its changes are logged once each (lowered, back to budget)."""
        before, self._rate = self._rate, rate
        if self.learns:
            return  # a learned rate moves every step; its ceiling's moves are logged
        if rate < before * 0.999:
            get_logger().warning(
                "rate.lowered", rate_per_s=round(rate, 3), from_per_s=round(before, 3)
            )
        elif rate >= self.budget * 0.999 > before:
            get_logger().info("rate.recovered", rate_per_s=round(rate, 3))

    def _offset(self, block: SlotBlock) -> float:
        """The source's clock minus ours, filtered as NTP does.

        A sample ``now - local`` can only be too small (our reading came late: the reply
        waited for a busy event loop), never too large, so the best estimate is the largest
        recent sample. Without the filter, a late reply shifts a whole block of slots later
        and into the time given to other workers.
        """
        local = block.local if block.local is not None else self._clock()
        self._offsets.append(block.now - local)
        return max(self._offsets)

    async def settle(self) -> None:
        """Wait for a reservation still under way (at the end of a run)."""
        if self._refilling is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._refilling)

    def on_throttled(self, retry_after: float | None) -> None:
        self.throttled += 1
        self._refused += 1
        self._generation += 1
        self._slots.clear()
        self._pending_throttle = max(self._pending_throttle or 0.0, retry_after or 0.0)


def _quick(block: SlotBlock) -> bool:
    """Whether a block's clock sample came back within :data:`GOOD_ROUND_TRIP` (or untimed)."""
    if block.sent is None or block.local is None:
        return True
    return block.local - block.sent <= GOOD_ROUND_TRIP


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a background reservation's failure as seen; the next acquire reserves again."""
    if not task.cancelled():
        task.exception()
