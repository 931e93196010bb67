"""A learned budget lives in the database: every worker learns and uses one, and it persists."""

from __future__ import annotations

import asyncio

import pytest

from worker import learning
from worker.budget import learning_limiter, token_key
from worker.coordination import Coordinator
from worker.learning import Bounds
from worker.store import Store

TOKEN = "tok-learned"
BOUNDS = Bounds(floor=2.0, ceiling=100.0)


async def test_workers_learn_one_budget_per_token_and_class(store: Store) -> None:
    first, second = Coordinator(store.engine), Coordinator(store.engine)
    key = token_key(TOKEN, "write")
    start = await first.reserve_learned(key, BOUNDS, 1)
    assert 1 / start.spacing == pytest.approx(BOUNDS.floor)
    # A second of requests really sent at the floor proves it: the next rate grows, for both.
    await asyncio.sleep(learning.STEP_SECONDS + 0.05)
    grown = await second.reserve_learned(key, BOUNDS, 3, sent=3)
    assert 1 / grown.spacing == pytest.approx(BOUNDS.floor * learning.GROWTH)
    assert grown.learned == pytest.approx(BOUNDS.floor)
    # A 429 reported by one worker lowers the rate the other one gets.
    lowered = await second.reserve_learned(key, BOUNDS, 1, refused=1)
    after = await first.reserve_learned(key, BOUNDS, 1)
    expected = BOUNDS.floor * learning.GROWTH * learning.BACKOFF
    assert 1 / lowered.spacing == pytest.approx(expected)
    assert 1 / after.spacing == pytest.approx(expected)
    # The slots never overlap: the second worker's come after the first's.
    assert after.first >= lowered.first + lowered.count * lowered.spacing - 1e-6
    budgets = {row["token_key"]: row for row in await first.budgets()}
    row = budgets[key]
    assert row["auto"] and row["throttled"] == 1 and row["bad"] == pytest.approx(3.0)
    assert row["sent"] == 3  # what the workers reported sending
    assert TOKEN not in str(budgets)
    # Reads are learned apart; the fixed budget's key is untouched.
    reads = await first.reserve_learned(token_key(TOKEN, "read"), BOUNDS, 1)
    assert 1 / reads.spacing == pytest.approx(BOUNDS.floor)
    assert token_key(TOKEN) not in budgets


async def test_a_new_process_starts_from_what_was_learned(store: Store) -> None:
    key = token_key(TOKEN, "write")
    coordinator = Coordinator(store.engine)
    await coordinator.reserve_learned(key, BOUNDS, 1)
    for _ in range(3):
        await asyncio.sleep(learning.STEP_SECONDS + 0.05)
        block = await coordinator.reserve_learned(key, BOUNDS, 10, sent=10)
    learned_rate = 1 / block.spacing
    assert learned_rate > BOUNDS.floor * learning.GROWTH**2
    # A later worker (a new limiter, as a new `run` builds) gets the learned rate at once.
    limiter = learning_limiter(Coordinator(store.engine), TOKEN, BOUNDS, "write")
    assert limiter.rate == BOUNDS.floor  # before it asks
    await limiter.acquire()
    assert limiter.rate == pytest.approx(learned_rate)
    await limiter.settle()


async def test_the_limiter_reports_its_429s_and_sends(store: Store) -> None:
    limiter = learning_limiter(Coordinator(store.engine), TOKEN, BOUNDS, "write")
    await limiter.acquire()
    limiter.on_throttled(None)
    limiter.on_throttled(None)
    await limiter.acquire()
    await limiter.settle()
    rows = {row["token_key"]: row for row in await Coordinator(store.engine).budgets()}
    row = rows[token_key(TOKEN, "write")]
    assert (row["throttled"], row["sent"]) == (2, 1)  # the second reservation's news
    assert row["bad"] == pytest.approx(BOUNDS.floor)  # the rate the 429s met
    assert row["rate"] == pytest.approx(BOUNDS.floor)  # and not below the floor
    assert row["paused_until"] == 0  # no Retry-After: a learned budget does not pause
