"""The write-back buffer: results, releases and attempt records, written in batches.

Batching keeps the database out of the hot path: one transaction per flush instead of one per
request. Flushes run one at a time and in order, and the periodic flusher is stopped between
flushes, never cancelled in the middle of one: a cancelled flush would roll its batch back and
leave those changes in flight until their leases expired.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

from .changes import AttemptRecord, Lease, Result
from .store import Store

FLUSH_INTERVAL = 0.1


class WriteBuffer:
    """Collects what the dispatcher decided; :meth:`flush` makes it durable."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        self.results: list[Result] = []
        self.attempts: list[AttemptRecord] = []
        self.releases: list[Lease] = []
        self.lost: list[int] = []
        self._lock = asyncio.Lock()

    def __bool__(self) -> bool:
        return bool(self.results or self.attempts or self.releases)

    async def flush(self) -> list[int]:
        """Write everything buffered; return the IDs whose lease had been lost meanwhile."""
        async with self._lock:
            results, self.results = self.results, []
            attempts, self.attempts = self.attempts, []
            releases, self.releases = self.releases, []
            lost: list[int] = []
            if results:
                lost = await self.store.write_back(results, self.clock())
                self.lost.extend(lost)
            if releases:
                await self.store.release(releases, self.clock())
            if attempts:
                await self.store.log_attempts(attempts)
            return lost

    async def flush_periodically(
        self, done: asyncio.Event, on_lost: Callable[[list[int]], None]
    ) -> None:
        """Flush every ``FLUSH_INTERVAL`` until ``done`` is set."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=FLUSH_INTERVAL)
            if self:
                lost = await self.flush()
                if lost:
                    on_lost(lost)
