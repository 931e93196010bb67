"""Classification of Kantata answers, Kantata's error envelope, backoff and Retry-After."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.exceptions import TransportError
from worker.outcomes import (
    ApiResponse,
    Classified,
    Verdict,
    backoff_delay,
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
        for kind in ("timeout", "connection", "payload")
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
]


@pytest.mark.parametrize(("attempt", "base", "cap", "jitter", "retry_after", "expected"), BACKOFF)
def test_backoff_delay(
    attempt: int, base: float, cap: float, jitter: float, retry_after: float | None, expected: float
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, jitter=jitter, retry_after=retry_after)
    assert delay == pytest.approx(expected)


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

RETRY_AFTER = [
    pytest.param(None, None, id="absent"),
    pytest.param("0", 0.0, id="zero"),
    pytest.param("5", 5.0, id="int"),
    pytest.param(" 5 ", 5.0, id="spaces"),
    pytest.param("2.5", 2.5, id="fraction"),
    pytest.param("3600", 3600.0, id="max"),
    pytest.param("3601", None, id="over-max"),
    pytest.param("-1", None, id="negative"),
    pytest.param("", None, id="empty"),
    pytest.param("soon", None, id="garbage"),
    pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", None, id="http-date"),
    pytest.param("nan", None, id="nan"),
    pytest.param("inf", None, id="inf"),
    pytest.param("-inf", None, id="neg-inf"),
    pytest.param("1e400", None, id="overflow"),
]


@pytest.mark.parametrize(("value", "expected"), RETRY_AFTER)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parse_retry_after_total(value: str) -> None:
    parsed = parse_retry_after(value)
    assert parsed is None or 0 <= parsed <= 3600
