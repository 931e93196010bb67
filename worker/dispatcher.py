"""The sync loop: claim, validate, plan, send under the rate limit, classify, write back.

Workspaces run concurrently (up to ``concurrency`` senders, :mod:`worker.senders`); the steps
of one workspace run in order. When a step must wait for a retry, the workspace's later steps
are released untouched, so nothing overtakes it. Results and attempt records are buffered and
written in batches; a lost buffer is harmless because the changes come back after their lease
expires and are re-sent (a PUT is idempotent; a status change is read back before it is sent
again).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from structlog.contextvars import bound_contextvars

from .breaker import CircuitBreaker
from .changes import (
    Change,
    Lease,
    RunEnding,
    RunReport,
)
from .client import (
    KantataClient,
)
from .config import Settings
from .coordination import Coordinator
from .db import ride_out
from .exceptions import (
    DatabaseError,
    InputError,
    InternalError,
    SyncError,
    TokenRejected,
)
from .intake import admit, one_line, plans_of
from .keeper import LeaseKeeper
from .leases import LeaseBook, LeaseTerms
from .ledger import Ledger
from .logging import get_logger
from .metrics import Metrics
from .pacing import ClaimPacer
from .planner import Step, WorkspacePlan
from .proofs import split_for_proof
from .prover import BulkProver
from .ratelimit import Limiter, RateLimiter
from .senders import PlanQueue, Sender
from .steps import StepRunner
from .store import Store
from .waiting import wait_any
from .writeback import WriteBuffer

T = TypeVar("T")

HEARTBEAT_SECONDS = 5.0
MIN_IDLE_WAIT = 0.1
DEAD_AFTER_BEATS = 6
VALIDATE_CHUNK = 50


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_worker_name() -> str:
    """A unique name for a worker that was given none."""
    return f"worker-{uuid.uuid4().hex[:8]}"


class Dispatcher:
    """Runs one sync run (``run``) or many (``serve``) against one store and one client."""

    def __init__(
        self,
        store: Store,
        client: KantataClient,
        settings: Settings,
        *,
        limiter: Limiter | None = None,
        read_limiter: Limiter | None = None,
        breaker: CircuitBreaker | None = None,
        coordinator: Coordinator | None = None,
        metrics: Metrics | None = None,
        owner: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.limiter: Limiter = limiter or RateLimiter(settings.rate_budget)
        self.read_limiter: Limiter = read_limiter or self.limiter
        self.breaker = breaker or CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown
        )
        self.metrics = metrics or Metrics()
        self.owner = owner or settings.worker_name or default_worker_name()
        self.coordinator = coordinator
        self.heartbeat_interval = min(HEARTBEAT_SECONDS, settings.lease_seconds / 3)
        self.dead_after = max(DEAD_AFTER_BEATS * self.heartbeat_interval, 1.0)
        self.rng = rng or random.Random()
        self.clock = clock
        self.monotonic = monotonic
        """The clock of lease deadlines (see :mod:`worker.leases`)."""
        self.log = get_logger()
        self.on_progress: Callable[[int], None] | None = None
        self._buffer = WriteBuffer(store, clock, self._lost)
        self.pacer = ClaimPacer(self._buffer.flushed, monotonic)
        """When a run claims next (:mod:`worker.pacing`); ``serve`` gives it news of inserts."""
        self.leases = LeaseBook(
            LeaseTerms(settings.lease_seconds, self.dead_after if coordinator else None)
        )
        self.keeper = LeaseKeeper(
            self.leases,
            self._buffer,
            coordinator,
            self.owner,
            lease_seconds=settings.lease_seconds,
            interval=self.heartbeat_interval,
            db_retry_seconds=settings.db_retry_seconds,
            clock=clock,
            on_lost=self._lost,
            monotonic=monotonic,
        )
        self._ledger = self._new_ledger("")
        self.steps = self._new_steps()
        self._halt = asyncio.Event()
        self._proofs: set[asyncio.Task[None]] = set()
        """Bulk read-backs under way (:mod:`worker.prover`)."""
        self._token_rejected: TokenRejected | None = None
        self._fatal: SyncError | None = None

    async def run(self, stop: asyncio.Event | None = None, *, command: str = "run") -> RunReport:
        """Sync until nothing due is left (or ``stop`` is set); return the run's report.

        A run that fails (the database stayed unusable, something unexpected broke) still
        hands back what it holds, records its end and logs its summary, then raises the error
        that ended it.
        """
        stop = stop or asyncio.Event()
        self._ledger = self._new_ledger(uuid.uuid4().hex)
        self.log = self._ledger.log
        self.steps = self._new_steps()
        self._token_rejected = None
        self._fatal = None
        started = time.monotonic()
        await self._ride(lambda: self.keeper.register(command))
        await self._ride(
            lambda: self.store.start_run(self._ledger.run_id, self.owner, command, self.clock())
        )
        with bound_contextvars(run_id=self._ledger.run_id):
            self.log.info("run.started", worker=self.owner, command=command)
            try:
                ended_because = await self._loop(stop)
            except SyncError as exc:
                self._fatal = self._fatal or exc
                ended_because = RunEnding.ERROR
            except Exception as exc:
                self.log.error("run.internal_error", error=one_line(exc), exc_info=True)
                self._fatal = self._fatal or InternalError(one_line(exc))
                ended_because = RunEnding.ERROR
            duration = time.monotonic() - started
            await self._record_end(ended_because, duration)
        if self._fatal is not None:
            raise self._fatal
        return RunReport(self._ledger.run_id, self._ledger.stats, ended_because, duration)

    def _new_ledger(self, run_id: str) -> Ledger:
        # Resolve the logger once per run rather than on every call (structlog's lazy proxy
        # binds anew each time), and skip building per-request lines nobody will see.
        log = get_logger().bind()
        return Ledger(
            run_id,
            self.leases,
            self._buffer,
            self.metrics,
            log,
            debug=_logs_debug(log),
            on_progress=self.on_progress,
        )

    def _new_steps(self) -> StepRunner:
        return StepRunner(
            client=self.client,
            settings=self.settings,
            limiter=self.limiter,
            read_limiter=self.read_limiter,
            breaker=self.breaker,
            metrics=self.metrics,
            ledger=self._ledger,
            confirm=self.keeper.confirm,
            halted=lambda: self._halt.is_set(),
            rng=self.rng,
            clock=self.clock,
            monotonic=self.monotonic,
        )

    async def _record_end(self, ended_because: RunEnding, duration: float) -> None:
        """The run-log row and the summary line; a failure here never hides the run's error."""
        try:
            await self._ride(
                lambda: self.store.finish_run(
                    self._ledger.run_id, self._ledger.stats, ended_because, self.clock(), duration
                )
            )
        except DatabaseError as exc:
            self.log.error("run.unrecorded", error=str(exc))
            self._fatal = self._fatal or exc
        self.metrics.run_duration.set(duration)
        self.export_rates()
        if ended_because in {RunEnding.DRAINED, RunEnding.STOPPED}:
            self.metrics.last_success.set(time.time())
        self._ledger.summarise(ended_because, duration, self._fatal)

    async def _ride(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a database operation, riding out blips for up to ``db_retry_seconds``."""
        return await ride_out(
            operation, within=self.settings.db_retry_seconds, on_retry=self._db_retrying
        )

    def _db_retrying(self, exc: DatabaseError, failures: int) -> None:
        if failures == 1:
            self.log.warning("db.retrying", error=str(exc), within_s=self.settings.db_retry_seconds)

    async def _loop(self, stop: asyncio.Event) -> RunEnding:
        queue = PlanQueue(self.settings.batch_size)
        halt = self._halt = asyncio.Event()
        sender = Sender(
            self.steps,
            self._ledger,
            self.log,
            on_fatal=self._end_with,
            on_rejected=self._rejected,
        )
        workers = [
            asyncio.create_task(sender.work(queue, halt)) for _ in range(self.settings.concurrency)
        ]
        flushing_done = asyncio.Event()
        flusher = asyncio.create_task(
            self._buffer.flush_periodically(
                flushing_done, self._end_with, within=self.settings.db_retry_seconds
            )
        )
        heartbeat = asyncio.create_task(self.keeper.keep_alive(self._end_with))
        ended_because = RunEnding.DRAINED
        try:
            while not stop.is_set() and self._token_rejected is None and self._fatal is None:
                # Claim the next batch while a whole one is still queued, so that the workers
                # never wait for a claim; they say when the queue runs low.
                if queue.full:
                    queue.hungry.clear()
                    await wait_any(stop, halt, queue.hungry, seconds=1.0)
                    continue
                self.pacer.claiming()
                claimed = await self._ride(self._claim)
                if claimed:
                    ready, proving = split_for_proof(claimed)
                    for workspace_plan in claimed:
                        queue.expect(workspace_plan)
                    for workspace_plan in ready:
                        queue.put(workspace_plan)
                    if proving:
                        self._prove(proving, queue)
                    if self.pacer.more_left:
                        continue
                if self._busy(queue):
                    await self.pacer.wait_in_hand(stop, halt)
                    continue
                await self._ride(self.flush)
                wait = await self._ride(self._seconds_until_due)
                if wait is None:
                    break
                # An empty claim never spins: wait a little even when something looks due.
                await wait_any(stop, halt, seconds=min(max(wait, MIN_IDLE_WAIT), 1.0))
            if self._fatal is not None:
                ended_because = RunEnding.ERROR
            elif self._token_rejected is not None:
                ended_because = RunEnding.TOKEN_REJECTED
            elif stop.is_set():
                ended_because = RunEnding.STOPPED
            halt.set()
            await self._drain(queue, workers)
        finally:
            halt.set()
            proofs = list(self._proofs)
            for task in [*workers, heartbeat, *proofs]:
                task.cancel()
            await asyncio.gather(*workers, heartbeat, *proofs, return_exceptions=True)
            await self.limiter.settle()
            await self.read_limiter.settle()
            # The flusher is stopped, never cancelled: a cancelled write-back would roll back.
            flushing_done.set()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._hand_back()
        return ended_because

    async def _hand_back(self) -> None:
        """At the end of a run: write what is buffered and return every held change.

        Each part rides out a database blip; if the database stays gone, the error is logged
        and kept (the run's own error, if any, stays the one reported) and the leases expire.
        """
        try:
            await self._ride(self.flush)
            await self._ride(self._release_held)
        except DatabaseError as exc:
            self.log.error(
                "run.hand_back_failed", error=str(exc), held=len(self.leases), pending_writes=True
            )
            self._fatal = self._fatal or exc

    def _busy(self, queue: PlanQueue) -> bool:
        return bool(len(self.leases)) or not queue.empty()

    async def _seconds_until_due(self) -> float | None:
        now = self.clock()
        due = await self.store.next_due(now, now + timedelta(seconds=self.settings.retry_max_delay))
        if due is None:
            return None
        return max(0.0, (due - now).total_seconds())

    async def _drain(self, queue: PlanQueue, workers: list[Any]) -> None:
        """Let in-flight requests finish within the grace period; everything else goes back.

        Queued plans are released at once, and so are steps still waiting for the rate limiter
        or the breaker (their task is cancelled): they were never sent, so they are charged no
        attempt.
        """
        for workspace_plan in queue.close(len(workers)):
            self._release_steps(workspace_plan.steps)
        proofs = list(self._proofs)
        for task in [*workers, *proofs]:
            if task not in self.steps.sending:
                task.cancel()
        _done, pending = await asyncio.wait([*workers, *proofs], timeout=self.settings.grace_period)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _claim(self) -> list[WorkspacePlan]:
        self.store.check_alive()
        since = self.monotonic()
        rows = await self.store.claim(
            self.owner,
            self.settings.batch_size,
            self.settings.lease_seconds,
            self.clock(),
            self.dead_after if self.coordinator is not None else None,
        )
        self.pacer.claimed(len(rows), self.settings.batch_size)
        if not rows:
            return []
        self._ledger.stats.claimed += len(rows)
        valid: list[Change] = []
        for index, row in enumerate(rows):
            if index and not index % VALIDATE_CHUNK:
                # Validating a whole batch takes milliseconds: let requests that are due go.
                await asyncio.sleep(0)
            self._ledger.hold(Lease(row.id, row.lease_token), since)
            try:
                valid.append(admit(row))
            except InputError as exc:
                self._ledger.invalid(row, exc)
        planned = plans_of(valid)
        self._release_steps(tuple(planned.later))
        return planned.plans

    def _prove(self, plans: list[WorkspacePlan], queue: PlanQueue) -> None:
        """Read the plans' ambiguous status changes back in bulk, then queue what is left."""

        def deliver(before: WorkspacePlan, after: WorkspacePlan | None) -> None:
            if after is not None and self._halt.is_set():
                self._release_steps(after.steps)
            elif after is not None:
                queue.expect(after)
                queue.put(after)
            queue.forget(before)

        task = asyncio.create_task(BulkProver(self.steps).run(plans, deliver, self._rejected))
        self._proofs.add(task)
        task.add_done_callback(self._proofs.discard)

    def _rejected(self, exc: TokenRejected) -> None:
        self._token_rejected = exc
        self._halt.set()

    def _release_steps(self, steps: tuple[Step, ...]) -> None:
        """Hand unsent changes back to the queue untouched, at the next flush."""
        self._ledger.release_steps(steps)

    async def _release_held(self) -> None:
        await self._ledger.release_held(self.store, self.clock())

    def export_rates(self) -> None:
        """Set the rate gauges from the limiters (none when the rate limit is off)."""
        for limiter in dict.fromkeys([self.limiter, self.read_limiter]):
            if limiter.budget > 0:
                self.metrics.limiter(limiter)

    async def flush(self) -> None:
        """Write buffered results, releases and attempt records now."""
        await self._buffer.flush()

    def _end_with(self, exc: SyncError) -> None:
        """End the run with ``exc`` (the first such error wins); what is held goes back."""
        if self._fatal is None:
            self.log.error("run.ending", error=str(exc), error_type=type(exc).__name__)
        self._fatal = self._fatal or exc
        self._halt.set()

    def _lost(self, change_ids: list[int]) -> None:
        self._ledger.lost(change_ids)

    async def register(self, command: str) -> None:
        """Join the worker registry (once per process); see :mod:`worker.coordination`."""
        await self.keeper.register(command)

    async def heartbeat(self) -> None:
        """Tell the registry this worker lives, and extend the leases it holds."""
        await self.keeper.beat()

    async def close(self) -> None:
        """Leave the worker registry (a failure is logged, never raised)."""
        await self.keeper.deregister()


def _logs_debug(log: Any) -> bool:
    enabled = getattr(log, "is_enabled_for", None)
    return bool(enabled(logging.DEBUG)) if callable(enabled) else True
