"""Pure decisions about Kantata OX answers: the verdict, the backoff, and each change's result.

The outcome table: 2xx → applied; 429, 5xx, timeouts, connection errors → retry with
exponential backoff and full jitter; 400, 403, 404, 422 → failed at once with Kantata's error;
the same-status 422 of a status change → confirm by read-back; 401 → stop the run.
Error text is capped at :data:`MAX_MESSAGE_CHARS` characters before anything stores it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

from .changes import Change, JSONObject, Outcome, Result, State
from .exceptions import TransportError

SAME_STATUS = re.compile(
    r"already (has|have|is in|in|at) (the )?(specified|same|this) status", re.I
)
MAX_MESSAGE_CHARS = 2000
"""The longest error text kept in a column, a log line or an exception message."""
DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_RETRY_AFTER_WAIT = 30 * 86_400.0
"""The longest one change waits for a Retry-After (30 days); longer ones are cut to it."""


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """An HTTP answer from Kantata OX, body already parsed."""

    status: int
    body: JSONObject | None
    request_id: str | None = None
    retry_after: float | None = None
    duration_ms: float = 0.0


class Verdict(StrEnum):
    SUCCESS = "success"
    READ_BACK = "read_back"
    RETRY = "retry"
    PERMANENT = "permanent"
    TOKEN_REJECTED = "token_rejected"


@dataclass(frozen=True, slots=True)
class Classified:
    """A verdict with the details that are written back beside the change."""

    verdict: Verdict
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_field: str | None = None
    retry_after: float | None = None

    @property
    def ambiguous(self) -> bool:
        """The request may have been applied although no success was seen."""
        return self.verdict is Verdict.RETRY and may_have_landed(self.http_status)


def may_have_landed(http_status: int | None) -> bool:
    """Whether a request that got this answer (None: no answer) may still have been applied.

    No answer, or a 5xx, says nothing about what the server did; any other answer does.
    """
    return http_status is None or http_status >= 500


def kantata_error(body: JSONObject | None) -> tuple[str | None, str | None, str | None]:
    """Kantata's error type, message(s) and field from ``{"errors": [...]}``, if present."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return None, None, None
    items = [e for e in errors if isinstance(e, dict)]
    if not items:
        return None, None, None
    first = items[0]
    messages = "; ".join(str(e["message"]) for e in items if e.get("message") is not None)
    field = first.get("field")
    kind = first.get("type")
    return (
        str(kind) if kind is not None else None,
        messages or None,
        str(field) if field is not None else None,
    )


def classify(answer: ApiResponse | TransportError, *, status_change: bool) -> Classified:
    """Decide what an answer means for the changes of the request that got it."""
    if isinstance(answer, TransportError):
        return Classified(Verdict.RETRY, None, answer.kind, cap_message(str(answer)))
    status = answer.status
    if 200 <= status < 300:
        return Classified(Verdict.SUCCESS, status)
    kind, message, field = (
        None if text is None else cap_message(text) for text in kantata_error(answer.body)
    )
    if status == 401:
        return Classified(
            Verdict.TOKEN_REJECTED, status, kind or "oauth", message or "token rejected"
        )
    if status == 429:
        return Classified(
            Verdict.RETRY,
            status,
            "rate_limited",
            message or "rate limit exceeded",
            field,
            answer.retry_after,
        )
    if status >= 500 or status == 408:
        return Classified(
            Verdict.RETRY,
            status,
            kind or "server_error",
            message or f"HTTP {status}",
            field,
            answer.retry_after,
        )
    if status_change and status == 422 and message and SAME_STATUS.search(message):
        return Classified(Verdict.READ_BACK, status, kind or "validation", message, field)
    return Classified(
        Verdict.PERMANENT, status, kind or "http_error", message or f"HTTP {status}", field
    )


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: full jitter, capped, never under Retry-After.

    Retry-After is honoured up to :data:`MAX_RETRY_AFTER_WAIT`: a longer one (a date centuries
    away, twenty digits of seconds) would not fit a timestamp. ``jitter`` is a uniform draw in
    [0, 1); passing it in keeps this function pure.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 64))
    delay: float = jitter * ceiling
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_WAIT))
    return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds, uncapped: delta-seconds or an HTTP-date (one in the past is 0).

    None when absent, garbage, negative or not finite. ``now`` (UTC) is for tests.
    """
    text = value.strip() if value is not None else ""
    if not text:
        return None
    if DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000": UTC, source unknown
            when = when.replace(tzinfo=UTC)
        return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def cap_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with the original length.

    The cut never splits a surrogate pair; the marker alone is kept if ``limit`` is shorter.
    """
    if len(text) <= limit:
        return text
    marker = f"… (truncated, {len(text)} characters)"
    cut = max(limit - len(marker), 0)
    if cut and "\ud800" <= text[cut - 1] <= "\udbff":
        cut -= 1
    return text[:cut] + marker


def success_results(
    changes: Sequence[Change],
    outcome: Outcome,
    http_status: int,
    snapshot: JSONObject | None,
) -> list[Result]:
    """Pure: every change of a step that succeeded gets its own result.

    The last change carries the request; the earlier ones were merged into it.
    """
    carrier = changes[-1].id
    return [
        Result(
            change.id,
            change.lease_token,
            State.SUCCEEDED,
            outcome=Outcome.MERGED if change.id != carrier else outcome,
            attempts=change.attempts + 1,
            http_status=http_status,
            result=snapshot,
            merged_into_id=carrier if change.id != carrier else None,
        )
        for change in changes
    ]


def failure_result(
    change: Change,
    verdict: Classified,
    *,
    max_attempts: int,
    delay: float,
    now: datetime,
) -> Result:
    """Pure: retry later (pending, ``delay`` seconds from ``now``) or fail for good.

    A retryable answer is retried while attempts are left; then the change fails with the
    last error and the count of attempts it took. Anything else fails at once.
    """
    attempts = change.attempts + 1
    retryable = verdict.verdict is Verdict.RETRY
    if retryable and attempts < max_attempts:
        return Result(
            change.id,
            change.lease_token,
            State.PENDING,
            attempts=attempts,
            http_status=verdict.http_status,
            error_type=verdict.error_type,
            error_message=verdict.error_message,
            error_field=verdict.error_field,
            next_attempt_at=now + timedelta(seconds=delay),
        )
    message = verdict.error_message
    if retryable:
        message = f"gave up after {attempts} attempts: {message}"
    return Result(
        change.id,
        change.lease_token,
        State.FAILED,
        attempts=attempts,
        http_status=verdict.http_status,
        error_type=verdict.error_type,
        error_message=message,
        error_field=verdict.error_field,
    )


def shared_pause(retry_after: float | None, cap: float) -> float | None:
    """Pure: how long a 429's Retry-After pauses every worker (None: the default pause).

    A value above ``cap`` is the server's word that this change should wait, not that all
    sending should stop: the change is parked for it, everyone else goes on.
    """
    if retry_after is None or retry_after > cap:
        return None
    return retry_after


def attempt_level(status: int | None, *, same_status: bool = False) -> str:
    """Pure: the log level of one request's line, so that levels mean something.

    A success is routine (``debug``); an answer that is retried (no answer, 429, 5xx) is a
    ``warning``; a same-status answer, read back next, is ``info``; a 401 or any other refusal
    that fails the change is an ``error``.
    """
    if status is None:
        return "warning"
    if 200 <= status < 300:
        return "debug"
    if status == 429 or status == 408 or status >= 500:
        return "warning"
    if same_status:
        return "info"
    if 400 <= status < 500:
        return "error"
    return "warning"
