"""A worker that stalls past its lease sends nothing stale, and its heartbeat cannot die silently.

The stall is made in-process and deterministic: the first worker's rate limiter runs a whole
second worker to completion inside the first worker's wait for a send slot, and its monotonic
clock jumps by the length of the stall. The acceptance tests freeze real processes with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from worker.client import KantataClient
from worker.coordination import Coordinator
from worker.dispatcher import Dispatcher
from worker.exceptions import DatabaseError
from worker.metrics import Metrics
from worker.ratelimit import RateLimiter
from worker.sandbox import FaultConfig
from worker.sandbox.testing import SandboxHandle
from worker.store import Store

from .pipeline_helpers import all_rows, fast_settings, status, update

LEASE = 6.0


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StallingLimiter(RateLimiter):
    """No rate limit; the first acquire runs ``during_stall`` and then returns."""

    def __init__(self, during_stall: Callable[[], Awaitable[None]]) -> None:
        super().__init__(0)
        self.during_stall: Callable[[], Awaitable[None]] | None = during_stall

    async def acquire(self) -> float:
        stall, self.during_stall = self.during_stall, None
        if stall is not None:
            await stall()
        return 0.0


@contextlib.asynccontextmanager
async def worker(
    store: Store,
    sandbox: SandboxHandle,
    owner: str,
    *,
    limiter: RateLimiter | None = None,
    coordinator: Coordinator | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] | None = None,
    **overrides: Any,
) -> AsyncIterator[Dispatcher]:
    settings = fast_settings(sandbox, **{"lease_seconds": LEASE, **overrides})
    async with KantataClient(
        settings.api_base_url, settings.api_token(), timeout=settings.request_timeout
    ) as client:
        yield Dispatcher(
            store,
            client,
            settings,
            limiter=limiter or RateLimiter(0),
            coordinator=coordinator,
            metrics=Metrics(),
            owner=owner,
            clock=clock,
            **({"monotonic": monotonic} if monotonic is not None else {}),
        )


async def test_a_worker_that_stalled_past_its_lease_sends_nothing_stale(
    store: Store, sandbox: SandboxHandle
) -> None:
    first, _ = await store.enqueue([update(1, title="old"), status(2, 310)])
    mono = FakeMonotonic()
    sent_by_survivor: list[int] = []
    later = datetime.now(UTC) + timedelta(seconds=2 * LEASE)

    async def meanwhile() -> None:
        # The stalled worker holds both changes. Past their lease, another worker takes them
        # over, sends them, and then a newer title too.
        await store.enqueue([update(1, title="new")])
        async with worker(store, sandbox, "survivor", clock=lambda: later) as survivor:
            report = await survivor.run()
        assert report.stats.succeeded == 3
        sent_by_survivor.append(report.stats.requests)
        mono.now += 2 * LEASE  # the stall, as the stalled worker's monotonic clock saw it

    with capture_logs() as logs:
        async with worker(
            store,
            sandbox,
            "stalled",
            limiter=StallingLimiter(meanwhile),
            monotonic=mono,
            concurrency=1,  # both changes wait behind the stall
        ) as stalled:
            report = await asyncio.wait_for(stalled.run(), timeout=30)

    # The stalled worker woke up, found its leases taken over, and sent nothing.
    assert report.stats.requests == 0
    assert report.stats.lost_leases == 2
    assert sandbox.state.workspaces[1].to_json()["title"] == "new"
    assert [c.to_status_key for c in sandbox.state.status_changes(2)] == [310]
    assert sandbox.state.stats.count() == sum(sent_by_survivor)  # the survivor's, no more
    lost = [e for e in logs if e["event"] == "lease.lost"]
    assert sum(e["count"] for e in lost) == 2
    rows = await all_rows(store)
    assert {r["state"] for r in rows.values()} == {"succeeded"}
    assert rows[first]["lease_owner"] is None


async def test_a_stall_that_cost_no_lease_sends_after_revalidating(
    store: Store, sandbox: SandboxHandle
) -> None:
    await store.enqueue([update(1, title="mine")])
    mono = FakeMonotonic()

    async def stall() -> None:
        mono.now += 2 * LEASE  # long past the deadline, but nobody took the change

    async with worker(
        store, sandbox, "slow", limiter=StallingLimiter(stall), monotonic=mono
    ) as slow:
        report = await asyncio.wait_for(slow.run(), timeout=30)
    assert report.stats.requests == 1
    assert report.stats.lost_leases == 0
    assert sandbox.state.workspaces[1].to_json()["title"] == "mine"


class FailingHeartbeats(Coordinator):
    """A registry whose heartbeat statement fails ``failures`` times in a row."""

    def __init__(self, engine: Any, failures: int) -> None:
        super().__init__(engine)
        self.failures = failures
        self.calls = 0

    async def heartbeat(self, name: str, now: datetime) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise DatabaseError("heartbeating: the server is restarting")
        await super().heartbeat(name, now)


async def test_a_failing_heartbeat_is_logged_retried_and_recovers(
    store: Store, sandbox_factory: Any
) -> None:
    await store.enqueue([update(w, title=f"t{w}") for w in range(1, 41)])
    coordinator = FailingHeartbeats(store.engine, failures=2)
    with capture_logs() as logs:
        async with (
            sandbox_factory(faults=FaultConfig(latency_ms=150)) as slow_sandbox,
            worker(store, slow_sandbox, "beating", coordinator=coordinator, concurrency=1) as w,
        ):
            w.heartbeat_interval = w.keeper.interval = 0.3
            report = await asyncio.wait_for(w.run(), timeout=60)
    events = [e["event"] for e in logs]
    assert events.count("heartbeat.failed") == 1  # once per outage, not once per try
    assert "heartbeat.recovered" in events
    assert coordinator.calls >= 3
    assert report.stats.succeeded == 40


async def test_a_heartbeat_that_stays_dead_ends_the_run_with_its_error(
    store: Store, sandbox_factory: Any
) -> None:
    await store.enqueue([update(w, title=f"t{w}") for w in range(1, 200)])
    coordinator = FailingHeartbeats(store.engine, failures=10**6)
    with capture_logs() as logs:
        async with (
            sandbox_factory(faults=FaultConfig(latency_ms=100)) as slow_sandbox,
            worker(
                store,
                slow_sandbox,
                "dying",
                coordinator=coordinator,
                concurrency=1,
                db_retry_seconds=1.5,
            ) as w,
        ):
            w.heartbeat_interval = w.keeper.interval = 0.2
            with pytest.raises(DatabaseError, match="restarting"):
                await asyncio.wait_for(w.run(), timeout=60)
    events = [e["event"] for e in logs]
    assert "heartbeat.gave_up" in events
    [summary] = [e for e in logs if e["event"] == "run.finished"]
    assert summary["ended_because"] == "error"
    rows = await all_rows(store)
    # What the run held went back to the queue; nothing is left in flight.
    assert "in_flight" not in {r["state"] for r in rows.values()}
    assert {r["state"] for r in rows.values()} <= {"succeeded", "pending"}


class Clock:
    """A wall clock the test can move forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def test_a_plan_whose_change_this_worker_claimed_again_is_stale(
    store: Store, sandbox_factory: Any
) -> None:
    """The worker's own lease expires while a plan waits (a long database outage); its next
    claim takes the change again, with a newer one, and sends them. The old plan, still
    holding the old token, must send nothing when its turn comes, even while the newer
    plan's request is still on its way."""
    await store.enqueue([update(1, title="old")])
    clock = Clock()
    running: list[Dispatcher] = []

    async def meanwhile() -> None:
        await store.enqueue([update(1, title="new")])
        clock.offset = timedelta(seconds=3 * 30)  # past the lease: the next claim reclaims
        for _ in range(500):  # until the other worker task's request for the newer plan is out
            if running[0].steps.sending:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the newer plan was never sent")

    async with (
        sandbox_factory(faults=FaultConfig(latency_ms=300)) as sandbox,
        worker(
            store,
            sandbox,
            "outage",
            limiter=StallingLimiter(meanwhile),
            clock=clock,
            concurrency=2,
            lease_seconds=30,
        ) as outage,
    ):
        running.append(outage)
        report = await asyncio.wait_for(outage.run(), timeout=30)
        title = sandbox.state.workspaces[1].to_json()["title"]
        sent = sandbox.state.stats.count()
    assert title == "new"  # not overwritten by the stale "old"
    assert sent == report.stats.requests == 1
    rows = await all_rows(store)
    assert {r["state"] for r in rows.values()} == {"succeeded"}
