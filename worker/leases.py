"""The leases a worker holds, and the rule that says when it may still send under them.

Kantata checks no fencing token, so the worker fences itself: a change may be sent only while
its lease is surely still this worker's. Another worker takes a lease over when it expires
(``lease_seconds`` after the claim or the last extension) or when this worker's registry
heartbeat has been stale for ``dead_after`` seconds, each judged by the other worker's clock.
So a lease is trusted until the earlier of the two, counted on this worker's monotonic clock
from the *start* of the claim, extension or heartbeat that last succeeded, less a margin for
clock drift between hosts and for the time a request takes to leave. A process that was frozen
(SIGSTOP, a VM pause, a swap storm) wakes past that deadline and sends nothing until it has
re-validated the lease in the database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .changes import Lease

MIN_MARGIN = 1.0
MAX_MARGIN = 30.0
MARGIN_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """How long a claim or an extension holds, and how long a silent worker counts as alive.

    ``window`` is the shorter of the two ways a lease can be taken over; ``margin`` a quarter
    of it, between one and thirty seconds, and at most half of it (the half keeps a freshly
    confirmed lease sendable however short the lease is). Both are worked out once: every
    send asks for them.
    """

    lease_seconds: float
    dead_after: float | None = None
    """Seconds without a registry heartbeat after which others take the leases (None: never)."""
    window: float = field(init=False, repr=False, compare=False)
    margin: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window = min(self.lease_seconds, self.dead_after or math.inf)
        quarter = max(MIN_MARGIN, MARGIN_FRACTION * window)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "margin", min(MAX_MARGIN, quarter, window / 2))


def send_deadline(terms: LeaseTerms, held_since: float, alive_since: float | None) -> float:
    """Pure: the monotonic time after which a lease must be re-validated before a send.

    ``held_since`` is when the claim or extension that last covered the lease started;
    ``alive_since`` when the last successful registry heartbeat started (None without a
    registry).
    """
    deadline = held_since + terms.lease_seconds
    if terms.dead_after is not None and alive_since is not None:
        deadline = min(deadline, alive_since + terms.dead_after)
    return deadline - terms.margin


def may_send(terms: LeaseTerms, held_since: float, alive_since: float | None, now: float) -> bool:
    """Pure: whether a request under this lease may leave at ``now`` without re-validation."""
    return now < send_deadline(terms, held_since, alive_since)


@dataclass(slots=True)
class _Held:
    lease: Lease
    since: float


class LeaseBook:
    """The leases one worker holds, each with the time it was last confirmed.

    Changes enter on claim (:meth:`hold`) and leave when their result is decided
    (:meth:`forget`), when they are handed back (:meth:`release`), or when the lease turns out
    to be lost (:meth:`lost`).
    """

    def __init__(self, terms: LeaseTerms) -> None:
        self.terms = terms
        self._held: dict[int, _Held] = {}
        self.alive_since: float | None = None
        """When the last successful registry heartbeat started (None: no registry)."""

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, change_id: object) -> bool:
        return change_id in self._held

    def hold(self, lease: Lease, since: float) -> None:
        self._held[lease.change_id] = _Held(lease, since)

    def holds(self, change_id: int, token: int | None = None) -> bool:
        """Whether this worker holds ``change_id`` (under ``token``, when given).

        The token matters: when a worker's own lease expired (a long database outage) and its
        next claim took the change again, the plan that still carries the old token is stale
        and must neither send nor settle anything.
        """
        held = self._held.get(change_id)
        return held is not None and (token is None or held.lease.token == token)

    def forget(self, change_id: int, token: int | None = None) -> Lease | None:
        """Stop holding a change (its result is decided); return its lease if it was held.

        With ``token``, only the lease of that claim is forgotten, never a later one.
        """
        held = self._held.get(change_id)
        if held is None or (token is not None and held.lease.token != token):
            return None
        del self._held[change_id]
        return held.lease

    release = forget
    """Hand a change back; the caller returns the lease to the queue."""

    def lost(self, change_ids: Iterable[int]) -> list[int]:
        """Drop leases that were taken over; return those that were still held here."""
        return [change_id for change_id in change_ids if self._held.pop(change_id, None)]

    def leases(self, change_ids: Iterable[int] | None = None) -> list[Lease]:
        """The held leases (of ``change_ids`` when given), in ID order."""
        if change_ids is None:
            return [held.lease for _, held in sorted(self._held.items())]
        found = (self._held.get(change_id) for change_id in sorted(change_ids))
        return [held.lease for held in found if held is not None]

    def confirmed(self, change_ids: Iterable[int], since: float) -> None:
        """The database extended these leases in an operation that started at ``since``."""
        for change_id in change_ids:
            held = self._held.get(change_id)
            if held is not None and since > held.since:
                held.since = since

    def alive(self, since: float) -> None:
        """A registry heartbeat that started at ``since`` succeeded."""
        if self.alive_since is None or since > self.alive_since:
            self.alive_since = since

    def deadline(self, change_id: int, token: int | None = None) -> float:
        """When the lease of ``change_id`` must be re-validated (minus infinity if not held,
        or held under another ``token``)."""
        held = self._held.get(change_id)
        if held is None or (token is not None and held.lease.token != token):
            return -math.inf
        return send_deadline(self.terms, held.since, self.alive_since)

    def stale(self, leases: Iterable[Lease | int], now: float) -> list[int]:
        """Which of ``leases`` (or change IDs) may not be sent at ``now`` without
        re-validation; a lease whose token is no longer the one held is always stale."""
        stale = []
        for lease in leases:
            if isinstance(lease, int):
                change_id, token = lease, None
            else:
                change_id, token = lease.change_id, lease.token
            if not self.deadline(change_id, token) > now:
                stale.append(change_id)
        return stale

    def clear(self) -> list[Lease]:
        """Drop every lease; return them (to be handed back)."""
        leases = self.leases()
        self._held.clear()
        return leases
