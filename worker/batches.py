"""Batched writes, one statement each: the rows travel as a single JSON parameter.

A flush writes hundreds of results, releases and attempt records. Handing them to the database
as one JSON array of arrays that it unpacks itself (``json_each`` on SQLite,
``jsonb_array_elements`` on PostgreSQL) costs one ``json.dumps`` in Python, where an
executemany would run SQLAlchemy's parameter processing once per row on the event loop. The
statements are built once per dialect; the JSON is the only thing that varies, and it is still a
bound parameter.

Timestamps inside the JSON are written the way each dialect stores :class:`UTCDateTime`: naive
UTC text on SQLite (the format SQLAlchemy uses, so that stored values compare as text), ISO 8601
with an offset on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .changes import FINAL_STATES, AttemptRecord, Lease, Result, State
from .models import UTCDateTime, sync_attempts, sync_changes

c = sync_changes.c

RESULT_FIELDS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("id", sa.BigInteger()),
    ("token", sa.BigInteger()),
    ("state", sa.Text()),
    ("outcome", sa.Text()),
    ("attempts", sa.Integer()),
    ("http_status", sa.Integer()),
    ("error_type", sa.Text()),
    ("error_message", sa.Text()),
    ("error_field", sa.Text()),
    ("result", sa.Text()),
    ("next_attempt_at", sa.DateTime(timezone=True)),
    ("merged_into_id", sa.BigInteger()),
    ("completed_at", sa.DateTime(timezone=True)),
)
LEASE_FIELDS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("id", sa.BigInteger()),
    ("token", sa.BigInteger()),
)
ATTEMPT_FIELDS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("run_id", sa.Text()),
    ("change_ids", sa.Text()),
    ("workspace_id", sa.BigInteger()),
    ("endpoint", sa.Text()),
    ("http_status", sa.Integer()),
    ("duration_ms", sa.Float()),
    ("error_type", sa.Text()),
    ("error_message", sa.Text()),
    ("request_id", sa.Text()),
    ("attempted_at", sa.DateTime(timezone=True)),
)


def packed(select: sa.Select[Any]) -> sa.Select[Any]:
    """SQLite: the rows of ``select`` as one JSON array of arrays, in a single row.

    SQLite's driver lets go of the GIL for every row it steps through and must win it back
    from the event loop's thread, which is busy while a run sends: a claim of 500 rows took
    about 200 ms that way instead of 15, and starved the senders. One row is one step. Every
    column must be an integer, null or JSON text (see :func:`json_safe`); :func:`unpack` reads
    the answer.
    """
    rows = select.subquery("packed_rows")
    # json() outside the subquery: SQLite forgets there that a value is JSON, and json_array()
    # would hold an object as a string.
    values = (sa.func.json(column) for column in rows.c)
    return sa.select(sa.func.coalesce(sa.func.json_group_array(sa.func.json_array(*values)), "[]"))


def json_safe(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A producer-written SQLite column as a JSON value: integers and null as they are,
    anything else (text, bytes, a real) as its bytes in hex, which :func:`unhex` turns back."""
    return sa.case(
        (sa.func.typeof(column).in_(["integer", "null"]), column),
        else_=sa.func.json_object("hex", sa.func.hex(sa.cast(column, sa.LargeBinary))),
    )


def unhex(value: Any) -> Any:
    """A value written by :func:`json_safe`, back as SQLite held it (text comes back as bytes,
    as a producer column read through ``CAST(... AS BLOB)`` does)."""
    if isinstance(value, dict) and isinstance(value.get("hex"), str):
        return bytes.fromhex(value["hex"])
    return value


def unpack(value: Any) -> list[list[Any]]:
    """The rows of a :func:`packed` select."""
    rows = orjson.loads(value) if isinstance(value, str | bytes) else []
    return rows if isinstance(rows, list) else []


def sqlite_timestamp(value: datetime) -> str:
    """``value`` as SQLite stores a :class:`UTCDateTime`: naive UTC, microseconds always."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def postgres_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class BatchStatements:
    """The write-back, release and attempt-log statements for one dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        sqlite = dialect == "sqlite"
        self._timestamp = sqlite_timestamp if sqlite else postgres_timestamp
        now = sa.bindparam("now", type_=UTCDateTime)
        results = self._rows(RESULT_FIELDS)
        in_flight: sa.ColumnElement[bool] = c.state == State.IN_FLIGHT
        if sqlite:
            # ``state || ''`` keeps SQLite off the state index, so that it walks the batch and
            # finds each row by its ID instead of probing the batch for every in-flight row.
            in_flight = c.state.concat("") == State.IN_FLIGHT
        fenced = (c.id == results.c.id, c.lease_token == results.c.token, in_flight)
        self.writable = packed(sa.select(c.id).where(*fenced)) if sqlite else None
        """SQLite: the IDs the write-back will write, asked before it in the same transaction
        (which holds the write lock), so that the update need not return a row per change."""
        write_back = (
            sa.update(sync_changes)
            .where(*fenced)
            .values(
                state=results.c.state,
                outcome=results.c.outcome,
                attempts=results.c.attempts,
                http_status=results.c.http_status,
                error_type=results.c.error_type,
                error_message=results.c.error_message,
                error_field=results.c.error_field,
                result=results.c.result,
                next_attempt_at=results.c.next_attempt_at,
                merged_into_id=results.c.merged_into_id,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
                completed_at=results.c.completed_at,
            )
        )
        self.write_back = write_back if sqlite else write_back.returning(c.id)
        leases = self._rows(LEASE_FIELDS)
        self.release = (
            sa.update(sync_changes)
            .where(c.id == leases.c.id, c.lease_token == leases.c.token, in_flight)
            .values(
                state=State.PENDING,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
        """Counted by its row count, not by returned rows."""
        attempts = self._rows(ATTEMPT_FIELDS)
        self.log_attempts = sa.insert(sync_attempts).from_select(
            [name for name, _ in ATTEMPT_FIELDS],
            sa.select(*(attempts.c[name] for name, _ in ATTEMPT_FIELDS)),
        )

    def in_list(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        """``column IN (...)`` with the whole list as one parameter ``name`` (:meth:`ids`).

        An expanding ``IN`` renders one parameter per value on every execution, and on
        PostgreSQL makes every batch size a statement of its own to prepare.
        """
        if self.dialect == "postgresql":
            array = sa.bindparam(name, type_=postgresql.ARRAY(sa.BigInteger()))
            return column == sa.any_(array)
        each = sa.func.json_each(sa.bindparam(name, type_=sa.Text())).table_valued("value")
        return column.in_(sa.select(each.c.value))

    def ids(self, values: Sequence[int]) -> object:
        """The parameter value for :meth:`in_list`."""
        return list(values) if self.dialect == "postgresql" else _dumps(list(values))

    def _rows(self, fields: tuple[tuple[str, sa.types.TypeEngine[Any]], ...]) -> Any:
        """The JSON parameter ``batch``, an array of arrays, as a table with ``fields``.

        Rows are arrays in the order of ``fields`` rather than objects: shorter to encode,
        and SQLite picks an array element about twice as fast as an object member.
        """
        batch = sa.bindparam("batch", type_=sa.Text())
        if self.dialect == "postgresql":
            each: Any = (
                sa.func.jsonb_array_elements(sa.cast(batch, postgresql.JSONB))
                .table_valued("value")
                .alias("batch_each")
            )
            columns = [
                sa.cast(each.c.value.op("->>")(index), type_).label(name)
                for index, (name, type_) in enumerate(fields)
            ]
        else:
            each = sa.func.json_each(batch).table_valued("value").alias("batch_each")
            columns = [
                sa.func.json_extract(each.c.value, f"$[{index}]", type_=type_).label(name)
                for index, (name, type_) in enumerate(fields)
            ]
        return sa.select(*columns).select_from(each).subquery("batch_rows")

    def results(self, results: Sequence[Result], now: datetime) -> str:
        completed = self._timestamp(now)
        ts = self._timestamp
        return _dumps(
            [
                (  # in the order of RESULT_FIELDS
                    r.change_id,
                    r.lease_token,
                    str(r.state),
                    str(r.outcome) if r.outcome is not None else None,
                    r.attempts,
                    r.http_status,
                    r.error_type,
                    r.error_message,
                    r.error_field,
                    _dumps(r.result) if r.result is not None else None,
                    ts(r.next_attempt_at) if r.next_attempt_at else None,
                    r.merged_into_id,
                    completed if r.state in FINAL_STATES else None,
                )
                for r in results
            ]
        )

    def leases(self, leases: Sequence[Lease]) -> str:
        return _dumps([(lease.change_id, lease.token) for lease in leases])

    def attempts(self, records: Sequence[AttemptRecord], now: datetime) -> str:
        ts = self._timestamp
        return _dumps(
            [
                (  # in the order of ATTEMPT_FIELDS
                    r.run_id,
                    ",".join(map(str, r.change_ids)),
                    r.workspace_id,
                    r.endpoint,
                    r.http_status,
                    round(r.duration_ms, 3),
                    r.error_type,
                    r.error_message,
                    r.request_id,
                    ts(r.attempted_at or now),
                )
                for r in records
            ]
        )


def _dumps(value: object) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        # A lone surrogate (from a ``\\ud800`` escape in an answer) cannot be stored as text.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "replace").decode("utf-8")
