"""Database errors become one line naming what failed and why, never an empty reason."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc

from worker.db import describe, translate_errors
from worker.exceptions import DatabaseError


class Silent(Exception):
    """A driver error with no text at all."""


def _wrapped(orig: BaseException) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.DBAPIError("SELECT 1", None, orig)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _wrapped(Exception("canceling statement due to lock timeout")),
            "claiming changes: canceling statement due to lock timeout",
        ),
        (_wrapped(Exception("first line\nsecond line")), "claiming changes: first line"),
        (_wrapped(Silent()), "claiming changes: Silent"),
        (_wrapped(Exception("   ")), "claiming changes: Exception"),
        (
            _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("")),
            "claiming changes: ConnectionDoesNotExistError",
        ),
        (TimeoutError(), "claiming changes: TimeoutError"),
        (ConnectionRefusedError(111, "Connection refused"), "claiming changes: Connection refused"),
        (OSError("no strerror here"), "claiming changes: no strerror here"),
        (
            sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
            "claiming changes: QueuePool limit reached",
        ),
    ],
)
async def test_a_database_error_names_what_failed_and_why(
    error: BaseException, expected: str
) -> None:
    with pytest.raises(DatabaseError) as caught:
        async with translate_errors("claiming changes"):
            raise error
    assert str(caught.value) == expected
    assert caught.value.__cause__ is error


def test_describe_caps_a_long_message_at_300_characters() -> None:
    assert describe(Exception("x" * 1000)) == "x" * 300


async def test_other_errors_pass_through_untouched() -> None:
    with pytest.raises(KeyError):
        async with translate_errors("claiming changes"):
            raise KeyError("not a database error")
