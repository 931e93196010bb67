"""ClaimPacer: when a run with work in hand claims again (real events, a hand-set clock)."""

from __future__ import annotations

import asyncio

import pytest

from worker.pacing import NEWS_SPACING, ClaimPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pacer(*, news: bool = True, recheck: float = 600.0) -> tuple[ClaimPacer, Clock]:
    clock = Clock()
    paced = ClaimPacer(asyncio.Event(), clock)
    paced.news = asyncio.Event() if news else None
    paced.recheck = recheck
    return paced, clock


@pytest.mark.parametrize(
    ("rows", "limit", "more_left"),
    [(0, 500, False), (1, 500, False), (499, 500, False), (500, 500, True), (1, 1, True)],
)
def test_only_a_full_claim_leaves_more_behind(rows: int, limit: int, more_left: bool) -> None:
    paced, _ = pacer()
    paced.claimed(rows, limit)
    assert paced.more_left is more_left


def test_a_claim_starting_takes_the_news_so_far() -> None:
    paced, _ = pacer()
    assert paced.news is not None
    paced.news.set()
    paced.claiming()
    assert not paced.news.is_set()


async def _waiting(paced: ClaimPacer) -> tuple[asyncio.Task[None], asyncio.Event, asyncio.Event]:
    stop, halt = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(paced.wait_in_hand(stop, halt))
    await asyncio.sleep(0.05)  # it is waiting now
    return task, stop, halt


@pytest.mark.parametrize("news", [True, False])
async def test_a_flush_ends_the_wait(news: bool) -> None:
    paced, _ = pacer(news=news)
    task, _, _ = await _waiting(paced)
    assert not task.done()
    paced.flushed.set()
    await asyncio.wait_for(task, 5)


async def test_news_long_after_the_last_claim_ends_the_wait_at_once() -> None:
    paced, clock = pacer()
    paced.claiming()
    clock.now += 10 * NEWS_SPACING
    task, _, _ = await _waiting(paced)
    assert not task.done()
    assert paced.news is not None
    paced.news.set()
    await asyncio.wait_for(task, 5)


async def test_news_within_the_spacing_waits_it_out_but_a_flush_does_not() -> None:
    paced, clock = pacer()
    paced.claiming()
    clock.now -= 600  # the clock says the last claim started just now, as it stays
    assert paced.news is not None
    paced.news.set()  # news arrived during the claim
    task, _, _ = await _waiting(paced)
    assert not task.done()  # the spacing (600 s on this clock) holds the news back
    paced.flushed.set()
    await asyncio.wait_for(task, 5)


async def test_without_news_only_a_flush_or_the_recheck_ends_the_wait() -> None:
    paced, _ = pacer(news=False, recheck=0.2)
    stop, halt = asyncio.Event(), asyncio.Event()
    await asyncio.wait_for(paced.wait_in_hand(stop, halt), 5)  # the recheck, 0.2 s
    assert not paced.flushed.is_set()


@pytest.mark.parametrize("which", ["stop", "halt"])
async def test_a_stop_or_a_halt_ends_the_wait(which: str) -> None:
    paced, _ = pacer()
    task, stop, halt = await _waiting(paced)
    (stop if which == "stop" else halt).set()
    await asyncio.wait_for(task, 5)
