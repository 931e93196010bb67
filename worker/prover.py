"""The bulk read-back: proving a claim's ambiguous status changes with one read per 200.

The I/O half of :mod:`worker.proofs`. Each read waits for the breaker and the rate limiter, as
every request does; no lease needs confirming, because a read changes nothing in Kantata (what
the read decides is written back fenced, as any result is). It is tried once: a 429, a 5xx, a
timeout, a dropped connection or an answer that is not the documented envelope leaves its
changes ambiguous, and each step then reads its workspace back with ``GET /workspaces/{id}``
before sending, as it always did. A 401 stops the run, as it does for any request.

The read is one request: it counts once in the run's ``requests``, the metrics and the
``http.attempt`` log line, and it is recorded in the attempt log once per workspace read (the
same request ID on each row), so that every change's history shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from .changes import Kind, Outcome
from .endpoints import GET_WORKSPACES
from .envelopes import status_key_of, workspace_page, workspace_snapshot
from .exceptions import ProtocolError, StepAbandoned, TokenRejected, TransportError
from .intake import one_line
from .outcomes import (
    ApiResponse,
    Verdict,
    attempt_level,
    classify,
    shared_pause,
    success_results,
)
from .planner import StatusStep, WorkspacePlan
from .proofs import Proof, after_proof, bulk_attempts, chunked, proof_of
from .steps import StepRunner

Deliver = Callable[[WorkspacePlan, WorkspacePlan | None], None]
"""Called once per proved plan with what is left of it to run (None: nothing)."""


class BulkProver:
    """Proves the plans of one claim whose first step is an ambiguous status change.

    It borrows the run's :class:`~worker.steps.StepRunner` for the client, the limiter, the
    breaker, the metrics and the ledger.
    """

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner
        self.ledger = runner.ledger

    async def run(
        self,
        plans: Sequence[WorkspacePlan],
        deliver: Deliver,
        on_token_rejected: Callable[[TokenRejected], None],
    ) -> None:
        """Prove ``plans`` and deliver each one; never raises but for cancellation.

        A plan not proved (the run stopped, the read broke) is delivered unchanged: it still
        starts with its ambiguous status change, which the step reads back by itself, or which
        goes back to the queue if the run is stopping.
        """
        left = {workspace_plan.workspace_id: workspace_plan for workspace_plan in plans}

        def handed(before: WorkspacePlan, after: WorkspacePlan | None) -> None:
            del left[before.workspace_id]
            deliver(before, after)

        try:
            await self.prove(plans, handed)
        except TokenRejected as exc:
            on_token_rejected(exc)
        except StepAbandoned:
            pass  # the run is stopping before the read was sent
        except Exception as exc:
            # The bulk read is an economy: if it breaks, each step reads its workspace back.
            self.runner.log.error("readback.bulk_failed", error=one_line(exc), exc_info=True)
        finally:
            for workspace_plan in list(left.values()):
                handed(workspace_plan, workspace_plan)

    async def prove(self, plans: Sequence[WorkspacePlan], deliver: Deliver) -> None:
        """Read the plans' workspaces in chunks of 200 and hand each plan on as proved.

        Raises :class:`StepAbandoned` when the run stops before a read is sent and
        :class:`TokenRejected` on a 401; the plans not yet delivered are the caller's to
        release.
        """
        for chunk in chunked(plans):
            steps = [_first(workspace_plan) for workspace_plan in chunk]
            statuses = await self._read(steps)
            counts = dict.fromkeys(Proof, 0)
            for workspace_plan, step in zip(chunk, steps, strict=True):
                found = statuses.get(step.workspace_id) if statuses is not None else None
                proof = proof_of(step.to_status_key, found[0] if found else None)
                change = step.change
                if proof is Proof.IN_PLACE and not self.ledger.holds(change.id, change.lease_token):
                    proof = Proof.UNKNOWN  # the lease went meanwhile: the plan is dropped next
                if proof is Proof.IN_PLACE and found is not None:
                    self._already_applied(step, found[1])
                counts[proof] += 1
                deliver(workspace_plan, after_proof(workspace_plan, proof))
            self.runner.log.info(
                "readback.bulk",
                workspaces=len(chunk),
                already_applied=counts[Proof.IN_PLACE],
                to_send=counts[Proof.NOT_IN_PLACE],
                unproved=counts[Proof.UNKNOWN],
            )

    def _already_applied(self, step: StatusStep, answer: ApiResponse) -> None:
        snapshot = workspace_snapshot(answer.body, step.workspace_id)
        for result in success_results(
            step.changes, Outcome.ALREADY_APPLIED, answer.status, snapshot
        ):
            self.ledger.finish(result, kind=Kind.STATUS_CHANGE)

    async def _read(
        self, steps: Sequence[StatusStep]
    ) -> dict[int, tuple[int | None, ApiResponse]] | None:
        """Each listed workspace's current status key (and the answer), or None: unreadable."""
        runner = self.runner
        waited = await runner.wait_for_slot(GET_WORKSPACES)
        if runner.limited:
            runner.metrics.limiter_wait.observe(waited)
        ids = [step.workspace_id for step in steps]
        attempted_at = runner.clock()
        answer, duration_ms = await runner.on_the_wire(
            lambda: runner.client.list_workspaces(
                ids, include_custom_fields=False, include_archived=True
            )
        )
        verdict = classify(answer, status_change=False)
        found: dict[int, tuple[int | None, ApiResponse]] | None = None
        error, error_type = verdict.error_message, verdict.error_type
        if verdict.verdict is Verdict.SUCCESS and isinstance(answer, ApiResponse):
            try:
                page = workspace_page(answer.body)
            except ProtocolError as exc:
                error, error_type = f"not the documented envelope ({exc})", "protocol"
            else:
                found = {
                    ident: (status_key_of(answer.body, ident), answer)
                    for ident in ids
                    if ident in page.workspaces
                }
        self._account(steps, answer, error, error_type, duration_ms, waited, attempted_at)
        if verdict.verdict is Verdict.TOKEN_REJECTED:
            raise TokenRejected(verdict.error_message or "token rejected")
        return found

    def _account(
        self,
        steps: Sequence[StatusStep],
        answer: ApiResponse | TransportError,
        error: str | None,
        error_type: str | None,
        duration_ms: float,
        waited: float,
        attempted_at: datetime,
    ) -> None:
        """The breaker, the shared rate, the metrics, the attempt log and the log line."""
        runner = self.runner
        status = answer.status if isinstance(answer, ApiResponse) else None
        request_id = answer.request_id if isinstance(answer, ApiResponse) else None
        runner.breaker.record(
            unhealthy=isinstance(answer, TransportError) or (status is not None and status >= 500)
        )
        if isinstance(answer, ApiResponse) and status == 429:
            self.ledger.stats.rate_limited += 1
            runner.metrics.throttled.inc()
            runner.limiter_for(GET_WORKSPACES).on_throttled(
                shared_pause(answer.retry_after, runner.settings.max_retry_after)
            )
        runner.metrics.request(
            GET_WORKSPACES, str(status) if status else "none", duration_ms / 1000
        )
        self.ledger.one_request(
            bulk_attempts(
                self.ledger.run_id,
                steps,
                GET_WORKSPACES,
                status,
                duration_ms,
                error_type=error_type,
                error_message=error,
                request_id=request_id,
                attempted_at=attempted_at,
            )
        )
        level = attempt_level(status)
        if level == "debug" and error is not None:
            level = "warning"  # a 200 whose body could not be read
        if level != "debug" or self.ledger.debug:
            getattr(runner.log, level)(
                "http.attempt",
                endpoint=GET_WORKSPACES,
                # Every request's line names a workspace and a change: here the first read.
                workspace_id=steps[0].workspace_id,
                change_id=steps[0].change.id,
                change_ids=[step.change.id for step in steps],
                workspace_ids=[step.workspace_id for step in steps],
                status=status,
                duration_ms=round(duration_ms, 2),
                request_id=request_id,
                error_type=error_type,
                error=error,
                limiter_wait_ms=round(waited * 1000, 2),
            )


def _first(workspace_plan: WorkspacePlan) -> StatusStep:
    step = workspace_plan.steps[0]
    assert isinstance(step, StatusStep)
    return step
