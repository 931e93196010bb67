"""The shared limiter maps slots from the source's clock to ours, robust to late replies."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from worker.sharedrate import SharedRateLimiter, SlotBlock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_late_replies_do_not_shift_the_schedule() -> None:
    """The source runs 1000 s ahead of us; replies are read 0-40 ms late."""
    clock = FakeClock()
    delays = iter([0.040, 0.0, 0.025, 0.010])
    next_first = [1100.0]
    requests: list[tuple[int, float | None]] = []

    async def source(count: int, throttled: float | None) -> SlotBlock:
        requests.append((count, throttled))
        delay = next(delays)
        read_at = clock.now  # the source reads its clock now; our reading comes `delay` later
        first = next_first[0]
        next_first[0] = first + count * 0.01
        return SlotBlock(
            now=read_at + 1000.0, first=first, spacing=0.01, count=count, local=read_at + delay
        )

    limiter = SharedRateLimiter(100 / 0.98, source, block_seconds=0.04, clock=clock)
    for _ in range(3):
        await limiter._refill()
    slots = list(limiter._slots)
    # Block 1 had only its own sample (read 40 ms late); from block 2 on, the exact offset.
    assert slots[0] == pytest.approx(100.0 + 0.04)  # 40 ms later than it should be
    assert slots[4:] == pytest.approx([100.0 + 0.01 * i for i in range(4, 12)])
    assert [count for count, _ in requests] == [4, 4, 4]


async def test_a_429_is_reported_with_the_next_reservation_and_drops_slots() -> None:
    clock = FakeClock()
    seen: list[float | None] = []

    async def source(count: int, throttled: float | None) -> SlotBlock:
        seen.append(throttled)
        return SlotBlock(now=clock.now, first=clock.now, spacing=0.02, count=count, local=clock.now)

    limiter = SharedRateLimiter(50, source, block_seconds=0.1, clock=clock)
    await limiter._refill()
    assert limiter._slots
    limiter.on_throttled(2.5)
    assert not limiter._slots and limiter.throttled == 1
    await limiter._refill()
    assert seen == [None, 2.5]
    assert limiter.rate == pytest.approx(50)


class GatedSource:
    """A slot source whose replies wait until the test opens the gate (a slow reservation)."""

    def __init__(self, clock: FakeClock, spacing: float = 0.01) -> None:
        self.clock, self.spacing = clock, spacing
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[float | None] = []
        self.next_first = clock.now

    async def __call__(self, count: int, throttled: float | None) -> SlotBlock:
        self.calls.append(throttled)
        read_at, first = self.clock.now, max(self.next_first, self.clock.now)
        self.next_first = first + count * self.spacing
        await self.gate.wait()
        return SlotBlock(now=read_at, first=first, spacing=self.spacing, count=count, local=read_at)


async def test_slots_in_hand_keep_going_while_the_next_block_is_reserved() -> None:
    clock = FakeClock()
    source = GatedSource(clock)
    limiter = SharedRateLimiter(
        100 / 0.98, source, block_seconds=0.1, clock=clock, size_to_demand=False
    )
    await limiter.acquire()  # reserves the first block of 10 slots and takes one
    source.gate.clear()  # every later reservation hangs until the gate opens
    for _ in range(9):  # the rest of the block: none of these may wait for the reservation
        clock.now += 0.01
        await asyncio.wait_for(limiter.acquire(), timeout=1)
    assert len(source.calls) == 2  # the next block was asked for at half the first
    assert limiter._refilling is not None  # ... and is still on its way
    clock.now += 0.01
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # now the slots in hand are gone: wait for the block
    source.gate.set()
    await asyncio.wait_for(waiting, timeout=1)
    await limiter.settle()
    assert limiter._refilling is None


async def test_a_block_reserved_before_a_429_is_dropped() -> None:
    clock = FakeClock()
    source = GatedSource(clock)
    limiter = SharedRateLimiter(
        100 / 0.98, source, block_seconds=0.1, clock=clock, size_to_demand=False
    )
    await limiter.acquire()
    source.gate.clear()
    for _ in range(5):  # reach the low-water mark: the next block is reserved at the old rate
        clock.now += 0.01
        await limiter.acquire()
    await asyncio.sleep(0)  # the reservation is on its way
    assert source.calls == [None, None]
    limiter.on_throttled(1.0)  # a 429 while it is on its way
    source.gate.set()
    await limiter.settle()
    assert not limiter._slots  # the stale block was not used
    clock.now += 0.01
    await asyncio.wait_for(limiter.acquire(), timeout=1)
    assert source.calls[-1] == 1.0  # the 429 went out with the next reservation


async def test_a_slot_overslept_by_a_busy_loop_is_given_up_not_sent_late() -> None:
    clock = FakeClock()
    oversleep = [0.03]  # the first sleep wakes 30 ms late, as on a busy loop

    async def sleep(seconds: float) -> None:
        clock.now += seconds + (oversleep.pop() if oversleep else 0.0)

    source = GatedSource(clock, spacing=0.01)
    source.next_first = clock.now + 0.01  # slots at 100.01, 100.02, ...
    limiter = SharedRateLimiter(
        100 / 0.98, source, block_seconds=0.1, clock=clock, sleep=sleep, size_to_demand=False
    )
    await limiter.acquire()
    # Woken at 100.04: 100.01 (overslept), 100.02 and 100.03 are gone; 100.04 is on time.
    assert clock.now == pytest.approx(100.04)
    assert limiter.skipped == 3
    assert limiter._slots[0] == pytest.approx(100.05)


async def test_a_slow_first_clock_sample_is_replaced_by_a_quick_one() -> None:
    clock = FakeClock()
    calls: list[int] = []
    # The source's clock is 1000 s ahead. The first reply was read 40 ms after the source's
    # reading (a busy loop); the extra readings come back in 1 ms.
    round_trips = iter([0.040, 0.030, 0.001, 0.001])

    async def source(count: int, throttled: float | None) -> SlotBlock:
        calls.append(count)
        rtt = next(round_trips)
        return SlotBlock(
            now=clock.now + 1000.0,
            first=clock.now + 1000.0,
            spacing=0.01,
            count=count,
            local=clock.now + rtt,
            sent=clock.now,
        )

    limiter = SharedRateLimiter(
        100 / 0.98, source, block_seconds=0.1, clock=clock, size_to_demand=False
    )
    await limiter._refill()
    assert calls == [10, 0, 0]  # two readings taking no slots, until a quick one
    assert limiter._slots[0] == pytest.approx(100.0 + 0.001)  # placed by the quick sample
    await limiter._refill()
    assert calls == [10, 0, 0, 10]  # calibrated once: later blocks need no extra readings


async def test_a_process_that_always_wakes_late_still_sends_and_never_bursts() -> None:
    """Every sleep overshoots by 25 ms at a 10 ms spacing (a loaded host): without a way
    out, every slot would be given up and nothing ever sent."""
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds + 0.025

    source = GatedSource(clock, spacing=0.01)
    limiter = SharedRateLimiter(100 / 0.98, source, block_seconds=0.1, clock=clock, sleep=sleep)
    sent: list[float] = []
    for _ in range(30):
        await asyncio.wait_for(limiter.acquire(), timeout=1)
        sent.append(clock.now)
    # Never more sends than slots handed out, and never two in the same instant.
    handed_out = source.next_first - 100.0
    assert len(sent) <= round(handed_out / 0.01)
    assert all(b > a for a, b in itertools.pairwise(sent))
    assert limiter.skipped > 0


async def test_a_reservation_takes_no_more_slots_than_senders_wait_for() -> None:
    """Behind a slow API a worker's senders are mostly in flight: consecutive slots beyond those
    waiting would go unused while other workers, idle, hold only later ones."""
    clock = FakeClock()
    counts: list[int] = []

    async def source(count: int, throttled: float | None) -> SlotBlock:
        counts.append(count)
        return SlotBlock(now=clock.now, first=clock.now, spacing=0.005, count=count)

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    async def sender(times: int) -> None:
        for _ in range(times):
            await limiter.acquire()

    limiter = SharedRateLimiter(200 / 0.98, source, block_seconds=0.1, clock=clock, sleep=sleep)
    await asyncio.gather(*(sender(30) for _ in range(3)))
    assert sum(counts) >= 90
    assert max(counts) == 3  # three senders: never more than three slots, not 20 (0.1 s)
    counts.clear()
    await asyncio.gather(*(sender(2) for _ in range(50)))
    assert max(counts) == 20  # never more than a block's worth
    assert limiter.acquired == 190
