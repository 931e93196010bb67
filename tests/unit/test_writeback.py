"""The periodic flusher: at once into an idle buffer, then at most once per interval.

A recording store stands in for the database (the flusher needs only ``write_batch``); the
intervals are long (a minute) so that "not yet flushed" holds on however slow a machine.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from worker.changes import Lease, Outcome, Result, State
from worker.exceptions import DatabaseError
from worker.writeback import WriteBuffer

LONG = 60.0


class RecordingStore:
    """``write_batch`` records each batch; ``fail`` makes the next ones fail."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[int], list[int]]] = []
        self.wrote = asyncio.Event()
        self.fail = 0

    async def write_batch(
        self, results: list[Result], releases: list[Lease], attempts: object, now: datetime
    ) -> list[int]:
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise DatabaseError("writing results back: the database went away")
        self.batches.append(
            ([r.change_id for r in results], [lease.change_id for lease in releases])
        )
        self.wrote.set()
        return []


def done_result(change_id: int) -> Result:
    return Result(change_id, 1, State.SUCCEEDED, Outcome.APPLIED, attempts=1)


def now() -> datetime:
    return datetime(2026, 12, 7, tzinfo=UTC)


async def started(buffer: WriteBuffer, interval: float) -> tuple[asyncio.Event, asyncio.Task[None]]:
    done = asyncio.Event()
    failed: list[DatabaseError] = []
    task = asyncio.create_task(
        buffer.flush_periodically(done, failed.append, within=LONG, interval=interval)
    )
    await asyncio.sleep(0)
    return done, task


async def stop(done: asyncio.Event, task: asyncio.Task[None]) -> None:
    done.set()
    await asyncio.wait_for(task, timeout=10)


async def wrote(store: RecordingStore) -> None:
    store.wrote.clear()
    await asyncio.wait_for(store.wrote.wait(), timeout=10)


@pytest.mark.parametrize("first", ["result", "release"])
async def test_what_reaches_an_idle_buffer_is_written_at_once(first: str) -> None:
    store = RecordingStore()
    buffer = WriteBuffer(store, now)  # type: ignore[arg-type]
    done, task = await started(buffer, LONG)
    if first == "result":
        buffer.result(done_result(1))
    else:
        buffer.release(Lease(1, 1))
    await wrote(store)  # well before the minute-long interval
    assert store.batches == ([([1], [])] if first == "result" else [([], [1])])
    assert not buffer
    await stop(done, task)


async def test_what_follows_a_flush_waits_for_the_interval_and_travels_together() -> None:
    store = RecordingStore()
    buffer = WriteBuffer(store, now)  # type: ignore[arg-type]
    done, task = await started(buffer, LONG)
    buffer.result(done_result(1))
    await wrote(store)
    buffer.result(done_result(2))
    buffer.result(done_result(3))
    await asyncio.sleep(0.2)
    assert store.batches == [([1], [])]  # 2 and 3 wait out the interval
    assert [r.change_id for r in buffer.results] == [2, 3]
    await stop(done, task)  # stopping the flusher writes what is left, in one batch
    assert store.batches == [([1], []), ([2, 3], [])]


async def test_after_the_interval_the_next_arrival_is_written_at_once_again() -> None:
    store = RecordingStore()
    buffer = WriteBuffer(store, now)  # type: ignore[arg-type]
    done, task = await started(buffer, 0.05)
    for change_id in (1, 2, 3):
        await asyncio.sleep(0.1)  # longer than the interval: the buffer is idle each time
        buffer.result(done_result(change_id))
        await wrote(store)
    assert store.batches == [([1], []), ([2], []), ([3], [])]
    await stop(done, task)


async def test_a_failed_flush_keeps_its_batch_and_the_retry_writes_it_with_what_came_since() -> (
    None
):
    store = RecordingStore()
    store.fail = 1
    buffer = WriteBuffer(store, now)  # type: ignore[arg-type]
    done, task = await started(buffer, 0.05)
    buffer.result(done_result(1))
    await asyncio.sleep(0)
    buffer.result(done_result(2))
    await wrote(store)
    assert store.batches == [([1, 2], [])]
    await stop(done, task)
