"""``serve``'s drift sweep: ``verify``, slowly and over and over, within a share of the budget.

With ``verify_interval`` set, ``serve`` walks the synced workspaces every ``verify_interval``
seconds (the next sweep starts at once if one took longer), with :mod:`worker.verify`'s reading
and comparing and :mod:`worker.desired`'s desired state, one chunk of 200 workspaces at a time.
It reports, and never repairs: the gauges ``kantata_sync_drift_fields``,
``kantata_sync_drift_workspaces``, ``kantata_sync_verify_missing_workspaces`` and
``kantata_sync_verify_unreadable_workspaces`` hold what the last *completed* sweep found,
``kantata_sync_verify_last_sweep_timestamp_seconds`` when it completed; each drifted field is
logged (``verify.drift``, the first :data:`LOGGED_FINDINGS` of a sweep) and each sweep ends
with one ``verify.sweep_finished`` line.

Its share of the budget: each read first waits for its own pace, ``verify_budget_share`` of
the shared rate (``rate_limit`` less the limiter's 2% headroom, lower while 429s have lowered
it) in requests a second (:class:`PacedLimiter`), and then takes a slot of the shared limiter
like any request, so the writes keep the rest of the budget. A read that is retried (429, 5xx)
is paced again. With ``rate_limit`` 0 (no limiter) the sweep is not paced, but reads one chunk
at a time.

It does not run while ``blocked`` names a reason (the daemon's token was rejected, or its
database is failing): a sweep under way stops before its next read, and no gauge moves; the
sweep runs once nothing stops it (it looks every :data:`RECHECK_SECONDS`). A sweep that meets
a 401 itself ends, and tries again at the next interval. It stops at once when
``stop`` is set (SIGTERM): a read in flight is abandoned, which is harmless for a read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

from .client import KantataClient
from .config import Settings
from .desired import OutboxRow
from .drift import Finding
from .exceptions import SyncError, TokenRejected
from .intake import one_line
from .logging import get_logger
from .metrics import Metrics
from .outbox_reads import OutboxReader
from .ratelimit import Limiter
from .store import Store
from .verify import VerifyOptions, VerifyStats, WorkspaceReader, verify

LOGGED_FINDINGS = 50
"""Drift findings logged one by one per sweep; the summary line counts them all."""
RECHECK_SECONDS = 5.0
"""How often a held-back sweep looks again whether it may run."""


class SweepPaused(SyncError):
    """The sweep may not go on (the token was rejected, the database is failing)."""


class PacedLimiter:
    """Lets acquisitions through to ``inner`` at ``share`` of its current rate, at most.

    The pace is ``share * inner.rate`` a second, read at every acquisition: the share of the
    token's budget (the shared limiter's rate is the budget less its 2% headroom), which slows
    down with the shared rate when a 429 lowers it. Releases follow an even schedule (each one
    no earlier than the previous plus 1 / pace, a pause buying no burst), so that over any
    time *t* at most ``1 + t * pace`` pass. No limiter (an infinite rate): nothing is paced.
    ``blocked`` is asked before and after the wait: a reason raises :class:`SweepPaused`.
    """

    def __init__(
        self,
        inner: Limiter,
        share: float,
        *,
        blocked: Callable[[], str | None] = lambda: None,
        on_acquired: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.share = share
        self.budget = inner.budget
        self.throttled = 0
        self.acquired = 0
        self.learned: float | None = None
        self.endpoint_class = inner.endpoint_class
        self.blocked = blocked
        self.on_acquired = on_acquired
        self._clock = clock
        self._sleep = sleep
        self.next_release = -math.inf
        """When (on ``clock``) the next acquisition may pass at the earliest."""
        self._lock = asyncio.Lock()

    def pace(self) -> float | None:
        """Acquisitions a second let through now (None: not paced)."""
        pace = self.inner.rate * self.share
        return pace if math.isfinite(pace) and pace > 0 else None

    @property
    def rate(self) -> float:
        return self.pace() or self.inner.rate

    def _check(self) -> None:
        reason = self.blocked()
        if reason is not None:
            raise SweepPaused(reason)

    async def acquire(self) -> float:
        started = self._clock()
        self._check()
        async with self._lock:
            now = self._clock()
            pace = self.pace()
            slot = max(self.next_release, now)
            self.next_release = slot + (1.0 / pace if pace else 0.0)
            if slot > now:
                await self._sleep(slot - now)
        self._check()
        await self.inner.acquire()
        self.on_acquired()
        return self._clock() - started

    async def settle(self) -> None:
        """Nothing of its own runs in the background; the shared limiter is not this one's."""

    def on_throttled(self, retry_after: float | None) -> None:
        """A 429 on a read slows everyone sharing the token, as it does for writes."""
        self.throttled += 1
        self.inner.on_throttled(retry_after)


class ShieldedOutbox(OutboxReader):
    """The outbox reads of a sweep, which a stopping sweep lets finish.

    A sweep is abandoned at once on SIGTERM, but a database read cut off half-way can leave
    its connection checked out with its transaction open (on SQLite, with the write lock that
    every transaction takes), and the daemon's own last writes would wait for it. So each read
    runs shielded: the sweep stops, the read completes (milliseconds) and returns its
    connection.
    """

    async def synced_workspaces(
        self,
        *,
        workspaces: Sequence[int] = (),
        since: datetime | None = None,
        limit: int | None = None,
        chunk: int = 200,
    ) -> AsyncIterator[list[int]]:
        pages = super().synced_workspaces(
            workspaces=workspaces, since=since, limit=limit, chunk=chunk
        )
        while True:
            try:
                ids = await asyncio.shield(anext(pages))
            except StopAsyncIteration:
                return
            yield ids

    async def history(self, workspace_ids: Sequence[int]) -> list[OutboxRow]:
        return await asyncio.shield(super().history(workspace_ids))


class Sweeper:
    """Sweeps for drift every ``settings.verify_interval`` seconds until ``stop``."""

    def __init__(
        self,
        store: Store,
        client: KantataClient,
        limiter: Limiter,
        settings: Settings,
        metrics: Metrics,
        *,
        blocked: Callable[[], str | None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        if settings.verify_interval is None:
            raise ValueError("no verify_interval: nothing to sweep for")
        self.store = store
        self.client = client
        self.limiter = limiter
        self.settings = settings
        self.metrics = metrics
        self.blocked = blocked
        self.interval = settings.verify_interval
        self.paced = PacedLimiter(
            limiter,
            settings.verify_budget_share,
            blocked=blocked,
            on_acquired=metrics.verify_reads.inc,
        )
        """One pace for every sweep: a new sweep does not start with a free read."""
        self.rng = rng or random.Random()
        self.log = get_logger()
        self.completed = 0
        """Sweeps completed since the start."""
        self.held_back = 0
        """Sweeps not started, or stopped, because ``blocked`` named a reason."""
        self.stopped = asyncio.Event()
        """Set once :meth:`run` has returned (or was cancelled)."""
        self._holding: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep, wait for the rest of the interval, again; return as soon as ``stop`` is set."""
        self.log.info(
            "verify.sweeping",
            interval_s=self.interval,
            reads_per_s=_rounded(self.paced.pace()),
        )
        try:
            await self._sweep_until(stop)
        finally:
            self.stopped.set()

    async def _sweep_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            reason = self.blocked()
            if reason is None:
                failure = await _unless(stop, self.sweep())
                if failure is not None:  # a bug must not end the sweeping, nor pass unseen
                    self.log.error(
                        "verify.sweep_internal_error", error=one_line(failure), exc_info=failure
                    )
            else:
                self.held_back += 1
                if reason != self._holding:
                    self.log.info("verify.sweep_held_back", reason=reason)
            self._holding = reason
            # Held back, it looks again soon: a sweep is due as soon as nothing stops it.
            wait = self.interval if reason is None else min(self.interval, RECHECK_SECONDS)
            rest = started + wait - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(rest, 0.0))

    async def sweep(self) -> VerifyStats | None:
        """One sweep over every synced workspace; its stats, or None if it did not complete."""
        stats = VerifyStats()
        reader = WorkspaceReader(self.client, self.paced, self.settings, stats, rng=self.rng)
        started = time.monotonic()
        logged = 0
        try:
            async for finding in verify(
                ShieldedOutbox(self.store.engine), reader, VerifyOptions(), parallel=1
            ):
                if finding.finding is not Finding.UNREADABLE and logged < LOGGED_FINDINGS:
                    logged += 1
                    self.log.warning(
                        "verify.drift",
                        workspace_id=finding.workspace_id,
                        finding=str(finding.finding),
                        field=finding.field,
                        change_id=finding.change_id,
                    )
        except SweepPaused as exc:
            self.held_back += 1
            self.log.info("verify.sweep_stopped", reason=str(exc), **stats.to_json())
            return None
        except TokenRejected as exc:
            self.log.error("verify.token_rejected", error=str(exc), retry_in_s=self.interval)
            return None
        except SyncError as exc:
            self.log.warning("verify.sweep_failed", error=str(exc), error_type=type(exc).__name__)
            return None
        self.completed += 1
        self.metrics.swept(
            drifted_fields=stats.drifted_fields,
            drifted_workspaces=len(stats.drifted_workspaces),
            missing=stats.missing,
            unreadable=stats.unreadable,
            finished_at=time.time(),
        )
        self.log.info(
            "verify.sweep_finished",
            duration_s=round(time.monotonic() - started, 3),
            **stats.to_json(),
        )
        return stats


async def _unless(stop: asyncio.Event, work: Awaitable[object]) -> Exception | None:
    """Await ``work``, abandoning it as soon as ``stop`` is set; what it raised, if anything."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopping):
            pending.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
    if task.cancelled():
        return None
    failure = task.exception()
    return failure if isinstance(failure, Exception) else None


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
