"""The Redactor processor: secrets and credential-named keys never reach a log line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog

from worker.logging import REDACTED, Redactor, configure, get_logger

SECRET = "tok-S3cr3t-0123456789abcdef"


def redact(event: dict[str, Any], secrets: tuple[str, ...] = (SECRET,)) -> dict[str, Any]:
    return dict(Redactor(secrets)(None, "info", dict(event)))


CASES = [
    pytest.param(
        {"event": f"sent Bearer {SECRET}"}, {"event": f"sent Bearer {REDACTED}"}, id="in-message"
    ),
    pytest.param({"msg": SECRET}, {"msg": REDACTED}, id="whole-value"),
    pytest.param({"msg": f"{SECRET}/{SECRET}"}, {"msg": f"{REDACTED}/{REDACTED}"}, id="twice"),
    pytest.param(
        {"Authorization": "Bearer abc"}, {"Authorization": REDACTED}, id="authorization-key"
    ),
    pytest.param({"token": "anything"}, {"token": REDACTED}, id="token-key"),
    pytest.param({"TOKEN": 5}, {"TOKEN": REDACTED}, id="key-case-insensitive"),
    pytest.param({"api_token": None}, {"api_token": REDACTED}, id="api-token-key"),
    pytest.param({"password": "pw"}, {"password": REDACTED}, id="password-key"),
    pytest.param({"headers": {"Accept": "json"}}, {"headers": REDACTED}, id="headers-key"),
    pytest.param(
        {"ctx": {"authorization": "x", "ok": f"a{SECRET}b"}},
        {"ctx": {"authorization": REDACTED, "ok": f"a{REDACTED}b"}},
        id="nested-dict",
    ),
    pytest.param(
        {"ctx": [{"Token": "x"}, [SECRET, 1]]},
        {"ctx": [{"Token": REDACTED}, [REDACTED, 1]]},
        id="dict-in-list",
    ),
    pytest.param({"ctx": (SECRET, "ok")}, {"ctx": [REDACTED, "ok"]}, id="tuple"),
    pytest.param({"ctx": {1: SECRET}}, {"ctx": {1: REDACTED}}, id="non-str-key"),
    pytest.param(
        {"event": "done", "count": 3, "ok": True, "none": None, "ratio": 0.5},
        {"event": "done", "count": 3, "ok": True, "none": None, "ratio": 0.5},
        id="untouched",
    ),
    pytest.param(
        {"ended_because": "token_rejected"},
        {"ended_because": "token_rejected"},
        id="value-naming-tokens-not-masked",
    ),
    pytest.param({"access_token": 5}, {"access_token": "[REDACTED]"}, id="any-token-key-masked"),
    pytest.param({"x-api-key": "k"}, {"x-api-key": "[REDACTED]"}, id="api-key-masked"),
    pytest.param({"event": SECRET[:-1]}, {"event": SECRET[:-1]}, id="partial-secret-not-masked"),
]


@pytest.mark.parametrize(("event", "expected"), CASES)
def test_redaction(event: dict[str, Any], expected: dict[str, Any]) -> None:
    assert redact(event) == expected


def test_exception_value_is_scrubbed() -> None:
    out = redact({"error": RuntimeError(f"refused with {SECRET}")})
    assert out["error"] == f"RuntimeError: refused with {REDACTED}"


def test_exception_inside_list() -> None:
    out = redact({"errors": [ValueError(SECRET)]})
    assert out["errors"] == [f"ValueError: {REDACTED}"]


def test_several_secrets() -> None:
    out = redact({"a": "one two three"}, secrets=("one", "three"))
    assert out["a"] == f"{REDACTED} two {REDACTED}"


def test_empty_secrets_ignored() -> None:
    redactor = Redactor(["", SECRET])
    assert redactor.secrets == (SECRET,)
    assert redactor(None, "info", {"event": "plain"}) == {"event": "plain"}


def test_no_secrets_still_masks_keys() -> None:
    out = redact({"authorization": "Bearer x", "event": f"x {SECRET}"}, secrets=())
    assert out == {"authorization": REDACTED, "event": f"x {SECRET}"}


def test_original_nested_values_not_mutated() -> None:
    inner = {"token": "t", "v": SECRET}
    Redactor((SECRET,))(None, "info", {"ctx": inner})
    assert inner == {"token": "t", "v": SECRET}


def test_configured_pipeline_redacts_rendered_json() -> None:
    stream = io.StringIO()
    try:
        configure(level="info", fmt="json", secrets=[SECRET], stream=stream)
        log = get_logger()
        log.info("request", authorization=f"Bearer {SECRET}", url=f"https://x/?t={SECRET}")
        log.debug("hidden", token=SECRET)
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            log.exception("failed")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["request", "failed"]
    assert lines[0]["authorization"] == REDACTED
    assert lines[0]["url"] == f"https://x/?t={REDACTED}"
    assert "RuntimeError" in lines[1]["exception"]
