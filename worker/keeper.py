"""Keeping a worker's leases: registry heartbeats, extensions, and re-validation before a send.

A heartbeat refreshes the worker's row in the registry and then extends every lease it holds,
each in one statement; the lease book records when each succeeded. A failed heartbeat is
logged, retried every second, and never ends the task silently: while it fails, the deadlines
of :mod:`worker.leases` run out and sending stops by itself, and only when the database stays
unusable for ``db_retry_seconds`` is the run ended, with the database's error.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from .changes import Lease
from .coordination import Coordinator
from .exceptions import DatabaseError
from .leases import LeaseBook
from .logging import get_logger
from .writeback import WriteBuffer

RETRY_INTERVAL = 1.0
"""Seconds between heartbeats while they fail."""


class LeaseKeeper:
    """Heartbeats and lease extensions for one worker (``owner``)."""

    def __init__(
        self,
        book: LeaseBook,
        buffer: WriteBuffer,
        coordinator: Coordinator | None,
        owner: str,
        *,
        lease_seconds: float,
        interval: float,
        db_retry_seconds: float,
        clock: Callable[[], datetime],
        on_lost: Callable[[list[int]], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book
        self.buffer = buffer
        self.coordinator = coordinator
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.db_retry_seconds = db_retry_seconds
        self.clock = clock
        self.on_lost = on_lost
        self.monotonic = monotonic
        self.registered = False
        self.problem: str | None = None
        """Why the last heartbeat failed (the database cannot be written), or None."""
        self._confirming = asyncio.Lock()
        self.log: Any = get_logger()

    async def register(self, command: str) -> None:
        """Join the worker registry (once per process)."""
        if self.coordinator is None or self.registered:
            return
        since = self.monotonic()
        await self.coordinator.register(
            self.owner, socket.gethostname(), os.getpid(), command, self.clock()
        )
        self.book.alive(since)
        self.registered = True

    async def beat(self) -> None:
        """Refresh the registry row, then extend every held lease; drop the lost ones."""
        try:
            await self._beat()
        except DatabaseError as exc:
            self.problem = f"cannot be written: {exc}"
            raise
        self.problem = None

    async def _beat(self) -> None:
        if self.coordinator is not None and self.registered:
            since = self.monotonic()
            await self.coordinator.heartbeat(self.owner, self.clock())
            self.book.alive(since)
        leases = self.book.leases()
        if not leases:
            return
        since = self.monotonic()
        held = await self.buffer.extend(leases, self.lease_seconds)
        self.book.confirmed(held, since)
        # A lease can be lost while its change waits here (a stall longer than the lease):
        # another worker owns it now, so this one must not send it.
        lost = self.book.lost(lease.change_id for lease in leases if lease.change_id not in held)
        if lost:
            self.on_lost(lost)

    async def confirm(self, leases: Iterable[Lease | int]) -> bool:
        """Whether ``leases`` (or change IDs) may be sent under now; re-validates if needed.

        Called right before a request leaves. Past the deadline, the leases are checked (and
        extended) in the database; if that fails or any lease was taken over, nothing may be
        sent, and the caller hands the step back.
        """
        ids = list(leases)
        if not self.book.stale(ids, self.monotonic()):
            return True
        async with self._confirming:  # one re-validation serves every step waiting on it
            if self.book.stale(ids, self.monotonic()):
                try:
                    await self.beat()
                except DatabaseError as exc:
                    self.log.warning(
                        "lease.unconfirmed",
                        change_ids=[i if isinstance(i, int) else i.change_id for i in ids],
                        error=str(exc),
                    )
                    return False
        return not self.book.stale(ids, self.monotonic())

    async def keep_alive(self, on_failed: Callable[[DatabaseError], None]) -> None:
        """Heartbeat every ``interval`` until cancelled; ``on_failed`` if the database is gone."""
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self.interval if failing_since is None else RETRY_INTERVAL)
            try:
                await self.beat()
            except DatabaseError as exc:
                now = self.monotonic()
                if failing_since is None:
                    failing_since = now
                    self.log.warning("heartbeat.failed", error=str(exc), held=len(self.book))
                if now - failing_since >= self.db_retry_seconds:
                    self.log.error(
                        "heartbeat.gave_up",
                        error=str(exc),
                        failing_s=round(now - failing_since, 1),
                    )
                    on_failed(exc)
                    return
                continue
            if failing_since is not None:
                self.log.info(
                    "heartbeat.recovered",
                    failing_s=round(self.monotonic() - failing_since, 1),
                    held=len(self.book),
                )
                failing_since = None

    async def deregister(self) -> None:
        """Leave the registry; a failure is logged, never raised (the row goes stale anyway)."""
        if self.coordinator is None or not self.registered:
            return
        try:
            await self.coordinator.deregister(self.owner)
        except DatabaseError as exc:
            self.log.warning("worker.deregister_failed", error=str(exc))
        self.registered = False
