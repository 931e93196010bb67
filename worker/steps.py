"""Sending one planned step: under the breaker, the rate limit and a confirmed lease.

A step is one request (a merged PUT, or one status change) plus, where the answer leaves it
ambiguous, a ``GET /workspaces/{id}`` read-back. What it decides (the pure functions of
:mod:`worker.outcomes`) goes to the run's :class:`~worker.ledger.Ledger`, and every request is
logged once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from .breaker import CircuitBreaker
from .changes import AttemptRecord, Kind, Lease, Outcome, Result, State
from .client import (
    GET_WORKSPACE,
    POST_STATUS_CHANGE,
    PUT_WORKSPACE,
    KantataClient,
    SendGuard,
    status_key_of,
    workspace_snapshot,
)
from .config import Settings
from .exceptions import LeaseLost, StepAbandoned, TokenRejected, TransportError
from .intake import one_line
from .ledger import Ledger
from .metrics import Metrics
from .outcomes import (
    ApiResponse,
    Classified,
    Verdict,
    attempt_level,
    backoff_delay,
    classify,
    failure_result,
    shared_pause,
    success_results,
)
from .planner import PutStep, StatusStep, Step
from .ratelimit import Limiter

request_started: ContextVar[bool] = ContextVar("request_started", default=False)
"""Whether the step the current task runs has put a request on the wire."""


class StepRunner:
    """Runs the steps of one run, recording into its ``ledger``.

    ``confirm`` re-validates leases right before a request leaves (see :mod:`worker.leases`);
    ``halted`` says the run is stopping.
    """

    def __init__(
        self,
        *,
        client: KantataClient,
        settings: Settings,
        limiter: Limiter,
        read_limiter: Limiter | None = None,
        breaker: CircuitBreaker,
        metrics: Metrics,
        ledger: Ledger,
        confirm: Callable[[Iterable[Lease]], Awaitable[bool]],
        halted: Callable[[], bool],
        rng: random.Random,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.limiter = limiter
        self.read_limiter = read_limiter or limiter
        """Reads' own budget where it is learned apart (``rate_limit = "auto"``)."""
        self.breaker = breaker
        self.metrics = metrics
        self.ledger = ledger
        self.log = ledger.log
        self.confirm = confirm
        self.halted = halted
        self.rng = rng
        self.clock = clock
        self.monotonic = monotonic
        """The clock of lease deadlines (see :mod:`worker.leases`)."""
        self.sending: set[asyncio.Task[Any]] = set()
        """The tasks whose request is on the wire (the rest may be cancelled at shutdown)."""
        self.limited = limiter.budget > 0
        """Whether there is a limiter to wait for (``rate_limit`` 0 turns it off)."""

    async def run(self, step: Step) -> bool:
        """Send one step and record its results; False when the workspace must wait."""
        request_started.set(False)
        if isinstance(step, StatusStep) and step.change.ambiguous:
            confirmed = await self._read_back(step, before_send=True)
            if confirmed is not None:
                return confirmed
        if isinstance(step, PutStep):
            answer = await self._send(
                step,
                PUT_WORKSPACE,
                lambda guard: self.client.update_workspace(
                    step.workspace_id, step.fields, guard=guard
                ),
            )
        else:
            answer = await self._send(
                step,
                POST_STATUS_CHANGE,
                lambda guard: self.client.change_status(
                    step.workspace_id, step.to_status_key, guard=guard
                ),
            )
        verdict = classify(answer, status_change=isinstance(step, StatusStep))
        if verdict.verdict is Verdict.SUCCESS and isinstance(answer, ApiResponse):
            self._succeeded(step, Outcome.APPLIED, answer)
            return True
        if verdict.verdict is Verdict.READ_BACK and isinstance(step, StatusStep):
            confirmed = await self._read_back(step, before_send=False, after=verdict)
            return True if confirmed is None else confirmed
        return self._settle_failure(step, verdict)

    async def _read_back(
        self, step: StatusStep, *, before_send: bool, after: Classified | None = None
    ) -> bool | None:
        """GET the workspace to see whether the status is already in place.

        Before a resend, None means "not in place: send it". After a same-status answer, the
        change either succeeded as already applied or failed with Kantata's message.
        """
        answer = await self._send(
            step, GET_WORKSPACE, lambda _guard: self.client.get_workspace(step.workspace_id)
        )
        verdict = classify(answer, status_change=False)
        if verdict.verdict is not Verdict.SUCCESS or not isinstance(answer, ApiResponse):
            return self._settle_failure(step, verdict)
        current = status_key_of(answer.body, step.workspace_id)
        if current == step.to_status_key:
            self._succeeded(step, Outcome.ALREADY_APPLIED, answer)
            return True
        if before_send:
            return None
        assert after is not None
        self.ledger.finish(
            Result(
                step.change.id,
                step.change.lease_token,
                State.FAILED,
                attempts=step.change.attempts + 1,
                http_status=after.http_status,
                error_type=after.error_type,
                error_message=f"{after.error_message} (read-back shows status {current})",
                error_field=after.error_field,
            ),
            kind=Kind.STATUS_CHANGE,
        )
        return True

    def limiter_for(self, endpoint: str) -> Limiter:
        """The budget an endpoint (``"GET /workspaces"``, ...) draws on."""
        return self.read_limiter if endpoint.startswith("GET ") else self.limiter

    async def wait_for_slot(self, endpoint: str) -> float:
        """Wait for the breaker and the rate limiter; the seconds the limiter took.

        Waiting can outlast a 401 or a SIGTERM: then nothing is sent (:class:`StepAbandoned`).
        """
        # A closed breaker (the usual case) is not awaited.
        if not self.breaker.closed:
            paused = await self.breaker.wait()
            if paused:
                self.log.info(
                    "breaker.waited", seconds=round(paused, 3), phase=self.breaker.state.phase
                )
        waited = await self.limiter_for(endpoint).acquire()
        if self.halted():
            raise StepAbandoned(f"{endpoint} not sent: the run is stopping")
        return waited

    async def on_the_wire(
        self, request: Callable[[], Awaitable[ApiResponse]]
    ) -> tuple[ApiResponse | TransportError, float]:
        """Send a request, marked as on the wire (not to be cancelled at shutdown); the
        answer, or the transport error, and its duration in milliseconds."""
        started = time.perf_counter()
        task = asyncio.current_task()
        if task is not None:
            self.sending.add(task)
        try:
            answer: ApiResponse | TransportError = await request()
        except TransportError as exc:
            answer = exc
        finally:
            if task is not None:
                self.sending.discard(task)
        return answer, (time.perf_counter() - started) * 1000

    async def _send(
        self, step: Step, endpoint: str, request: Callable[[SendGuard], Awaitable[ApiResponse]]
    ) -> ApiResponse | TransportError:
        waited = await self.wait_for_slot(endpoint)
        # The last moment before the request leaves: is the lease still surely ours? A worker
        # that was frozen (or waited out a database outage) wakes past its deadline here.
        leases = [Lease(change.id, change.lease_token) for change in step.changes]
        book = self.ledger.book
        if not await self.confirm(leases):
            lost = [
                lease.change_id
                for lease in leases
                if not self.ledger.holds(lease.change_id, lease.token)
            ]
            raise LeaseLost(
                f"{endpoint} not sent: the lease of change(s) "
                f"{', '.join(map(str, lost or step.change_ids))} could not be confirmed"
            )
        if self.limited:
            self.metrics.limiter_wait.observe(waited)
        attempted_at = self.clock()
        request_started.set(True)

        def guard() -> str | None:
            # Asked again as the bytes are written (a loop iteration later, or after a freeze).
            stale = book.stale(leases, self.monotonic())
            if not stale:
                return None
            return (
                f"{endpoint} not sent: the lease of change(s) {', '.join(map(str, stale))} "
                f"ran out before the request left"
            )

        try:
            answer, duration_ms = await self.on_the_wire(lambda: request(guard))
        except LeaseLost:
            request_started.set(False)  # nothing left: the step goes back uncharged
            raise
        status = answer.status if isinstance(answer, ApiResponse) else None
        error = None if isinstance(answer, ApiResponse) else str(answer)
        error_type = answer.kind if isinstance(answer, TransportError) else None
        request_id = answer.request_id if isinstance(answer, ApiResponse) else None
        same_status = False
        if isinstance(answer, ApiResponse) and answer.status >= 400:
            verdict = classify(answer, status_change=endpoint == POST_STATUS_CHANGE)
            error, error_type = verdict.error_message, verdict.error_type
            same_status = verdict.verdict is Verdict.READ_BACK
        self.breaker.record(
            unhealthy=isinstance(answer, TransportError) or (status is not None and status >= 500)
        )
        if status == 429:
            self.ledger.stats.rate_limited += 1
            self.metrics.throttled.inc()
            assert isinstance(answer, ApiResponse)
            self.limiter_for(endpoint).on_throttled(
                shared_pause(answer.retry_after, self.settings.max_retry_after)
            )
        self.metrics.request(endpoint, str(status) if status else "none", duration_ms / 1000)
        self.ledger.attempt(
            AttemptRecord(
                self.ledger.run_id,
                step.change_ids,
                step.workspace_id,
                endpoint,
                status,
                duration_ms,
                error_type,
                error,
                request_id,
                attempted_at,
            )
        )
        level = attempt_level(status, same_status=same_status)
        if level != "debug" or self.ledger.debug:
            getattr(self.log, level)(
                "http.attempt",
                endpoint=endpoint,
                change_ids=list(step.change_ids),
                status=status,
                duration_ms=round(duration_ms, 2),
                request_id=request_id,
                error_type=error_type,
                error=error,
                limiter_wait_ms=round(waited * 1000, 2),
            )
        return answer

    def _succeeded(self, step: Step, outcome: Outcome, answer: ApiResponse) -> None:
        snapshot = workspace_snapshot(answer.body, step.workspace_id)
        for change, result in zip(
            step.changes,
            success_results(step.changes, outcome, answer.status, snapshot),
            strict=True,
        ):
            self.ledger.finish(result, kind=change.kind)

    def _settle_failure(self, step: Step, verdict: Classified) -> bool:
        """Record a failed attempt: retry later, fail for good, or stop the run (401).

        True when the workspace may go on with its next step (nothing of it waits to retry).
        """
        if verdict.verdict is Verdict.TOKEN_REJECTED:
            raise TokenRejected(verdict.error_message or "token rejected")
        for change in step.changes:
            delay = backoff_delay(
                change.attempts + 1,
                base=self.settings.retry_base_delay,
                cap=self.settings.retry_max_delay,
                jitter=self.rng.random(),
                retry_after=verdict.retry_after,
            )
            result = failure_result(
                change,
                verdict,
                max_attempts=self.settings.max_attempts,
                delay=delay,
                now=self.clock(),
            )
            if result.state is State.PENDING:
                self.ledger.retry(result)
                continue
            if verdict.verdict is Verdict.RETRY:
                self.log.error(
                    "change.gave_up",
                    change_id=change.id,
                    attempts=result.attempts,
                    error_type=result.error_type,
                    error=verdict.error_message,
                )
            self.ledger.finish(result, kind=change.kind)
        return verdict.verdict is not Verdict.RETRY

    def interrupted(self, step: Step) -> None:
        """Shutdown cut this step off. A request that left may have landed: retry it later
        (a status change is read back first). One that never left goes back uncharged."""
        if not request_started.get():
            self.ledger.release_steps([step])
            return
        for change in step.changes:
            if self.ledger.book.forget(change.id, change.lease_token) is None:
                continue
            self.ledger.buffer.result(
                Result(
                    change.id,
                    change.lease_token,
                    State.PENDING,
                    attempts=change.attempts + 1,
                    error_type="interrupted",
                    error_message="request interrupted by shutdown",
                )
            )

    def quarantine(self, step: Step, exc: Exception) -> None:
        """Something unexpected broke while handling this step: its changes fail (internal),
        once logged, and the run goes on."""
        reason = one_line(exc)
        self.log.error(
            "change.internal_error",
            change_ids=list(step.change_ids),
            error=reason,
            request_sent=request_started.get(),
            exc_info=exc,
        )
        for change in step.changes:
            if not self.ledger.holds(change.id, change.lease_token):
                continue
            self.metrics.internal_errors.inc()
            self.ledger.finish(
                Result(
                    change.id,
                    change.lease_token,
                    State.FAILED,
                    attempts=change.attempts + int(request_started.get()),
                    error_type="internal",
                    error_message=f"internal error: {reason}",
                ),
                kind=change.kind,
            )
