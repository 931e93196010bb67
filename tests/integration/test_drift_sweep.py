"""``serve`` with ``verify_interval``: drift found and exported within its share (sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from worker.changes import State
from worker.client import KantataClient
from worker.daemon import Daemon, ServeOptions
from worker.metrics import Metrics
from worker.runtime import dispatcher_for
from worker.sandbox import FaultConfig
from worker.sandbox.state import Route
from worker.sandbox.testing import SandboxHandle
from worker.store import Store
from worker.sweep import Sweeper

from .pipeline_helpers import TOKEN, eventually, fast_settings, status, update

INDEX = Route.GET_WORKSPACES


@contextlib.asynccontextmanager
async def serving(
    store: Store, sandbox: SandboxHandle, **settings: Any
) -> AsyncIterator[tuple[Daemon, asyncio.Task[Any]]]:
    """A daemon wired as ``serve`` wires it (shared budget on the store), running."""
    configured = fast_settings(sandbox, **settings)
    async with KantataClient(
        configured.api_base_url, configured.api_token(), timeout=configured.request_timeout
    ) as client:
        dispatcher = dispatcher_for(configured, store, client, Metrics())
        daemon = Daemon(dispatcher, ServeOptions(poll_interval=0.05, http_port=0))
        task = asyncio.create_task(daemon.run())
        await eventually(lambda: daemon.ready.is_set() or task.done())
        if task.done():
            task.result()
        try:
            yield daemon, task
        finally:
            daemon.request_stop("test over")
            await asyncio.wait_for(task, 30)


def sweeper_of(daemon: Daemon) -> Sweeper:
    assert daemon.sweeper is not None
    return daemon.sweeper


async def scrape(daemon: Daemon) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/metrics") as got:
        text = await got.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def synced(store: Store) -> bool:
    counts = await store.counts()
    return counts[State.PENDING] + counts[State.IN_FLIGHT] == 0


async def test_serve_sweeps_for_drift_within_its_share_and_exports_it(
    store: Store, sandbox: SandboxHandle
) -> None:
    rate_limit, share = 20.0, 0.1  # the sweep may read 2 times a second
    changes = [update(w, title=f"T{w}", budgeted=True) for w in range(1, 11)] + [status(4, 310)]
    ids = await store.enqueue(changes)
    started = time.monotonic()
    async with serving(
        store, sandbox, rate_limit=rate_limit, verify_interval=0.05, verify_budget_share=share
    ) as (daemon, _task):
        sweeper = sweeper_of(daemon)
        await eventually(lambda: synced(store))
        # A sweep that began after everything was written back finds Kantata in step.
        after_sync = sweeper.completed + 1
        await eventually(lambda: sweeper.completed > after_sync)
        before = await scrape(daemon)
        assert (before["kantata_sync_drift_fields"], before["kantata_sync_drift_workspaces"]) == (
            0,
            0,
        )
        assert before["kantata_sync_verify_last_sweep_timestamp_seconds"] > 0

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sandbox.origin}/__sandbox__/workspaces/7/edit",
                json={"workspace": {"title": "Renamed in the UI"}},
            ) as edited,
        ):
            assert edited.status == 200

        async def drift_seen() -> bool:
            return (await scrape(daemon))["kantata_sync_drift_fields"] == 1

        await eventually(drift_seen)
        after = await scrape(daemon)
        assert after["kantata_sync_drift_workspaces"] == 1
        assert after["kantata_sync_verify_missing_workspaces"] == 0
        assert after["kantata_sync_verify_unreadable_workspaces"] == 0
        assert (
            after["kantata_sync_verify_last_sweep_timestamp_seconds"]
            > before["kantata_sync_verify_last_sweep_timestamp_seconds"]
        )
    elapsed = time.monotonic() - started
    reads = sandbox.state.stats.count(INDEX)
    # Every index read was the sweep's (10 workspaces: one read a sweep), counted as such, and
    # never faster than its share: 2 a second, whatever the interval (0.05 s) asks.
    assert reads == after["kantata_sync_verify_read_requests_total"] >= 3
    assert reads <= 1 + elapsed * rate_limit * share
    assert sandbox.state.stats.count(Route.GET_WORKSPACE) == 0
    # Reported, not repaired: nothing was enqueued, and Kantata keeps the edit.
    assert sum((await store.counts()).values()) == len(ids)
    assert sandbox.state.workspaces[7].fields["title"] == "Renamed in the UI"


async def test_no_sweep_while_the_token_is_rejected(store: Store, sandbox: SandboxHandle) -> None:
    await store.enqueue([update(1, title="T1")])
    async with serving(
        store, sandbox, rate_limit=20.0, verify_interval=0.05, verify_budget_share=0.1
    ) as (daemon, _task):
        sweeper = sweeper_of(daemon)
        await eventually(lambda: synced(store))
        await eventually(lambda: sandbox.state.stats.count(INDEX) >= 1)

        # A rejected token: the run that meets it makes the daemon unready, and no sweep runs.
        sandbox.state.revoke(TOKEN)
        await store.enqueue([update(2, title="T2")])
        daemon.wake.set()
        await eventually(lambda: daemon.health.token_problem is not None)
        reads = sandbox.state.stats.count(INDEX)
        completed, held = sweeper.completed, sweeper.held_back
        await eventually(
            lambda: sweeper.held_back >= held + 3 or sandbox.state.stats.count(INDEX) > reads
        )
        assert (sandbox.state.stats.count(INDEX), sweeper.completed) == (reads, completed)

        # The token works again (SIGHUP after restoring it): the run goes, so do the sweeps.
        sandbox.state.restore(TOKEN)
        daemon.retry_now()
        await eventually(lambda: daemon.health.token_problem is None)
        await eventually(lambda: sweeper.completed > completed)
        assert sandbox.state.stats.count(INDEX) > reads


async def test_sigterm_stops_the_sweep_at_once_while_the_run_drains(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    store = sqlite_store
    await store.enqueue([update(1, title="T1")])
    # 1% of 1 request a second: a read every 100 s once the first one is spent.
    async with serving(
        store,
        sandbox,
        rate_limit=1.0,
        verify_interval=0.05,
        verify_budget_share=0.01,
        grace_period=1.5,
        request_timeout=20.0,
    ) as (daemon, task):
        sweeper = sweeper_of(daemon)
        await eventually(lambda: synced(store))
        await eventually(lambda: sandbox.state.stats.count(INDEX) == 1)
        # The next sweep's read waits for its pace, 100 s away.
        await eventually(lambda: sweeper.paced.next_release - time.monotonic() > 50)
        # A run with a request in flight that will not be answered for 10 s.
        sandbox.set_faults(FaultConfig(hang_rate=1.0, hang_seconds=10.0, seed=1))
        await store.enqueue([update(2, title="T2")])
        daemon.wake.set()
        await eventually(
            lambda: any(r.method == "PUT" and r.status is None for r in sandbox.state.requests)
        )
        daemon.request_stop("SIGTERM")
        # The sweep ends at once; the run drains for its grace period (1.5 s) after that.
        await eventually(lambda: sweeper.stopped.is_set() or task.done())
        assert sweeper.stopped.is_set() and not task.done()
        await asyncio.wait_for(asyncio.shield(task), 20)
    assert sandbox.state.stats.count(INDEX) == 1
