"""The serve loop in-process: real store, real sandbox on a socket, real HTTP listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from worker.changes import State
from worker.client import KantataClient
from worker.coordination import Coordinator
from worker.daemon import Daemon, ServeOptions
from worker.metrics import Metrics
from worker.models import sync_runs
from worker.runtime import dispatcher_for
from worker.sandbox import SandboxConfig
from worker.sandbox.config import FaultConfig
from worker.sandbox.state import DROPPED
from worker.sandbox.testing import SandboxHandle
from worker.sdnotify import Notifier
from worker.store import Store

from ..conftest import PG_ADMIN_URL
from ..notify_socket import NotifySocket
from .conftest import SandboxFactory
from .pipeline_helpers import (
    TOKEN,
    all_rows,
    eventually,
    fast_settings,
    insert_raw,
    status,
    update,
)


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[Any]]:
    """Run the daemon as a task until the block ends, then stop it and wait for it."""
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()  # raises what startup raised
    assert daemon.ready.is_set()
    try:
        yield task
    finally:
        daemon.request_stop("test over")
        await asyncio.wait_for(task, 30)


DaemonFactory = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def make_daemon() -> AsyncIterator[DaemonFactory]:
    """``await make_daemon(store, sandbox, **options)``: a daemon wired as ``serve`` wires it
    (registry, shared budget, one metrics object); its client is closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            store: Store,
            sandbox: SandboxHandle,
            *,
            notifier: Notifier | None = None,
            wake: asyncio.Event | None = None,
            clock: Callable[[], float] | None = None,
            **options: Any,
        ) -> Daemon:
            settings = fast_settings(sandbox, **{"rate_limit": 0, **options.pop("settings", {})})
            values: dict[str, Any] = {"poll_interval": 0.05, "http_port": 0}
            values.update(options)
            client = await stack.enter_async_context(
                KantataClient(
                    settings.api_base_url, settings.api_token(), timeout=settings.request_timeout
                )
            )
            dispatcher = dispatcher_for(settings, store, client, Metrics())
            extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
            return Daemon(dispatcher, ServeOptions(**values), notifier=notifier, wake=wake, **extra)

        yield factory


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_by_endpoint_and_code(text: str) -> dict[tuple[str, str], int]:
    counts = {}
    for (name, labels), value in samples(text).items():
        if name == "kantata_sync_http_requests_total" and value:
            label = dict(labels)
            counts[f"{label['method']} {label['route']}", label["code"]] = int(value)
    return counts


def sandbox_requests(sandbox: SandboxHandle) -> dict[tuple[str, str], int]:
    return {
        (str(route), "none" if status == DROPPED else str(status)): n
        for (route, status), n in sandbox.state.stats.requests.items()
        if n
    }


def metric(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_serve_syncs_and_its_metrics_equal_what_the_sandbox_saw(
    store: Store, sandbox_factory: SandboxFactory, make_daemon: DaemonFactory
) -> None:
    faults = FaultConfig(error_rate=0.15, drop_rate=0.05, burst_429_rate=0.02, seed=5)
    config = SandboxConfig(inspect=True, rate_limit=150, faults=faults, forbidden=frozenset({9}))
    async with sandbox_factory(config) as sandbox:
        changes = [
            change
            for w in range(1, 41)
            for change in (update(w, title=f"t{w}"), status(w, 310), update(w, budgeted=True))
        ]
        ids = await store.enqueue(changes)
        daemon = await make_daemon(store, sandbox, settings={"max_attempts": 20})
        scraped_busy: list[str] = []
        async with running(daemon):
            assert daemon.url is not None

            async def settled() -> bool:
                code, text = await get(f"{daemon.url}/metrics")
                assert code == 200
                if daemon.health.activity == "syncing":
                    scraped_busy.append(text)
                counts = await store.counts()
                return counts[State.PENDING] + counts[State.IN_FLIGHT] == 0

            await eventually(settled)
            # A poll later the gauges show the final queue, and the idle loop says so.
            await eventually(lambda: _activity(daemon, "idle"))
            await asyncio.sleep(0.2)
            code, text = await get(f"{daemon.url}/metrics")
            assert code == 200
            assert requests_by_endpoint_and_code(text) == sandbox_requests(sandbox)
            assert sum(v for k, v in sandbox_requests(sandbox).items() if k[1] != "200") > 0
            assert metric(text, "kantata_sync_rate_limited_total") == (
                sandbox.state.stats.total_429
            )
            rows = await all_rows(store)
            finished = {
                (state, outcome): sum(
                    1 for r in rows.values() if r["state"] == state and r["outcome"] == outcome
                )
                for state, outcome in {(r["state"], r["outcome"]) for r in rows.values()}
            }
            counted: dict[tuple[str, str | None], float] = {}
            for (name, labels), value in samples(text).items():
                if name == "kantata_sync_changes_total":
                    label = dict(labels)
                    key = (label["state"], label["outcome"] or None)
                    counted[key] = counted.get(key, 0) + value
            assert counted == finished
            for state in ("succeeded", "failed"):
                assert metric(text, "kantata_sync_outbox_finished_changes", state=state) == sum(
                    1 for r in rows.values() if r["state"] == state
                )
                assert ("kantata_sync_queue_depth", (("state", state),)) not in samples(text)
            assert ("kantata_sync_queue_depth", (("state", "pending"),)) in samples(text)
            assert metric(text, "kantata_sync_queue_depth", state="pending") == 0
            assert metric(text, "kantata_sync_oldest_pending_age_seconds") == 0
            assert metric(text, "kantata_sync_last_success_timestamp_seconds") > time.time() - 60
            assert (await get(f"{daemon.url}/healthz"))[0] == 200
            assert (await get(f"{daemon.url}/readyz"))[0] == 200
        assert len(rows) == len(ids)
        assert {r["state"] for r in rows.values()} <= {State.SUCCEEDED, State.FAILED}
        assert scraped_busy, "no scrape happened while the daemon was syncing"
        for text in scraped_busy:
            for key, value in requests_by_endpoint_and_code(text).items():
                assert value <= sandbox_requests(sandbox)[key]
        assert (await store.counts())["in_flight"] == 0


async def _activity(daemon: Daemon, activity: str) -> bool:
    return daemon.health.activity == activity


async def test_a_busy_period_is_one_run_and_idle_polls_add_none(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    daemon = await make_daemon(sqlite_store, sandbox)
    async with running(daemon):
        await sqlite_store.enqueue([update(w, title="a") for w in range(1, 11)])
        daemon.wake.set()
        await eventually(lambda: _all_done(sqlite_store))
        await asyncio.sleep(0.5)  # ten idle polls
        await sqlite_store.enqueue([update(w, title="b") for w in range(1, 11)])
        await eventually(lambda: _all_done(sqlite_store))
        await eventually(lambda: _activity(daemon, "idle"))
    async with sqlite_store.engine.connect() as conn:
        runs = (await conn.execute(sa.select(sync_runs.c.command, sync_runs.c.claimed))).all()
    assert sorted(runs) == [("serve", 10), ("serve", 10)]
    assert daemon.summary.runs == 2


async def _all_done(store: Store) -> bool:
    counts = await store.counts()
    return counts[State.SUCCEEDED] > 0 and counts[State.PENDING] + counts[State.IN_FLIGHT] == 0


async def test_a_long_busy_period_is_cut_into_runs_of_max_run_seconds(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    await sqlite_store.enqueue([update(w, title="x") for w in range(1, 41)])
    daemon = await make_daemon(
        sqlite_store, sandbox, max_run_seconds=0.3, settings={"rate_limit": 40}
    )
    async with running(daemon):
        await eventually(lambda: _all_done(sqlite_store))
    async with sqlite_store.engine.connect() as conn:
        runs = (
            await conn.execute(
                sa.select(sync_runs.c.ended_because, sync_runs.c.succeeded).order_by(
                    sync_runs.c.started_at
                )
            )
        ).all()
    assert len(runs) >= 2
    assert sum(succeeded for _, succeeded in runs) == 40
    assert [why for why, _ in runs[:-1]] == ["stopped"] * (len(runs) - 1)
    rows = await all_rows(sqlite_store)
    assert all(r["state"] == State.SUCCEEDED and r["attempts"] == 1 for r in rows.values())


async def test_wake_starts_a_run_without_waiting_for_the_poll(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    daemon = await make_daemon(sqlite_store, sandbox, poll_interval=120.0)
    async with running(daemon):
        await asyncio.sleep(0.2)  # the first poll has come and gone
        await sqlite_store.enqueue([status(3, 310)])
        daemon.wake.set()
        await eventually(lambda: _all_done(sqlite_store), within=20)


async def test_wake_ups_while_a_run_goes_do_not_poll_the_outbox(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    """The run claims what is inserted by itself; a poll per wake-up (per insert, or per
    commit on SQLite) would only count the whole outbox again for the gauges."""
    daemon = await make_daemon(
        sqlite_store, sandbox, poll_interval=120.0, settings={"rate_limit": 10.0}
    )
    polls: list[bool] = []
    poll = daemon._poll

    async def counted(*, busy: bool) -> bool:
        polls.append(busy)
        return await poll(busy=busy)

    daemon._poll = counted  # type: ignore[method-assign]
    async with running(daemon):
        await sqlite_store.enqueue([update(w, title="a") for w in range(1, 21)])  # about 2 s
        daemon.wake.set()
        await eventually(lambda: _sent(sandbox, 1))
        for _ in range(10):
            daemon.wake.set()
            await asyncio.sleep(0.05)
        assert True not in polls
        await eventually(lambda: _all_done(sqlite_store))
    assert daemon.summary.runs == 1


async def _sent(sandbox: SandboxHandle, n: int) -> bool:
    return sandbox.state.stats.count() >= n


async def test_an_idle_daemon_stays_live_in_the_worker_registry_and_leaves_it_on_stop(
    store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    # lease_seconds 0.6: heartbeats every 0.2 s, and a worker is dead after 1.2 s without one.
    daemon = await make_daemon(store, sandbox, poll_interval=60.0, settings={"lease_seconds": 0.6})
    coordinator = Coordinator(store.engine)
    async with running(daemon):
        await asyncio.sleep(2.0)  # idle, well past the point a silent worker counts as dead
        live, dead = await coordinator.workers(datetime.now(UTC), 1.2)
        assert [(w.command, w.pid) for w in live] == [("serve", os.getpid())]
        assert dead == 0
    live, dead = await coordinator.workers(datetime.now(UTC), 1.2)
    assert (live, dead) == ([], 0)


async def test_an_insert_wakes_an_idle_daemon_at_once(
    store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    """PostgreSQL through LISTEN/NOTIFY, SQLite through the file's data_version: either way
    a change inserted by a producer goes out long before the two-minute poll."""
    async with Coordinator(store.engine).notifications() as wake:
        assert wake is not None
        daemon = await make_daemon(store, sandbox, poll_interval=120.0, wake=wake)
        async with running(daemon):
            await asyncio.sleep(0.3)  # the first poll has come and gone
            await insert_raw(store, 4, "status_change", '{"to_status_key": 310}')
            await eventually(lambda: _all_done(store), within=20)
    assert sandbox.state.stats.count() == 1


async def test_a_stop_that_comes_while_polling_ends_serve_at_once_and_starts_nothing(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    daemon = await make_daemon(sqlite_store, sandbox, poll_interval=120.0)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 30)
    blocker = sqlite3.connect(
        str(sqlite_store.engine.url.database),
        isolation_level=None,
        timeout=20,
        check_same_thread=False,
    )
    try:
        # Taken from a thread: on the loop's own thread the lock would wait for a daemon
        # transaction that the blocked loop could never finish. The change is inserted under
        # the same lock, so the first poll cannot see it whenever that poll runs; any later
        # poll waits for the lock, and the stop comes while it waits.
        await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
        await asyncio.to_thread(
            blocker.execute,
            "INSERT INTO sync_changes (workspace_id, kind, payload) VALUES (?, ?, ?)",
            (1, "workspace_update", '{"title": "due"}'),
        )
        daemon.wake.set()
        await asyncio.sleep(0.3)
        daemon.request_stop("test")
        await asyncio.sleep(0.1)
        await asyncio.to_thread(blocker.execute, "COMMIT")
    finally:
        blocker.close()
    await asyncio.wait_for(task, 20)  # not after the 120 s poll interval
    assert daemon.summary.runs == 0
    assert (await sqlite_store.counts())[State.PENDING] == 1
    assert daemon.health.activity == "stopping"


async def test_a_rejected_token_makes_serve_unready_and_quiet_until_retried(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    sandbox.state.revoke(TOKEN)
    await sqlite_store.enqueue([update(w, title="z") for w in range(1, 6)])
    daemon = await make_daemon(sqlite_store, sandbox, token_retry_interval=3600)
    async with running(daemon):
        url = daemon.url

        async def unready() -> bool:
            code, body = await get(f"{url}/readyz")
            return code == 503 and "token: rejected (401)" in body

        await eventually(unready)
        rejected = sandbox.state.stats.count(status=401)
        assert 1 <= rejected <= 5  # the requests already in flight when the first 401 came
        await asyncio.sleep(0.5)  # ten polls: none of them may send anything
        assert sandbox.state.stats.count() == rejected
        rows = await all_rows(sqlite_store)
        assert {(r["state"], r["attempts"]) for r in rows.values()} == {(State.PENDING, 0)}
        assert (await get(f"{url}/healthz"))[0] == 200
        assert daemon.health.activity == "token_rejected"

        sandbox.state.restore(TOKEN)
        daemon.retry_now()
        await eventually(lambda: _all_done(sqlite_store))
        await eventually(lambda: _ready(url))
    assert daemon.summary.token_rejections == 1


async def _ready(url: str | None) -> bool:
    return (await get(f"{url}/readyz"))[0] == 200


async def test_readyz_follows_the_sqlite_file_and_healthz_stays_up(
    sqlite_store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    path = str(sqlite_store.engine.url.database)
    daemon = await make_daemon(sqlite_store, sandbox)
    async with running(daemon):
        assert (await get(f"{daemon.url}/readyz"))[0] == 200
        os.rename(path, path + ".moved")
        code, body = await get(f"{daemon.url}/readyz")
        assert code == 503 and "is missing" in body, body
        await eventually(lambda: _activity(daemon, "database_error"))
        assert (await get(f"{daemon.url}/healthz"))[0] == 200
        os.rename(path + ".moved", path)
        await eventually(lambda: _ready(daemon.url))
        await eventually(lambda: _activity(daemon, "idle"))


@pytest.mark.postgres
async def test_readyz_turns_unready_when_postgresql_drops_the_database(
    pg_database_url: str, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    from worker import db as dbmod

    engine = dbmod.create_engine(pg_database_url)
    await dbmod.upgrade(engine)
    store = Store(engine)
    try:
        daemon = await make_daemon(store, sandbox)
        async with running(daemon):
            assert (await get(f"{daemon.url}/readyz"))[0] == 200
            name = pg_database_url.rsplit("/", 1)[1]
            admin = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await admin.close()
            code, body = await get(f"{daemon.url}/readyz")
            assert code == 503 and "database:" in body, body
            await eventually(lambda: _activity(daemon, "database_error"))
            assert (await get(f"{daemon.url}/healthz"))[0] == 200
    finally:
        await engine.dispose()


@pytest.fixture
def notify_reader() -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="ks-") as directory:
        reader = NotifySocket(os.path.join(directory, "notify"))
        try:
            yield reader
        finally:
            reader.close()


class Clock:
    """A monotonic clock the test can push forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_a_stalled_loop_withholds_the_watchdog_and_fails_healthz(
    sqlite_store: Store,
    sandbox: SandboxHandle,
    notify_reader: NotifySocket,
    make_daemon: DaemonFactory,
) -> None:
    clock = Clock()
    options = ServeOptions(poll_interval=60.0, http_port=0, watchdog_interval=0.05)
    notifier = Notifier(notify_reader.path)
    daemon = await make_daemon(
        sqlite_store,
        sandbox,
        notifier=notifier,
        clock=clock,
        poll_interval=options.poll_interval,
        watchdog_interval=options.watchdog_interval,
    )
    async with running(daemon):
        await asyncio.sleep(0.3)
        before = notify_reader.take()
        assert before[0] == "READY=1\nSTATUS=idle; 0 pending", before
        assert before.count("WATCHDOG=1") >= 2
        clock.offset = options.stale_after + 1  # the loop has not ticked for too long
        await asyncio.sleep(0.2)
        notify_reader.take()  # drop a ping that may have been on its way
        await asyncio.sleep(0.3)
        assert "WATCHDOG=1" not in notify_reader.take()
        code, body = await get(f"{daemon.url}/healthz")
        assert code == 503 and '"alive": false' in body
        daemon.wake.set()  # the loop ticks again: pings and health come back
        await asyncio.sleep(0.3)
        assert "WATCHDOG=1" in notify_reader.take()
        assert (await get(f"{daemon.url}/healthz"))[0] == 200
    await asyncio.sleep(0.1)
    final = notify_reader.take()
    assert any(m.startswith("STOPPING=1\nSTATUS=stopping") for m in final), final
    assert final[-1] == "STATUS=stopped"
    notifier.close()


async def test_readyz_turns_unready_while_the_database_cannot_be_written(
    store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    """Reads still work, but the heartbeat's write fails (a trigger stands in for a read-only
    failover): unready with the reason, and ready again once writes work."""
    daemon = await make_daemon(store, sandbox, settings={"lease_seconds": 0.6})
    refuse = (
        [
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'read-only for the test'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse BEFORE UPDATE ON sync_workers "
            "FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]
        if store.dialect == "postgresql"
        else [
            "CREATE TRIGGER refuse BEFORE UPDATE ON sync_workers "
            "BEGIN SELECT RAISE(ABORT, 'read-only for the test'); END"
        ]
    )
    drop = "DROP TRIGGER refuse" + (" ON sync_workers" if store.dialect == "postgresql" else "")
    async with running(daemon):
        assert (await get(f"{daemon.url}/readyz"))[0] == 200
        async with store.engine.begin() as conn:
            for statement in refuse:
                await conn.exec_driver_sql(statement)

        async def unready() -> bool:
            code, body = await get(f"{daemon.url}/readyz")
            return code == 503 and "cannot be written" in body and "read-only" in body

        await eventually(unready, within=20)
        assert (await get(f"{daemon.url}/healthz"))[0] == 200
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(drop)
        await eventually(lambda: _ready(daemon.url), within=20)
