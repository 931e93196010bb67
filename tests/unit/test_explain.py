"""Why a change is not sent yet: the claim's rules as a table (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.explain import Explanation, Queued, Why, when, why_not_sent

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=90)
EARLIER = NOW - timedelta(seconds=30)


def pending(change_id: int, **kw: object) -> Queued:
    return Queued(change_id, "pending", **kw)  # type: ignore[arg-type]


def flying(change_id: int, owner: str = "w1", expires: datetime | None = LATER) -> Queued:
    return Queued(change_id, "in_flight", lease_owner=owner, lease_expires_at=expires)


CASES: list[tuple[str, Queued, list[Queued], int, tuple[object, ...] | None]] = [
    # (case, change, its workspace, live workers, (why, until, change_id, worker) or None)
    ("succeeded: nothing to explain", Queued(5, "succeeded"), [], 1, None),
    ("cancelled: never will be sent", Queued(5, "cancelled"), [flying(4)], 1, None),
    ("failed", Queued(5, "failed"), [], 0, None),
    ("in flight under a lease", flying(5, "w9"), [], 1, (Why.IN_FLIGHT, LATER, None, "w9")),
    (
        "in flight, lease expired",
        flying(5, "w9", EARLIER),
        [],
        1,
        (Why.LEASE_EXPIRED, EARLIER, None, "w9"),
    ),
    (
        "waiting for its own retry beats everything",
        pending(5, attempts=2, next_attempt_at=LATER),
        [flying(3)],
        1,
        (Why.WAITING_FOR_RETRY, LATER, None, None),
    ),
    (
        "a retry time already past is due",
        pending(5, attempts=2, next_attempt_at=EARLIER),
        [],
        2,
        (Why.DUE, None, None, None),
    ),
    (
        "held behind an in-flight change of the workspace",
        pending(5),
        [flying(3, "w2")],
        1,
        (Why.HELD_BEHIND, LATER, 3, "w2"),
    ),
    (
        "in flight beats waiting and earlier pending, whatever the IDs",
        pending(5),
        [pending(1), pending(2, next_attempt_at=LATER), flying(7, "w3")],
        1,
        (Why.HELD_BEHIND, LATER, 7, "w3"),
    ),
    (
        "held behind an in-flight change whose lease expired",
        pending(5),
        [flying(3, "w2", EARLIER)],
        1,
        (Why.HELD_BEHIND, EARLIER, 3, "w2"),
    ),
    (
        "held behind an earlier change waiting for its retry",
        pending(5),
        [pending(1), pending(3, next_attempt_at=LATER)],
        1,
        (Why.HELD_BEHIND, LATER, 3, None),
    ),
    (
        "a later change waiting for a retry holds it too (the claim blocks the workspace)",
        pending(5),
        [pending(8, next_attempt_at=LATER)],
        1,
        (Why.HELD_BEHIND, LATER, 8, None),
    ),
    (
        "queued behind the earliest pending change",
        pending(5),
        [pending(4), pending(2)],
        1,
        (Why.HELD_BEHIND, None, 2, None),
    ),
    (
        "a later pending change holds nothing back",
        pending(5),
        [pending(6), pending(9)],
        1,
        (Why.DUE, None, None, None),
    ),
    (
        "itself in the workspace list is ignored",
        pending(5),
        [pending(5), flying(5)],
        1,
        (Why.DUE, None, None, None),
    ),
    ("due, no worker running", pending(5), [], 0, (Why.DUE, None, None, None)),
]


@pytest.mark.parametrize(
    ("change", "workspace", "live", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_why_not_sent(
    change: Queued, workspace: list[Queued], live: int, expected: tuple[object, ...] | None
) -> None:
    found = why_not_sent(change, workspace, NOW, live)
    if expected is None:
        assert found is None
        return
    assert isinstance(found, Explanation)
    assert (found.why, found.until, found.change_id, found.worker) == expected


@pytest.mark.parametrize(
    ("change", "workspace", "live", "words"),
    [
        (pending(5, attempts=1, next_attempt_at=LATER), [], 1, "retry at 2026-12-01 12:01:30 UTC"),
        (pending(5, attempts=1, next_attempt_at=LATER), [], 1, "after 1 attempt"),
        (pending(5, attempts=3, next_attempt_at=LATER), [], 1, "after 3 attempts"),
        (pending(5), [flying(3, "w2")], 1, "held behind change 3 of the same workspace"),
        (pending(5), [flying(3, "w2")], 1, "worker w2 until 2026-12-01 12:01:30 UTC (in 90 s)"),
        (pending(5), [pending(3, next_attempt_at=LATER)], 1, "waiting for its retry"),
        (pending(5), [pending(3)], 1, "a workspace's changes go in ID order, 3 first"),
        (flying(5, "w9"), [], 1, "held by worker w9 until"),
        (flying(5, "w9", EARLIER), [], 1, "the next claim returns it to pending"),
        (pending(5), [], 0, "no worker is running"),
        (pending(5), [], 2, "waiting for the rate budget or the next claim (2 live workers)"),
    ],
)
def test_the_message_says_what_waits_and_for_what(
    change: Queued, workspace: list[Queued], live: int, words: str
) -> None:
    found = why_not_sent(change, workspace, NOW, live)
    assert found is not None and words in found.message


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (0, "2026-12-01 12:00:00 UTC (now)"),
        (45, "2026-12-01 12:00:45 UTC (in 45 s)"),
        (-45, "2026-12-01 11:59:15 UTC (45 s ago)"),
        (3 * 3600, "2026-12-01 15:00:00 UTC (in 3 h)"),
        (90, "2026-12-01 12:01:30 UTC (in 90 s)"),
        (5400, "2026-12-01 13:30:00 UTC (in 90 min)"),
        (2 * 86_400, "2026-12-03 12:00:00 UTC (in 2 d)"),
        (-600, "2026-12-01 11:50:00 UTC (10 min ago)"),
    ],
)
def test_when(offset: int, text: str) -> None:
    assert when(NOW + timedelta(seconds=offset), NOW) == text
