"""The lease-deadline rule: when a worker may still send under a lease it holds (pure)."""

from __future__ import annotations

import math

import pytest

from worker.changes import Lease
from worker.leases import LeaseBook, LeaseTerms, may_send, send_deadline

# (lease_seconds, dead_after, margin)
MARGINS = [
    (300.0, 30.0, 7.5),  # the defaults: the registry's 30 s window is the shorter
    (300.0, None, 30.0),  # no registry: a quarter of the lease, at most 30 s
    (10.0, 20.0, 2.5),  # a short lease is the shorter window
    (4.0, 8.0, 1.0),  # never under one second...
    (1.5, 6.0, 0.75),  # ...unless that is more than half the window
    (0.2, None, 0.1),
    (86_400.0, None, 30.0),
]


@pytest.mark.parametrize(("lease", "dead_after", "margin"), MARGINS)
def test_margin(lease: float, dead_after: float | None, margin: float) -> None:
    assert LeaseTerms(lease, dead_after).margin == pytest.approx(margin)


@pytest.mark.parametrize(("lease", "dead_after", "_margin"), MARGINS)
def test_a_fresh_lease_always_leaves_time_to_send(
    lease: float, dead_after: float | None, _margin: float
) -> None:
    terms = LeaseTerms(lease, dead_after)
    # Confirmed at 100.0: there is always a moment to send before the deadline.
    assert send_deadline(terms, 100.0, 100.0) > 100.0
    assert send_deadline(terms, 100.0, 100.0) <= 100.0 + terms.window


# (lease_seconds, dead_after, held_since, alive_since, now, may send)
DEADLINES = [
    # Claimed at 0 under a 300 s lease with a 30 s registry window: 22.5 s to send.
    (300, 30, 0, 0, 0, True),
    (300, 30, 0, 0, 22.4, True),
    (300, 30, 0, 0, 22.5, False),
    # Heartbeats move the registry window on; the lease itself still counts from its claim.
    (300, 30, 0, 280, 290, True),
    (300, 30, 0, 280, 292.5, False),  # the lease (300 - 7.5) runs out first
    (300, 30, 270, 280, 300, True),  # extended at 270: good until 302.5
    # A stale heartbeat ends the right to send even under a long lease: another worker
    # takes the changes of a worker that looks dead.
    (300, 30, 100, 50, 72.4, True),
    (300, 30, 100, 50, 72.5, False),
    # Without a registry only the lease counts.
    (300, None, 0, None, 269.9, True),
    (300, None, 0, None, 270, False),
    (300, 30, 0, None, 269.9, True),  # registry known, but no heartbeat yet
    # A frozen process wakes long past its deadline: no send without re-validation.
    (10, 20, 0, 0, 3600, False),
    (10, 20, 0, 0, 7.4, True),
    (10, 20, 0, 0, 7.5, False),
    # A deadline crossed while waiting for the rate limiter: claimed at 0, slot at 8.
    (10, 20, 0, 0, 8.0, False),
    # The monotonic clock never steps; a time before the claim (a clock read early) is fine.
    (10, 20, 5, 5, 4.9, True),
]


@pytest.mark.parametrize(("lease", "dead_after", "held", "alive", "now", "expected"), DEADLINES)
def test_may_send(
    lease: float,
    dead_after: float | None,
    held: float,
    alive: float | None,
    now: float,
    expected: bool,
) -> None:
    assert may_send(LeaseTerms(lease, dead_after), held, alive, now) is expected


def test_the_book_confirms_only_what_it_holds_and_never_backwards() -> None:
    book = LeaseBook(LeaseTerms(10.0))
    book.hold(Lease(1, 7), since=0.0)
    book.hold(Lease(2, 3), since=0.0)
    assert book.stale([1, 2], now=7.4) == []
    assert book.stale([1, 2], now=7.5) == [1, 2]
    book.confirmed([1, 99], since=5.0)  # 99 was never held: ignored
    assert book.stale([1, 2], now=8.0) == [2]
    book.confirmed([1], since=1.0)  # an older confirmation does not shorten a newer one
    assert book.deadline(1) == pytest.approx(12.5)
    assert 99 not in book
    assert book.deadline(99) == -math.inf
    assert book.stale([99], now=0.0) == [99]  # a lease not held is never good to send


def test_lost_leases_leave_the_book_and_are_reported_once() -> None:
    book = LeaseBook(LeaseTerms(10.0))
    for change_id in (1, 2, 3):
        book.hold(Lease(change_id, 1), since=0.0)
    assert book.lost([2, 3, 4]) == [2, 3]
    assert book.lost([2, 3]) == []
    assert book.leases() == [Lease(1, 1)]
    assert book.release(1) == Lease(1, 1)
    assert book.forget(1) is None
    assert len(book) == 0


def test_the_registry_heartbeat_bounds_every_lease() -> None:
    book = LeaseBook(LeaseTerms(300.0, dead_after=30.0))
    book.hold(Lease(1, 1), since=0.0)
    assert book.deadline(1) == pytest.approx(292.5)  # no heartbeat seen yet
    book.alive(10.0)
    assert book.deadline(1) == pytest.approx(32.5)
    book.alive(5.0)  # late news of an older heartbeat changes nothing
    assert book.deadline(1) == pytest.approx(32.5)
    book.alive(290.0)
    assert book.deadline(1) == pytest.approx(292.5)
