"""The senders of a run: tasks that take workspace plans off one queue and run their steps.

A workspace's steps run one after another. When a step must wait (a retry) or may not be sent
(its lease was lost, the run is stopping), the rest of the plan goes back to the outbox
untouched, at the next flush, so that nothing overtakes it. The queue counts the changes it
holds, so that the dispatcher claims the next batch while one is still queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from structlog.contextvars import bind_contextvars

from .exceptions import InternalError, StepAbandoned, SyncError, TokenRejected
from .intake import one_line
from .ledger import Ledger
from .planner import Step, WorkspacePlan
from .steps import StepRunner


class PlanQueue:
    """Plans waiting for a sender, counted in changes; :attr:`hungry` asks for the next claim.

    A claimed plan counts from :meth:`expect` (it may first wait for a bulk read-back) until a
    sender takes it (:meth:`get`) or it is given up (:meth:`forget`).
    """

    def __init__(self, low_water: int) -> None:
        self._plans: asyncio.Queue[WorkspacePlan | None] = asyncio.Queue()
        self.low_water = low_water
        self.queued = 0
        """Changes in the plans queued, or claimed and waiting for their read-back."""
        self.hungry = asyncio.Event()

    @property
    def full(self) -> bool:
        """Whether a batch's worth is in hand: the next claim can wait."""
        return self.queued >= self.low_water

    def empty(self) -> bool:
        return self._plans.empty()

    def expect(self, plan: WorkspacePlan) -> None:
        """A claimed plan: it counts as queued from now on."""
        self.queued += plan_size(plan)

    def put(self, plan: WorkspacePlan) -> None:
        """Hand an expected plan to the senders."""
        self._plans.put_nowait(plan)

    def forget(self, plan: WorkspacePlan) -> None:
        """An expected plan is no longer waiting (taken, or given up)."""
        self.queued -= plan_size(plan)
        if self.queued < self.low_water:
            self.hungry.set()

    async def get(self) -> WorkspacePlan | None:
        """The next plan for a sender; None when the senders are to stop."""
        plan = await self._plans.get()
        if plan is not None:
            self.forget(plan)
        return plan

    def close(self, senders: int) -> list[WorkspacePlan]:
        """Take back every plan still queued and tell ``senders`` to stop."""
        left: list[WorkspacePlan] = []
        while not self._plans.empty():
            plan = self._plans.get_nowait()
            if plan is not None:
                left.append(plan)
        for _ in range(senders):
            self._plans.put_nowait(None)
        return left


class Sender:
    """One run's senders: each :meth:`work` task runs plans off a :class:`PlanQueue`.

    ``on_fatal`` ends the run (the database went away, something unexpected broke);
    ``on_rejected`` stops it because Kantata refused the token.
    """

    def __init__(
        self,
        steps: StepRunner,
        ledger: Ledger,
        log: Any,
        *,
        on_fatal: Callable[[SyncError], None],
        on_rejected: Callable[[TokenRejected], None],
    ) -> None:
        self.steps = steps
        self.ledger = ledger
        self.log = log
        self.on_fatal = on_fatal
        self.on_rejected = on_rejected

    async def work(self, queue: PlanQueue, halt: asyncio.Event) -> None:
        """Run plans until the queue says stop; a stopping run hands them back unsent."""
        while True:
            workspace_plan = await queue.get()
            if workspace_plan is None:
                return
            if halt.is_set():
                self.release(workspace_plan.steps)
                continue
            try:
                await self.run_plan(workspace_plan, halt)
            except SyncError as exc:
                # A failed write (the database went away) must end the run, not leave this
                # plan's leases held and extended for ever.
                self.log.error("run.worker_failed", error=str(exc))
                self.on_fatal(exc)
                self.release(workspace_plan.steps)
            except Exception as exc:
                # No code path may leave a task dead and the run alive.
                self.log.error("run.internal_error", error=one_line(exc), exc_info=True)
                self.on_fatal(InternalError(one_line(exc)))
                self.release(workspace_plan.steps)

    async def run_plan(self, workspace_plan: WorkspacePlan, halt: asyncio.Event) -> None:
        """The steps of one workspace, in order, until one must wait."""
        leases = self.ledger.book
        for index, step in enumerate(workspace_plan.steps):
            if halt.is_set():
                self.release(workspace_plan.steps[index:])
                return
            if not all(leases.holds(c.id, c.lease_token) for c in step.changes):
                # Its lease was lost (the workspace is in other hands now), or this worker
                # claimed the change again since (a new plan carries it): this one is stale.
                self.release(workspace_plan.steps[index:])
                return
            # Each sender task has a context of its own: what it binds needs no resetting.
            bind_contextvars(
                workspace_id=workspace_plan.workspace_id, change_id=step.changes[-1].id
            )
            try:
                keep_going = await self.steps.run(step)
            except TokenRejected as exc:
                self.on_rejected(exc)
                self.release(workspace_plan.steps[index:])
                return
            except StepAbandoned:
                self.release(workspace_plan.steps[index:])
                return
            except asyncio.CancelledError:
                self.steps.interrupted(step)
                raise
            except SyncError:
                raise  # the run's problem (the database, the shared budget), not the change's
            except Exception as exc:
                # Quarantine: something unexpected while handling this change ends the change,
                # not the run.
                self.steps.quarantine(step, exc)
                keep_going = True
            if not keep_going:
                self.release(workspace_plan.steps[index + 1 :])
                return

    def release(self, steps: Iterable[Step]) -> None:
        """Hand unsent changes back to the outbox untouched, at the next flush."""
        self.ledger.release_steps(steps)


def plan_size(workspace_plan: WorkspacePlan) -> int:
    """The changes a plan carries."""
    steps = workspace_plan.steps
    if len(steps) == 1:  # the usual plan
        return len(steps[0].changes)
    return sum(len(step.changes) for step in steps)
