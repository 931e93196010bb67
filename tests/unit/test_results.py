"""Each change's result from a step's answer, and what a claimed row turns into (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.changes import Change, ClaimedRow, Kind, Outcome, State
from worker.exceptions import InputError
from worker.intake import admit, one_line, plans_of
from worker.outcomes import (
    Classified,
    Verdict,
    failure_result,
    may_have_landed,
    shared_pause,
    success_results,
)
from worker.planner import PutStep, StatusStep

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def change(change_id: int, kind: Kind = Kind.WORKSPACE_UPDATE, attempts: int = 0) -> Change:
    payload = {"to_status_key": 310} if kind is Kind.STATUS_CHANGE else {"title": f"t{change_id}"}
    return Change(change_id, 5, kind, payload, attempts, lease_token=change_id * 10)


def test_a_merged_step_gives_every_change_its_own_result() -> None:
    snapshot = {"status": {"key": 310}}
    results = success_results(
        [change(1), change(2, attempts=3), change(4)], Outcome.APPLIED, 200, snapshot
    )
    assert [(r.change_id, r.outcome, r.merged_into_id, r.attempts) for r in results] == [
        (1, Outcome.MERGED, 4, 1),
        (2, Outcome.MERGED, 4, 4),
        (4, Outcome.APPLIED, None, 1),
    ]
    assert {r.state for r in results} == {State.SUCCEEDED}
    assert {r.http_status for r in results} == {200}
    assert all(r.result == snapshot for r in results)
    assert [r.lease_token for r in results] == [10, 20, 40]


def test_an_already_applied_status_change_keeps_its_outcome() -> None:
    [result] = success_results([change(7, Kind.STATUS_CHANGE)], Outcome.ALREADY_APPLIED, 200, None)
    assert (result.outcome, result.merged_into_id) == (Outcome.ALREADY_APPLIED, None)


RETRY_503 = Classified(Verdict.RETRY, 503, "server_error", "HTTP 503")
RETRY_TIMEOUT = Classified(Verdict.RETRY, None, "timeout", "no answer in time")
RATE_LIMITED = Classified(Verdict.RETRY, 429, "rate_limited", "slow down", retry_after=30)
FORBIDDEN = Classified(Verdict.PERMANENT, 403, "oauth", "not allowed", "workspace_id")
INVALID_DATE = Classified(Verdict.PERMANENT, 422, "validation", "bad date", "due_date")


@pytest.mark.parametrize(
    ("verdict", "attempts_before", "max_attempts", "state", "attempts", "message"),
    [
        (RETRY_503, 0, 5, State.PENDING, 1, "HTTP 503"),
        (RETRY_503, 3, 5, State.PENDING, 4, "HTTP 503"),
        (RETRY_503, 4, 5, State.FAILED, 5, "gave up after 5 attempts: HTTP 503"),
        (RETRY_TIMEOUT, 0, 1, State.FAILED, 1, "gave up after 1 attempts: no answer in time"),
        (RATE_LIMITED, 1, 5, State.PENDING, 2, "slow down"),
        (FORBIDDEN, 0, 5, State.FAILED, 1, "not allowed"),
        (INVALID_DATE, 2, 5, State.FAILED, 3, "bad date"),
    ],
)
def test_retry_or_give_up(
    verdict: Classified,
    attempts_before: int,
    max_attempts: int,
    state: State,
    attempts: int,
    message: str,
) -> None:
    result = failure_result(
        change(3, attempts=attempts_before),
        verdict,
        max_attempts=max_attempts,
        delay=12.5,
        now=NOW,
    )
    assert (result.state, result.attempts, result.error_message) == (state, attempts, message)
    assert (result.http_status, result.error_type, result.error_field) == (
        verdict.http_status,
        verdict.error_type,
        verdict.error_field,
    )
    if state is State.PENDING:
        assert result.next_attempt_at == NOW + timedelta(seconds=12.5)
    else:
        assert result.next_attempt_at is None


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [(None, True), (500, True), (502, True), (503, True), (599, True), (429, False),
     (422, False), (404, False), (200, False), (408, False)],
)  # fmt: skip
def test_which_answers_leave_a_request_possibly_applied(
    http_status: int | None, expected: bool
) -> None:
    assert may_have_landed(http_status) is expected


@pytest.mark.parametrize(
    ("retry_after", "cap", "pause"),
    [(None, 120, None), (0, 120, 0), (5, 120, 5), (120, 120, 120), (120.5, 120, None),
     (3000, 120, None), (3000, 3600, 3000), (1, 0, None)],
)  # fmt: skip
def test_only_a_retry_after_within_the_cap_pauses_everyone(
    retry_after: float | None, cap: float, pause: float | None
) -> None:
    assert shared_pause(retry_after, cap) == pause


def row(
    workspace_id: object = 5,
    kind: object = "status_change",
    payload: object = '{"to_status_key": 310}',
    attempts: int = 0,
    http_status: int | None = None,
) -> ClaimedRow:
    return ClaimedRow(9, workspace_id, kind, payload, None, attempts, 1, http_status)


@pytest.mark.parametrize(
    ("attempts", "http_status", "ambiguous"),
    [(0, None, False), (1, None, True), (1, 502, True), (2, 429, False), (1, 422, False)],
)
def test_a_status_change_that_may_have_landed_is_read_back_first(
    attempts: int, http_status: int | None, ambiguous: bool
) -> None:
    assert admit(row(attempts=attempts, http_status=http_status)).ambiguous is ambiguous


def test_an_update_is_never_ambiguous_a_put_is_idempotent() -> None:
    update = row(kind="workspace_update", payload='{"title": "x"}', attempts=3)
    assert admit(update).ambiguous is False


class Weird:
    def __str__(self) -> str:
        raise RuntimeError("no text\tfor you")


@pytest.mark.parametrize(
    ("bad", "column"),
    [(row(workspace_id=b"12"), "workspace_id"), (row(kind=b"\xff"), "kind"),
     (row(payload="{"), "payload"), (row(kind=Weird()), "kind")],
)  # fmt: skip
def test_any_unreadable_row_is_an_input_error_naming_a_column(bad: ClaimedRow, column: str) -> None:
    with pytest.raises(InputError) as info:
        admit(bad)
    assert info.value.column in {column, "row"}


def test_one_line_flattens_a_message() -> None:
    assert one_line(ValueError("a\nb\t c")) == "ValueError: a b c"
    assert one_line(KeyError()) == "KeyError: (no message)"
    assert len(one_line(ValueError("x" * 1000))) == len("ValueError: ") + 300


def test_a_claim_runs_one_status_change_per_workspace_and_hands_back_the_rest() -> None:
    changes = [
        change(1),
        change(2, Kind.STATUS_CHANGE),
        change(3),
        change(4, Kind.STATUS_CHANGE),
        change(5),
    ]
    planned = plans_of(changes)
    [now] = planned.plans
    assert [type(s) for s in now.steps] == [PutStep, StatusStep, PutStep]
    assert [s.change_ids for s in planned.later] == [(4,), (5,)]
