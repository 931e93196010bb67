"""When a run with work in hand looks for more: the pacing of its claims.

A claim that filled its batch may leave more behind: the next follows at once. One that took
fewer rows took everything claimable, so the run waits: for the next write-back flush (it frees
the next changes of the workspaces in hand), for news of inserted changes (``serve`` wires
:meth:`~worker.coordination.Coordinator.notifications`), or at most :attr:`ClaimPacer.recheck`
seconds. News prompts a claim no sooner than :data:`NEWS_SPACING` after the last one started,
so a producer committing every millisecond costs at most 20 claims a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .waiting import wait_any
from .writeback import FLUSH_INTERVAL

NEWS_SPACING = 0.05
"""Seconds at least between the starts of claims that news of inserts prompts."""


class ClaimPacer:
    """Says when a run claims next; ``flushed`` is the write buffer's flush event."""

    def __init__(
        self, flushed: asyncio.Event, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.flushed = flushed
        self.monotonic = monotonic
        self.news: asyncio.Event | None = None
        """Set when producers insert; None: wait for flushes alone."""
        self.recheck = FLUSH_INTERVAL
        """Seconds at most that a run with work in hand waits before it claims again."""
        self.more_left = False
        """Whether the last claim filled its batch, so that more may be waiting."""
        self._claimed_at = float("-inf")

    def claiming(self) -> None:
        """A claim starts: news from now on is news for the next wait."""
        if self.news is not None:
            self.news.clear()
        self._claimed_at = self.monotonic()

    def claimed(self, rows: int, limit: int) -> None:
        self.more_left = rows >= limit

    async def wait_in_hand(self, stop: asyncio.Event, halt: asyncio.Event) -> None:
        """Nothing claimable yet and work in hand: wait as the module says."""
        self.flushed.clear()
        if self.news is None:
            await wait_any(stop, halt, self.flushed, seconds=self.recheck)
            return
        started = self.monotonic()
        early = self._claimed_at + NEWS_SPACING - started
        if early > 0:
            await wait_any(stop, halt, self.flushed, seconds=early)
            if stop.is_set() or halt.is_set() or self.flushed.is_set():
                return
        left = self.recheck - (self.monotonic() - started)
        await wait_any(stop, halt, self.flushed, self.news, seconds=max(left, 0.0))
