"""Levels that mean something, and journald's priority prefix (pure and in-process)."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from worker import logging as logmod
from worker.outcomes import attempt_level


@pytest.mark.parametrize(
    ("status", "same_status", "level"),
    [(200, False, "debug"), (201, False, "debug"), (None, False, "warning"),
     (429, False, "warning"), (500, False, "warning"), (503, False, "warning"),
     (408, False, "warning"), (401, False, "error"), (403, False, "error"),
     (404, False, "error"), (422, False, "error"), (422, True, "info"), (400, False, "error"),
     (302, False, "warning")],
)  # fmt: skip
def test_each_answer_is_logged_at_a_level_that_says_what_it_means(
    status: int | None, same_status: bool, level: str
) -> None:
    assert attempt_level(status, same_status=same_status) == level


def _configure(stream: io.StringIO, level: str, journald: bool) -> None:
    logmod.configure(level, "json", secrets=["s3cret-token"], stream=stream, journald=journald)


@pytest.fixture(autouse=True)
def _restore_structlog() -> object:
    yield
    structlog.reset_defaults()


def test_under_journald_each_line_carries_its_syslog_priority() -> None:
    stream = io.StringIO()
    _configure(stream, "debug", journald=True)
    log = logmod.get_logger()
    log.debug("a")
    log.info("b")
    log.warning("c", detail="s3cret-token")
    log.error("d")
    lines = stream.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["a", "b", "c", "d"]
    assert events[2]["detail"] == "[REDACTED]"


def test_without_journald_lines_are_plain_json() -> None:
    stream = io.StringIO()
    _configure(stream, "info", journald=False)
    logmod.get_logger().info("plain")
    assert json.loads(stream.getvalue())["event"] == "plain"


def test_the_record_is_written_whatever_the_level() -> None:
    stream = io.StringIO()
    _configure(stream, "error", journald=False)
    logmod.get_logger().info("hidden")
    logmod.get_logger().warning("hidden too")
    logmod.get_record_logger().info("run.finished", succeeded=3, token="s3cret-token")
    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["succeeded"]) == ("run.finished", "info", 3)
    assert event["token"] == "[REDACTED]"  # the same processors, redaction included
