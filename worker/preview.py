"""What the next run would send, worked out without claiming, sending or writing (pure).

The due changes a claim may take go through the same steps as in a run: claims of
``batch_size`` changes, oldest first, the first few workspaces of each taken whole (the claim's
own :func:`~worker.claims.whole_prefixes`); each claimed row through
:func:`~worker.intake.admit` (bad ones become ``invalid`` with their reason) and
:func:`~worker.intake.plans_of` (coalescing, and at most one status change of a workspace per
claim: the rest goes back and is taken by a later claim, once the workspace is free again). Each
step becomes the request the client sends (:mod:`worker.endpoints`).

The run's timing is modelled simply: claims follow one another while changes are claimable, and
the workspaces they took are free again once nothing else is. What ``plan`` cannot know:

- changes whose lease has expired (a crashed worker's) come back to pending at the next claim,
  and then go first; changes waiting for a retry that falls due during the run are sent too;
  changes enqueued after ``plan`` ran;
- a status change whose earlier attempt may have landed is read back first, and only sent if
  the read-back shows another status (its POST is marked *conditional*). When it starts its
  workspace's plan, the claim's such changes are read together, with one
  ``GET /workspaces?only=…`` per 200 (:mod:`worker.proofs`), listed with the first of their
  workspaces; if that read fails, the run reads each one with ``GET /workspaces/{id}``;
- answers: a retried request is sent again, and a failed one stops its workspace until retry;
- where a workspace's due changes do not fit in one claim (more than ``batch_size``, or when
  many workspaces are queued), which claim takes which part may depend on timing, and so may
  how they coalesce.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .changes import Change, ClaimedRow
from .claims import CLAIM_LOOKAHEAD, whole_prefixes
from .endpoints import (
    RequestSpec,
    list_request,
    read_back_request,
    status_change_request,
    update_request,
)
from .exceptions import InputError
from .intake import admit, plans_of
from .planner import PutStep, Step, WorkspacePlan
from .proofs import chunked, split_for_proof


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request the run would send, and the changes it carries."""

    claim: int
    workspace_id: int
    step: int
    """Its place among the workspace's requests, from 1."""
    spec: RequestSpec
    change_ids: tuple[int, ...]
    conditional: bool = False
    """Sent only if the read-back before it shows another status."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A change that would become ``invalid``, with the reason it would carry."""

    change_id: int
    workspace_id: object
    reason: str


@dataclass(frozen=True, slots=True)
class Preview:
    """The plan: requests per workspace in order, the changes that would be invalid."""

    requests: tuple[PlannedRequest, ...]
    invalid: tuple[Rejected, ...]
    changes: int
    claims: int

    @property
    def sent(self) -> int:
        """Requests surely sent (a conditional POST is not counted)."""
        return sum(1 for request in self.requests if not request.conditional)

    def summary(self) -> str:
        """``N changes → M requests (R requests/change)``."""
        ratio = f"{self.sent / self.changes:.3f}" if self.changes else "0"
        conditional = len(self.requests) - self.sent
        extra = f" (+{conditional} conditional)" if conditional else ""
        invalid = f"; {len(self.invalid)} invalid" if self.invalid else ""
        return (
            f"{self.changes} changes → {self.sent} requests{extra} "
            f"({ratio} requests/change) in {self.claims} claim(s){invalid}"
        )


def requests_of(step: Step, *, read_in_bulk: bool = False) -> list[tuple[RequestSpec, bool]]:
    """The requests one step sends, each with whether it is conditional.

    ``read_in_bulk``: an ambiguous status change proved by its claim's bulk read (listed
    apart, see :func:`bulk_reads`) needs no read-back of its own.
    """
    if isinstance(step, PutStep):
        return [(update_request(step.workspace_id, step.fields), False)]
    post = status_change_request(step.workspace_id, step.to_status_key)
    if step.change.ambiguous and read_in_bulk:
        return [(post, True)]
    if step.change.ambiguous:
        return [(read_back_request(step.workspace_id), False), (post, True)]
    return [(post, False)]


def bulk_reads(plans: Sequence[WorkspacePlan]) -> dict[int, tuple[RequestSpec, tuple[int, ...]]]:
    """A claim's bulk read-backs, by the first workspace each one reads: the request, and the
    status changes it proves."""
    _ready, proving = split_for_proof(plans)
    return {
        chunk[0].workspace_id: (
            list_request(
                [p.workspace_id for p in chunk], include_custom_fields=False, include_archived=True
            ),
            tuple(p.steps[0].change_ids[0] for p in chunk),
        )
        for chunk in chunked(proving)
    }


class ClaimModel:
    """The queue as successive claims see it: per-workspace queues and the busy workspaces."""

    def __init__(self, rows: Iterable[ClaimedRow]) -> None:
        self.queues: dict[object, deque[ClaimedRow]] = {}
        for row in sorted(rows, key=lambda r: r.id):
            self.queues.setdefault(row.workspace_id, deque()).append(row)
        self.busy: set[object] = set()
        self._heap: list[tuple[int, object]] = [(q[0].id, w) for w, q in self.queues.items()]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self.queues)

    def _push(self, workspace: object) -> None:
        queue = self.queues.get(workspace)
        if queue and workspace not in self.busy:
            heapq.heappush(self._heap, (queue[0].id, workspace))

    def claim(self, limit: int) -> list[ClaimedRow]:
        """The rows the next claim of ``limit`` takes; their workspaces become busy."""
        found: list[ClaimedRow] = []
        cursor: dict[object, int] = {}
        popped: list[tuple[int, object]] = []
        while self._heap and len(found) < limit:
            head, workspace = heapq.heappop(self._heap)
            queue = self.queues.get(workspace)
            index = cursor.get(workspace, 0)
            if workspace in self.busy or not queue or queue[index].id != head:
                continue  # a stale entry
            popped.append((head, workspace))
            found.append(queue[index])
            cursor[workspace] = index + 1
            if index + 1 < len(queue):
                heapq.heappush(self._heap, (queue[index + 1].id, workspace))
        if not found:
            return []
        ahead = list(dict.fromkeys(r.workspace_id for r in found if type(r.workspace_id) is int))
        ahead = ahead[: max(1, limit // CLAIM_LOOKAHEAD)]
        queued = sorted(
            (row for workspace in ahead for row in self.queues[workspace]), key=lambda r: r.id
        )[:limit]
        ids = set(
            whole_prefixes(
                [(r.id, r.workspace_id) for r in queued],
                [(r.id, r.workspace_id) for r in found],
                limit,
            )
        )
        taken: list[ClaimedRow] = []
        for workspace in dict.fromkeys(r.workspace_id for r in [*queued, *found]):
            queue = self.queues[workspace]
            while queue and queue[0].id in ids:
                taken.append(queue.popleft())
            if not queue:
                del self.queues[workspace]
        self.busy.update(row.workspace_id for row in taken)
        for _, workspace in popped:  # what was looked at but not taken stays claimable
            self._push(workspace)
        taken.sort(key=lambda r: r.id)
        return taken

    def hand_back(self, rows: Sequence[ClaimedRow]) -> None:
        """Unsent rows go back to the front of their workspace's queue (still busy)."""
        for row in sorted(rows, key=lambda r: r.id, reverse=True):
            self.queues.setdefault(row.workspace_id, deque()).appendleft(row)

    def settle(self) -> None:
        """Everything claimed so far has been written back: its workspaces are free."""
        busy, self.busy = self.busy, set()
        for workspace in busy:
            self._push(workspace)


def preview(rows: Iterable[ClaimedRow], batch_size: int, limit: int | None = None) -> Preview:
    """The requests the next run would send for these due rows (see the module's notes).

    ``limit``: stop once this many changes are taken (sent or invalid).
    """
    model = ClaimModel(rows)
    requests: list[PlannedRequest] = []
    invalid: list[Rejected] = []
    steps_of: dict[int, int] = {}
    order: dict[int, int] = {}
    taken = claims = 0
    while model and (limit is None or taken < limit):
        size = batch_size if limit is None else min(batch_size, limit - taken)
        claimed = model.claim(size)
        if not claimed:
            if not model.busy:
                break  # cannot happen: a free workspace with changes is always claimable
            model.settle()
            continue
        claims += 1
        valid: list[Change] = []
        by_id = {row.id: row for row in claimed}
        for row in claimed:
            try:
                valid.append(admit(row))
            except InputError as exc:
                invalid.append(Rejected(row.id, row.workspace_id, str(exc)))
        planned = plans_of(valid)
        later = [by_id[change.id] for step in planned.later for change in step.changes]
        model.hand_back(later)
        taken += len(claimed) - len(later)
        reads = bulk_reads(planned.plans)
        proved = {change_id for _spec, change_ids in reads.values() for change_id in change_ids}
        for workspace_plan in planned.plans:
            workspace = workspace_plan.workspace_id
            order.setdefault(workspace, len(order))
            if workspace in reads:
                spec, change_ids = reads[workspace]
                steps_of[workspace] = steps_of.get(workspace, 0) + 1
                requests.append(
                    PlannedRequest(claims, workspace, steps_of[workspace], spec, change_ids)
                )
            for step in workspace_plan.steps:
                in_bulk = step.change_ids[0] in proved
                for spec, conditional in requests_of(step, read_in_bulk=in_bulk):
                    steps_of[workspace] = steps_of.get(workspace, 0) + 1
                    requests.append(
                        PlannedRequest(
                            claims,
                            workspace,
                            steps_of[workspace],
                            spec,
                            step.change_ids,
                            conditional,
                        )
                    )
    requests.sort(key=lambda r: (order[r.workspace_id], r.step))
    return Preview(tuple(requests), tuple(invalid), taken, claims)
