"""The write-back buffer: results, releases and attempt records, made durable in batches.

Batching keeps the database out of the hot path: one transaction per flush, whatever it
carries, and at most one flush per ``FLUSH_INTERVAL`` after the last one ended, plus one at the
end of a run. What arrives at an idle buffer is written at once (a quiet daemon's change is
``succeeded`` within milliseconds of Kantata's answer); what arrives while a flush runs, or
just after one, waits out the interval and goes in the next batch. Flushes run one at a time
and in order.

A failed flush loses nothing: its batch goes back to the front of the buffer for the next one.
The periodic flusher rides out failures (a deadlock, a dropped connection, a restart) and
reports the error only when the database stays unusable for the time it is given. It is
stopped between flushes, never cancelled in the middle of one: a cancelled flush would roll its
batch back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import datetime

from .changes import AttemptRecord, Lease, Result
from .exceptions import DatabaseError
from .logging import get_logger
from .store import Store
from .waiting import wait_any

log = get_logger()

FLUSH_INTERVAL = 0.1
MAX_RETRY_DELAY = 2.0
"""The longest pause between flushes while they fail."""


class WriteBuffer:
    """Collects what the dispatcher decided; :meth:`flush` writes it."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        on_lost: Callable[[list[int]], None] = lambda _ids: None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_lost = on_lost
        self.results: list[Result] = []
        self.attempts: list[AttemptRecord] = []
        self.releases: list[Lease] = []
        self.flushed = asyncio.Event()
        """Set after every flush that wrote something (cleared by whoever waits for it)."""
        self._lock = asyncio.Lock()
        self._filled = asyncio.Event()
        """Set when something is buffered: it wakes the periodic flusher."""
        self._flushed_at = -math.inf
        """``time.monotonic()`` at the end of the last flush."""

    def __bool__(self) -> bool:
        return bool(self.results or self.attempts or self.releases)

    def result(self, result: Result) -> None:
        self.results.append(result)
        self._filled.set()

    def attempt(self, record: AttemptRecord) -> None:
        self.attempts.append(record)
        self._filled.set()

    def release(self, lease: Lease) -> None:
        self.releases.append(lease)
        self._filled.set()

    async def flush(self) -> None:
        """Write everything buffered now."""
        async with self._lock:
            if self:
                await self._flush()

    async def _flush(self) -> None:
        results, self.results = self.results, []
        attempts, self.attempts = self.attempts, []
        releases, self.releases = self.releases, []
        try:
            lost = await self.store.write_batch(results, releases, attempts, self.clock())
        except BaseException:
            # One transaction: nothing of it was written. Keep it, ahead of what came since.
            self.results[:0] = results
            self.attempts[:0] = attempts
            self.releases[:0] = releases
            raise
        finally:
            self._flushed_at = time.monotonic()
        self.flushed.set()
        if lost:
            self.on_lost(lost)

    async def extend(self, leases: list[Lease], lease_seconds: float) -> set[int]:
        """Extend leases between flushes, never during one (both lock this worker's rows)."""
        async with self._lock:
            return await self.store.extend(leases, lease_seconds, self.clock())

    async def flush_periodically(
        self,
        done: asyncio.Event,
        on_failed: Callable[[DatabaseError], None],
        *,
        within: float = 30.0,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        """Flush what is buffered until ``done`` is set: at once into an idle buffer, else
        ``interval`` seconds after the last flush ended.

        A failed flush is retried with backoff; when flushes have failed for ``within``
        seconds in a row, ``on_failed`` gets the error and the flusher stops (the buffer keeps
        the batch).
        """
        failures = 0
        failing_since = 0.0
        while not done.is_set():
            if failures:
                await wait_any(done, seconds=min(MAX_RETRY_DELAY, interval * 2**failures))
            else:
                await wait_any(done, self._filled)
                spacing = self._flushed_at + interval - time.monotonic()
                if spacing > 0:
                    await wait_any(done, seconds=spacing)
            self._filled.clear()
            if not self:
                continue
            try:
                await self.flush()
            except DatabaseError as exc:
                if not failures:
                    failing_since = time.monotonic()
                failures += 1
                log.warning("flush.failed", error=str(exc), failures=failures)
                if time.monotonic() - failing_since >= within:
                    on_failed(exc)
                    return
                continue
            failures = 0
