"""A run with work in hand claims a producer's insert as soon as it is announced (PostgreSQL's
NOTIFY, SQLite's data_version and a larger max(id)), not at its next flush: real databases, a
real sandbox whose answers take 2 s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import migrated_store
from tests.integration.pipeline_helpers import all_rows, dispatcher_for, eventually, insert_raw
from worker.coordination import Coordinator
from worker.pacing import NEWS_SPACING
from worker.sandbox.faults import FaultConfig
from worker.store import Store

from .conftest import SandboxFactory

LATENCY_MS = 2000


async def _state(store: Store, change_id: int) -> str:
    return str((await all_rows(store))[change_id]["state"])


@pytest.mark.parametrize("announced", [True, False], ids=["announced", "not-announced"])
async def test_an_insert_announced_during_a_run_is_sent_while_the_first_is_still_in_flight(
    store: Store, sandbox_factory: SandboxFactory, announced: bool
) -> None:
    news = asyncio.Event()
    async with (
        sandbox_factory(faults=FaultConfig(latency_ms=LATENCY_MS)) as sandbox,
        Coordinator(store.engine).notifications(inserts=news) as wake,
        dispatcher_for(store, sandbox, request_timeout=10.0) as dispatcher,
    ):
        assert wake is not None
        # Without an announcement the run looks again only when a flush frees what it holds.
        dispatcher.pacer.recheck = 600.0
        dispatcher.pacer.news = news if announced else None
        first = await insert_raw(store, 4, "workspace_update", '{"title": "first"}')
        run = asyncio.create_task(dispatcher.run())
        try:
            await eventually(lambda: len(sandbox.state.requests) == 1)
            second = await insert_raw(store, 5, "workspace_update", '{"title": "second"}')
            await eventually(lambda: len(sandbox.state.requests) == 2)
            first_state_when_second_sent = await _state(store, first)
            report = await asyncio.wait_for(run, 30)
        finally:
            run.cancel()
    assert [r.target for r in sandbox.state.requests] == ["/workspaces/4", "/workspaces/5"]
    assert report.stats.succeeded == 2
    assert await _state(store, second) == "succeeded"
    # Announced: the second went out during the first's 2 s on the wire. Not announced: only
    # once the first's result was written back.
    assert first_state_when_second_sent == ("in_flight" if announced else "succeeded")


class CountingStore(Store):
    """The real store, counting claims."""

    claims = 0

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.claims += 1
        return await super().claim(*args, **kwargs)


@pytest.mark.postgres
async def test_a_storm_of_announcements_claims_at_most_once_per_news_spacing(
    pg_database_url: str, sandbox_factory: SandboxFactory
) -> None:
    async with (
        migrated_store(pg_database_url) as migrated,
        sandbox_factory(faults=FaultConfig(latency_ms=LATENCY_MS)) as sandbox,
    ):
        store = CountingStore(migrated.engine)
        async with dispatcher_for(store, sandbox, request_timeout=10.0) as dispatcher:
            dispatcher.pacer.recheck = 600.0
            news = dispatcher.pacer.news = asyncio.Event()
            await insert_raw(store, 4, "workspace_update", '{"title": "held"}')
            run = asyncio.create_task(dispatcher.run())
            try:
                await eventually(lambda: len(sandbox.state.requests) == 1)
                before, started = store.claims, time.monotonic()
                while time.monotonic() - started < 1.0:  # an announcement every millisecond
                    news.set()
                    await asyncio.sleep(0.001)
                storm_claims, storm_s = store.claims - before, time.monotonic() - started
                report = await asyncio.wait_for(run, 30)
            finally:
                run.cancel()
    assert report.stats.succeeded == 1
    # Every one of them found nothing new; without the spacing there would be one per turn.
    assert 1 <= storm_claims <= storm_s / NEWS_SPACING + 2


async def test_a_claim_that_took_everything_is_not_followed_by_another_at_once(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    store = CountingStore(sqlite_store.engine)
    async with (
        sandbox_factory(faults=FaultConfig(latency_ms=500)) as sandbox,
        dispatcher_for(store, sandbox) as dispatcher,
    ):
        dispatcher.pacer.recheck = 600.0  # only the write-back's flush prompts a look
        await insert_raw(store, 4, "workspace_update", '{"title": "only"}')
        report = await asyncio.wait_for(dispatcher.run(), 30)
    assert report.stats.succeeded == 1
    # One claim takes the change (1 of a possible 200); the next comes after its result is
    # written back, finds nothing, and the run ends. None while the request is on the wire.
    assert store.claims == 2
