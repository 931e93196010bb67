"""Classification of Kantata answers, Kantata's error envelope, backoff and Retry-After."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.exceptions import TransportError, TransportKind
from worker.outcomes import (
    MAX_MESSAGE_CHARS,
    MAX_RETRY_AFTER_WAIT,
    ApiResponse,
    Classified,
    Verdict,
    backoff_delay,
    cap_message,
    classify,
    kantata_error,
    parse_retry_after,
)

SAME = "Project already has specified status"


def err(message: str | None = None, type_: str | None = "validation", field: str | None = None):
    item: dict[str, Any] = {}
    if type_ is not None:
        item["type"] = type_
    if message is not None:
        item["message"] = message
    if field is not None:
        item["field"] = field
    return {"errors": [item]}


def resp(status: int, body: Any = None, retry_after: float | None = None) -> ApiResponse:
    return ApiResponse(status=status, body=body, request_id="r-1", retry_after=retry_after)


R, P, S, RB, T = (
    Verdict.RETRY,
    Verdict.PERMANENT,
    Verdict.SUCCESS,
    Verdict.READ_BACK,
    Verdict.TOKEN_REJECTED,
)

# (answer, status_change, expected Classified)
CASES = [
    # 2xx
    *[
        pytest.param(resp(code, {"count": 1}), sc, Classified(S, code), id=f"{code}-sc={sc}")
        for code in (200, 201, 204, 299)
        for sc in (False, True)
    ],
    pytest.param(resp(200, err("ignored")), False, Classified(S, 200), id="200-with-errors-body"),
    # 401
    *[
        pytest.param(
            resp(401, err("Invalid token", "oauth")),
            sc,
            Classified(T, 401, "oauth", "Invalid token"),
            id=f"401-envelope-sc={sc}",
        )
        for sc in (False, True)
    ],
    pytest.param(resp(401), False, Classified(T, 401, "oauth", "token rejected"), id="401-no-body"),
    pytest.param(
        resp(401, err(SAME)),
        True,
        Classified(T, 401, "validation", SAME),
        id="401-beats-same-status",
    ),
    # 429
    *[
        pytest.param(
            resp(429, None, retry_after=3.0),
            sc,
            Classified(R, 429, "rate_limited", "rate limit exceeded", None, 3.0),
            id=f"429-retry-after-sc={sc}",
        )
        for sc in (False, True)
    ],
    pytest.param(
        resp(429, err("slow down", "system")),
        False,
        Classified(R, 429, "rate_limited", "slow down"),
        id="429-message-kept-type-rate-limited",
    ),
    # 5xx and 408
    *[
        pytest.param(
            resp(code),
            sc,
            Classified(R, code, "server_error", f"HTTP {code}"),
            id=f"{code}-sc={sc}",
        )
        for code in (500, 502, 503, 504, 599)
        for sc in (False, True)
    ],
    pytest.param(
        resp(503, err("Maintenance", "system"), retry_after=30.0),
        False,
        Classified(R, 503, "system", "Maintenance", None, 30.0),
        id="503-envelope-and-retry-after",
    ),
    pytest.param(
        resp(500, err(SAME)),
        True,
        Classified(R, 500, "validation", SAME),
        id="500-same-status-retry",
    ),
    pytest.param(resp(408), False, Classified(R, 408, "server_error", "HTTP 408"), id="408"),
    pytest.param(resp(408), True, Classified(R, 408, "server_error", "HTTP 408"), id="408-sc"),
    # Permanent 4xx
    *[
        pytest.param(
            resp(code, err("nope", "validation", "title")),
            sc,
            Classified(P, code, "validation", "nope", "title"),
            id=f"{code}-envelope-sc={sc}",
        )
        for code in (400, 403, 404, 409, 410, 413, 418, 422)
        for sc in (False, True)
    ],
    *[
        pytest.param(
            resp(code), False, Classified(P, code, "http_error", f"HTTP {code}"), id=f"{code}-bare"
        )
        for code in (400, 403, 404, 405, 422, 451)
    ],
    pytest.param(
        resp(302), False, Classified(P, 302, "http_error", "HTTP 302"), id="302-not-followed"
    ),
    # The same-status 422
    pytest.param(
        resp(422, err(SAME, "validation", "to_status_key")),
        True,
        Classified(RB, 422, "validation", SAME, "to_status_key"),
        id="same-status-read-back",
    ),
    pytest.param(
        resp(422, err(SAME)),
        False,
        Classified(P, 422, "validation", SAME),
        id="same-status-on-update-is-permanent",
    ),
    pytest.param(
        resp(400, err(SAME)),
        True,
        Classified(P, 400, "validation", SAME),
        id="same-status-only-on-422",
    ),
    pytest.param(
        resp(422, err(SAME, type_=None)),
        True,
        Classified(RB, 422, "validation", SAME),
        id="same-status-no-type-defaults-validation",
    ),
    pytest.param(
        resp(422, err("Status is invalid")),
        True,
        Classified(P, 422, "validation", "Status is invalid"),
        id="other-422-on-status-change",
    ),
    pytest.param(
        resp(422), True, Classified(P, 422, "http_error", "HTTP 422"), id="422-no-body-on-status"
    ),
    pytest.param(
        resp(422, err("Title can't be blank", field="title")),
        False,
        Classified(P, 422, "validation", "Title can't be blank", "title"),
        id="422-field-kept",
    ),
    # Multiple errors
    pytest.param(
        resp(
            422,
            {
                "errors": [
                    {"type": "validation", "message": "a is bad", "field": "a"},
                    {"type": "system", "message": "b is bad", "field": "b"},
                ]
            },
        ),
        False,
        Classified(P, 422, "validation", "a is bad; b is bad", "a"),
        id="multiple-errors-joined-first-type-and-field",
    ),
    pytest.param(
        resp(422, {"errors": [{"type": "validation", "field": "a"}, {"message": "only msg"}]}),
        False,
        Classified(P, 422, "validation", "only msg", "a"),
        id="messages-skip-missing",
    ),
    # Missing and odd envelopes
    pytest.param(
        resp(404, {"errors": []}),
        False,
        Classified(P, 404, "http_error", "HTTP 404"),
        id="empty-errors",
    ),
    pytest.param(
        resp(404, {"errors": "boom"}),
        False,
        Classified(P, 404, "http_error", "HTTP 404"),
        id="errors-string",
    ),
    pytest.param(
        resp(404, {"errors": {"message": "x"}}),
        False,
        Classified(P, 404, "http_error", "HTTP 404"),
        id="errors-object",
    ),
    pytest.param(
        resp(404, {"errors": ["x", 3, None]}),
        False,
        Classified(P, 404, "http_error", "HTTP 404"),
        id="errors-no-dicts",
    ),
    pytest.param(
        resp(404, {"message": "x"}),
        False,
        Classified(P, 404, "http_error", "HTTP 404"),
        id="no-errors-key",
    ),
    pytest.param(
        resp(422, {"errors": [{"type": 5, "message": 7, "field": 9}]}),
        False,
        Classified(P, 422, "5", "7", "9"),
        id="non-string-parts-stringified",
    ),
    # Transport errors
    *[
        pytest.param(
            TransportError(kind, "PUT /workspaces/1: boom"),
            sc,
            Classified(R, None, kind, "PUT /workspaces/1: boom"),
            id=f"transport-{kind}-sc={sc}",
        )
        for kind in ("timeout", "connection", "payload", "too_large")
        for sc in (False, True)
    ],
]


@pytest.mark.parametrize(("answer", "status_change", "expected"), CASES)
def test_classify(
    answer: ApiResponse | TransportError, status_change: bool, expected: Classified
) -> None:
    assert classify(answer, status_change=status_change) == expected


@pytest.mark.parametrize(
    "message",
    [
        SAME,
        "project already has specified status",
        "PROJECT ALREADY HAS SPECIFIED STATUS",
        "Project already has the specified status",
        "Workspace already has the same status",
        "Projects already have specified status",
        "Project is already in this status",
        "Project already in the same status",
        "Project is already at this status",
        "Error: Project already has specified status.",
    ],
)
def test_same_status_variants_read_back(message: str) -> None:
    result = classify(resp(422, err(message)), status_change=True)
    assert result.verdict is Verdict.READ_BACK
    assert result.error_message == message


@pytest.mark.parametrize(
    "message",
    [
        "Project status is invalid",
        "Status already exists",
        "already has status",
        "Project has specified status",
        "To status key is not enabled for this account",
    ],
)
def test_not_same_status(message: str) -> None:
    assert classify(resp(422, err(message)), status_change=True).verdict is Verdict.PERMANENT


AMBIGUOUS = [
    pytest.param(Classified(R, None, "timeout"), True, id="transport"),
    pytest.param(Classified(R, 500), True, id="500"),
    pytest.param(Classified(R, 503), True, id="503"),
    pytest.param(Classified(R, 429), False, id="429-not-processed"),
    pytest.param(Classified(R, 408), False, id="408"),
    pytest.param(Classified(S, 200), False, id="success"),
    pytest.param(Classified(P, 500), False, id="permanent-never"),
    pytest.param(Classified(P, 422), False, id="422"),
    pytest.param(Classified(T, 401), False, id="401"),
    pytest.param(Classified(RB, 422), False, id="read-back"),
]


@pytest.mark.parametrize(("classified", "expected"), AMBIGUOUS)
def test_ambiguous(classified: Classified, expected: bool) -> None:
    assert classified.ambiguous is expected


def test_classified_transport_is_ambiguous_end_to_end() -> None:
    assert classify(TransportError("timeout", "t"), status_change=True).ambiguous
    assert classify(resp(502), status_change=True).ambiguous
    assert not classify(resp(429), status_change=True).ambiguous


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(None, (None, None, None), id="none"),
        pytest.param([], (None, None, None), id="list-body"),
        pytest.param({}, (None, None, None), id="empty"),
        pytest.param({"errors": None}, (None, None, None), id="errors-null"),
        pytest.param(err("m", "oauth", "f"), ("oauth", "m", "f"), id="full"),
        pytest.param({"errors": [{}]}, (None, None, None), id="empty-item"),
        pytest.param({"errors": [{"message": None}]}, (None, None, None), id="null-message"),
        pytest.param(
            {"errors": ["junk", {"type": "system", "message": "m"}]},
            ("system", "m", None),
            id="skips-non-dicts",
        ),
        pytest.param(
            {"errors": [{"message": "a"}, {"message": "b"}, {"message": "c"}]},
            (None, "a; b; c", None),
            id="three-joined",
        ),
    ],
)
def test_kantata_error(body: Any, expected: tuple[str | None, ...]) -> None:
    assert kantata_error(body) == expected


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(100, 599),
    status_change=st.booleans(),
    body=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["errors", "x"]),
            st.one_of(
                st.none(),
                st.text(),
                st.lists(
                    st.dictionaries(
                        st.sampled_from(["type", "message", "field"]),
                        st.one_of(st.none(), st.text(max_size=5), st.integers()),
                    ),
                    max_size=3,
                ),
            ),
        ),
    ),
)
def test_classify_total(status: int, status_change: bool, body: Any) -> None:
    result = classify(ApiResponse(status, body), status_change=status_change)
    assert result.http_status == status
    if 200 <= status < 300:
        assert result.verdict is Verdict.SUCCESS
    elif status == 401:
        assert result.verdict is Verdict.TOKEN_REJECTED
    elif status in (408, 429) or status >= 500:
        assert result.verdict is Verdict.RETRY
    elif result.verdict is Verdict.READ_BACK:
        assert status_change and status == 422
    else:
        assert result.verdict is Verdict.PERMANENT
    if result.verdict is not Verdict.SUCCESS:
        assert result.error_type and result.error_message


# --------------------------------------------------------------------------- backoff

BACKOFF = [
    # attempt, base, cap, jitter, retry_after, expected
    pytest.param(0, 1.0, 60.0, 0.5, None, 0.5, id="attempt-0-like-1"),
    pytest.param(1, 1.0, 60.0, 0.5, None, 0.5, id="first"),
    pytest.param(2, 1.0, 60.0, 0.5, None, 1.0, id="second-doubles"),
    pytest.param(3, 1.0, 60.0, 0.5, None, 2.0, id="third"),
    pytest.param(4, 2.0, 60.0, 0.25, None, 4.0, id="base-2"),
    pytest.param(7, 1.0, 60.0, 0.5, None, 30.0, id="under-cap"),
    pytest.param(8, 1.0, 60.0, 0.5, None, 30.0, id="capped"),
    pytest.param(100, 1.0, 60.0, 0.5, None, 30.0, id="huge-attempt-capped"),
    pytest.param(3, 1.0, 60.0, 0.0, None, 0.0, id="zero-jitter"),
    pytest.param(3, 1.0, 60.0, 0.999, None, 3.996, id="jitter-near-one"),
    pytest.param(10, 1.0, 5.0, 0.999, None, 4.995, id="under-cap-always"),
    pytest.param(1, 0.0, 60.0, 0.7, None, 0.0, id="zero-base"),
    pytest.param(5, 1.0, 0.0, 0.7, None, 0.0, id="zero-cap"),
    pytest.param(1, 1.0, 60.0, 0.0, 7.0, 7.0, id="retry-after-floor"),
    pytest.param(8, 1.0, 60.0, 0.5, 7.0, 30.0, id="backoff-above-retry-after"),
    pytest.param(1, 1.0, 60.0, 0.5, 120.0, 120.0, id="retry-after-beats-cap"),
    pytest.param(1, 1.0, 60.0, 0.5, 0.0, 0.5, id="retry-after-zero"),
    pytest.param(1, 1.0, 60.0, 0.5, 7200.0, 7200.0, id="retry-after-two-hours"),
    pytest.param(1, 1.0, 60.0, 0.5, 2_592_000.0, 2_592_000.0, id="retry-after-30-days"),
    pytest.param(1, 1.0, 60.0, 0.5, 2.5e11, 2_592_000.0, id="retry-after-year-9999-cut"),
    pytest.param(1, 1.0, 60.0, 0.5, 1e30, 2_592_000.0, id="retry-after-30-digits-cut"),
    pytest.param(1, 1.0, 60.0, 0.5, math.inf, 2_592_000.0, id="retry-after-inf-cut"),
]


@pytest.mark.parametrize(("attempt", "base", "cap", "jitter", "retry_after", "expected"), BACKOFF)
def test_backoff_delay(
    attempt: int, base: float, cap: float, jitter: float, retry_after: float | None, expected: float
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, jitter=jitter, retry_after=retry_after)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize("header", ["9" * 20, "Fri, 31 Dec 9999 23:59:59 GMT", "99999999999999"])
def test_any_parsed_retry_after_gives_a_delay_a_timestamp_can_hold(header: str) -> None:
    retry_after = parse_retry_after(header, now=NOW)
    assert retry_after is not None and retry_after > MAX_RETRY_AFTER_WAIT
    delay = backoff_delay(1, base=1.0, cap=60.0, jitter=0.5, retry_after=retry_after)
    assert delay == MAX_RETRY_AFTER_WAIT
    assert NOW + timedelta(seconds=delay) == datetime(2026, 12, 31, 12, 0, tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(0, 100),
    base=st.floats(0, 10),
    cap=st.floats(0, 600),
    jitter=st.floats(0, 1, exclude_max=True),
    retry_after=st.one_of(st.none(), st.floats(0, 3600)),
)
def test_backoff_bounds(
    attempt: int, base: float, cap: float, jitter: float, retry_after: float | None
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, jitter=jitter, retry_after=retry_after)
    assert delay >= 0
    assert delay <= max(cap, retry_after or 0.0)
    if retry_after is not None:
        assert delay >= retry_after
    assert math.isfinite(delay)


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(1, 30), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_monotone_in_attempt(attempt: int, jitter: float) -> None:
    a = backoff_delay(attempt, base=0.5, cap=1000.0, jitter=jitter)
    b = backoff_delay(attempt + 1, base=0.5, cap=1000.0, jitter=jitter)
    assert a <= b


# --------------------------------------------------------------------------- Retry-After

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

RETRY_AFTER = [
    pytest.param(None, None, id="absent"),
    pytest.param("0", 0.0, id="zero"),
    pytest.param("5", 5.0, id="int"),
    pytest.param(" 5 ", 5.0, id="spaces"),
    pytest.param("2.5", 2.5, id="fraction"),
    pytest.param("3600", 3600.0, id="an-hour"),
    pytest.param("3601", 3601.0, id="over-an-hour-uncapped"),
    pytest.param("86400000", 86_400_000.0, id="a-thousand-days-uncapped"),
    pytest.param("9" * 30, 1e30, id="huge-but-finite"),
    pytest.param("9" * 400, None, id="overflows-to-inf"),
    pytest.param("-1", None, id="negative"),
    pytest.param("-0", None, id="negative-zero"),
    pytest.param("+5", None, id="signed"),
    pytest.param("", None, id="empty"),
    pytest.param("   ", None, id="blank"),
    pytest.param("soon", None, id="garbage"),
    pytest.param("5s", None, id="unit"),
    pytest.param("1_000", None, id="underscores"),
    pytest.param("\u0665", None, id="non-ascii-digit"),
    pytest.param("nan", None, id="nan"),
    pytest.param("inf", None, id="inf"),
    pytest.param("-inf", None, id="neg-inf"),
    pytest.param("1e400", None, id="exponent"),
    pytest.param("1e3", None, id="exponent-small"),
    pytest.param("Tue, 01 Dec 2026 12:00:30 GMT", 30.0, id="date-in-30s"),
    pytest.param("Tue, 01 Dec 2026 13:00:00 GMT", 3600.0, id="date-in-an-hour"),
    pytest.param("Wed, 02 Dec 2026 12:00:00 GMT", 86_400.0, id="date-tomorrow-uncapped"),
    pytest.param("Tue, 01 Dec 2026 14:00:10 +0200", 10.0, id="date-with-offset"),
    pytest.param("Tue, 01 Dec 2026 12:00:10 -0000", 10.0, id="date-unknown-zone-is-utc"),
    pytest.param("Tue, 01 Dec 2026 12:00:00 GMT", 0.0, id="date-now"),
    pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, id="date-in-the-past-is-0"),
    pytest.param("Tuesday, 01-Dec-26 12:00:20 GMT", 20.0, id="rfc850-date"),
    pytest.param("Tue Dec  1 12:00:40 2026", 40.0, id="asctime-date"),
    pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", 251_606_174_399.0, id="date-far-future"),
    pytest.param("Tue, 32 Dec 2026 12:00:00 GMT", None, id="date-impossible-day"),
    pytest.param("Tue, 01 Dec 2026 12:00:00 +9900", None, id="date-impossible-offset"),
    pytest.param("Tue, 01 Foo 2026 12:00:00 GMT", None, id="date-bad-month"),
    pytest.param("Tue, 01 Dec", None, id="date-truncated"),
]


@pytest.mark.parametrize(("value", "expected"), RETRY_AFTER)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_date_without_now_uses_the_clock() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    future = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT")
    assert future is not None and future > 86_400 * 365 * 1000


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z]{3}, [0-9]{1,2} .{0,24}")))
def test_parse_retry_after_total(value: str) -> None:
    parsed = parse_retry_after(value, now=NOW)
    assert parsed is None or (math.isfinite(parsed) and parsed >= 0)


@settings(max_examples=100, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1)))
def test_parse_retry_after_date_round_trip(when: datetime) -> None:
    from email.utils import format_datetime

    header = format_datetime(when.replace(microsecond=0, tzinfo=UTC), usegmt=True)
    expected = max((when.replace(microsecond=0, tzinfo=UTC) - NOW).total_seconds(), 0.0)
    assert parse_retry_after(header, now=NOW) == expected


# --------------------------------------------------------------------------- message cap

LONG = "x" * 3_145_728
CAP = [
    # text, limit, expected
    pytest.param("", 50, "", id="empty"),
    pytest.param("short", 50, "short", id="under"),
    pytest.param("a" * 50, 50, "a" * 50, id="exactly-at-limit"),
    # the marker "… (truncated, NN characters)" is 28 characters long for a 2-digit length
    pytest.param("a" * 51, 50, "a" * 22 + "… (truncated, 51 characters)", id="one-over"),
    pytest.param(
        "é" * 60, 40, "é" * 12 + "… (truncated, 60 characters)", id="non-ascii-by-character"
    ),
    pytest.param(
        "a" * 18 + "\U0001f600" * 40,
        50,
        "a" * 18 + "\U0001f600" * 4 + "… (truncated, 58 characters)",
        id="astral-characters-whole",
    ),
    pytest.param(
        "a" * 19 + "\ud83d\ude00" * 20,
        50,
        "a" * 19 + "\ud83d\ude00" + "… (truncated, 59 characters)",
        id="surrogate-pair-not-split",
    ),
    pytest.param("a" * 100, 5, "… (truncated, 100 characters)", id="limit-under-marker"),
    pytest.param(
        LONG,
        MAX_MESSAGE_CHARS,
        "x" * (MAX_MESSAGE_CHARS - 33) + "… (truncated, 3145728 characters)",
        id="3-MB-default-limit",
    ),
]


@pytest.mark.parametrize(("text", "limit", "expected"), CAP)
def test_cap_message(text: str, limit: int, expected: str) -> None:
    capped = cap_message(text, limit)
    assert capped == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=40, max_value=200))
def test_cap_message_bounds(text: str, limit: int) -> None:
    capped = cap_message(text, limit)
    assert len(capped) <= limit
    if len(text) <= limit:
        assert capped == text
    else:
        assert capped.endswith(f"… (truncated, {len(text)} characters)")
        assert text.startswith(capped[: capped.index("… (truncated")])


def test_classify_caps_kantata_error_text() -> None:
    huge = "m" * 3_145_728
    body = {"errors": [{"type": "validation" * 1000, "message": huge, "field": "f" * 5000}]}
    result = classify(resp(422, body), status_change=False)
    assert result.verdict is Verdict.PERMANENT
    for text in (result.error_message, result.error_type, result.error_field):
        assert text is not None and len(text) <= MAX_MESSAGE_CHARS
    assert result.error_message is not None
    assert result.error_message.endswith("… (truncated, 3145728 characters)")
    assert result.error_message.startswith("m" * 1000)


def test_classify_caps_transport_error_text() -> None:
    error = TransportError(TransportKind.CONNECTION, "PUT /workspaces/1: " + "z" * 10_000)
    result = classify(error, status_change=True)
    assert result.error_message is not None and len(result.error_message) == MAX_MESSAGE_CHARS
    assert result.error_message.endswith("… (truncated, 10019 characters)")


def test_too_large_is_a_retryable_transport_kind() -> None:
    error = TransportError("too_large", "PUT /workspaces/12: response body over 4194304 bytes")
    assert error.kind is TransportKind.TOO_LARGE and error.kind == "too_large"
    result = classify(error, status_change=True)
    assert (result.verdict, result.error_type) == (Verdict.RETRY, "too_large")
    assert result.ambiguous
