"""Why a change has not been sent yet (pure): the claim's own rules, said in words.

A pending change goes out once it is due (no retry time in the future) and nothing of its
workspace holds it back: no change of the workspace in flight, none waiting for a retry, and no
earlier pending change (a workspace's changes go in ID order). :func:`why_not_sent` applies
those rules, in that order of precedence, to values read from the outbox, and names the change
that holds this one back, the worker that holds it, and until when. The claim itself lives in
:mod:`worker.claims`; this module only explains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from .changes import State


class Why(StrEnum):
    """The reason a change is not sent yet, as ``show --format json`` names it."""

    IN_FLIGHT = "in_flight"
    """Claimed by a worker under a lease: being sent, or about to be."""
    LEASE_EXPIRED = "lease_expired"
    """Claimed, but its lease ran out: the next claim returns it to pending."""
    WAITING_FOR_RETRY = "waiting_for_retry"
    """An attempt failed with something retryable; the retry is due at ``until``."""
    HELD_BEHIND = "held_behind"
    """Another change of the same workspace goes first (``change_id``)."""
    DUE = "due"
    """Nothing holds it back: it waits for the rate budget, a claim, or the next run."""


@dataclass(frozen=True, slots=True)
class Queued:
    """What the explanation needs of one row of ``sync_changes``."""

    id: int
    state: str
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a change waits: the reason, a sentence, and what it waits for."""

    why: Why
    message: str
    until: datetime | None = None
    change_id: int | None = None
    """The change it is held behind."""
    worker: str | None = None
    """The worker that holds it (or holds the change it is held behind)."""


def when(moment: datetime, now: datetime) -> str:
    """``moment`` in UTC to the second, and how far it is from ``now``."""
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    seconds = (moment - now).total_seconds()
    return f"{stamp} ({_span(seconds)})"


UNITS = ((86_400, "d"), (3_600, "h"), (60, "min"), (1, "s"))


def _span(seconds: float) -> str:
    later = seconds >= 0
    left = abs(seconds)
    if left < 1:
        return "now"
    # A unit only once there are two of it: 90 s, not "2 min"; 90 min, not "2 h".
    size, unit = next((s, u) for s, u in UNITS if left >= 2 * s or s == 1)
    amount = f"{left / size:.0f} {unit}"
    return f"in {amount}" if later else f"{amount} ago"


def why_not_sent(
    change: Queued, workspace: Sequence[Queued], now: datetime, live_workers: int
) -> Explanation | None:
    """Why ``change`` has not gone out by ``now``; None once it has (or never will).

    ``workspace`` holds the other changes of its workspace that can hold it back: those in
    flight, those waiting for a retry, and earlier pending ones (more do no harm). Among
    several, the one named is the first by this precedence: in flight, waiting for a retry,
    earlier pending; then the lowest ID. ``live_workers`` counts the workers heartbeating.
    """
    if change.state == State.IN_FLIGHT:
        return _in_flight(change, now)
    if change.state != State.PENDING:
        return None
    if change.next_attempt_at is not None and change.next_attempt_at > now:
        tries = f"{change.attempts} attempt{'s' if change.attempts != 1 else ''}"
        return Explanation(
            Why.WAITING_FOR_RETRY,
            f"waiting for a retry at {when(change.next_attempt_at, now)}, after {tries}",
            until=change.next_attempt_at,
        )
    blocker = _blocker(change, workspace, now)
    if blocker is not None:
        return blocker
    if live_workers == 0:
        text = (
            "due now; no worker is running: it goes with the next `kantata-sync run` "
            "(or as soon as `kantata-sync serve` starts)"
        )
    else:
        text = (
            f"due now; waiting for the rate budget or the next claim "
            f"({live_workers} live worker{'s' if live_workers != 1 else ''})"
        )
    return Explanation(Why.DUE, text)


def _in_flight(change: Queued, now: datetime) -> Explanation:
    owner = change.lease_owner or "(unknown)"
    expires = change.lease_expires_at
    if expires is not None and expires < now:
        return Explanation(
            Why.LEASE_EXPIRED,
            f"in flight under worker {owner}, whose lease expired at {when(expires, now)}: "
            "the next claim returns it to pending",
            until=expires,
            worker=owner,
        )
    until = f" until {when(expires, now)}" if expires is not None else ""
    return Explanation(
        Why.IN_FLIGHT,
        f"held by worker {owner}{until} (in flight under a lease: being sent, or about to be)",
        until=expires,
        worker=owner,
    )


def _blocker(change: Queued, workspace: Sequence[Queued], now: datetime) -> Explanation | None:
    others = sorted((o for o in workspace if o.id != change.id), key=lambda o: o.id)
    for other in others:
        if other.state == State.IN_FLIGHT:
            owner = other.lease_owner or "(unknown)"
            expires = other.lease_expires_at
            if expires is None:
                held = f"in flight under worker {owner}"
            elif expires < now:
                held = (
                    f"in flight under worker {owner}, whose lease expired at "
                    f"{when(expires, now)}; the next claim takes it back"
                )
            else:
                held = f"in flight under worker {owner} until {when(expires, now)}"
            return Explanation(
                Why.HELD_BEHIND,
                f"held behind change {other.id} of the same workspace, {held}",
                until=expires,
                change_id=other.id,
                worker=owner,
            )
    for other in others:
        retry_at = other.next_attempt_at
        if other.state == State.PENDING and retry_at is not None and retry_at > now:
            return Explanation(
                Why.HELD_BEHIND,
                f"held behind change {other.id} of the same workspace, waiting for its retry "
                f"at {when(retry_at, now)}",
                until=retry_at,
                change_id=other.id,
            )
    for other in others:
        if other.state == State.PENDING and other.id < change.id:
            return Explanation(
                Why.HELD_BEHIND,
                f"queued behind change {other.id} of the same workspace, pending and due: "
                f"a workspace's changes go in ID order, {other.id} first",
                change_id=other.id,
            )
    return None
