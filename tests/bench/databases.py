"""Outbox databases for the benchmarks: a fresh SQLite file or PostgreSQL database per use,
migrated with ``kantata-sync db upgrade``, seeded with producer ``Row``s, queried, and dropped
afterwards; plus ``scratch_dir``, the temporary directory a bench run works in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from processes import KANTATA_SYNC, ROOT, base_env
from reporting import BenchError

PG_ADMIN_URL = os.environ.get(
    "KANTATA_SYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

Row = tuple[int, str, str]
"""A producer's row of ``sync_changes``: workspace_id, kind, payload (JSON text)."""


class Database:
    """A fresh, migrated outbox database: a SQLite file or a PostgreSQL database."""

    kind: str
    url: str

    def seed(self, rows: Iterable[Row]) -> int:
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def migrate(self) -> None:
        result = subprocess.run(
            [KANTATA_SYNC, "db", "upgrade"],
            env=base_env(self.url),
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if result.returncode:
            raise BenchError(f"db upgrade failed ({result.returncode}): {result.stderr.strip()}")

    def has_table(self, name: str) -> bool:
        raise NotImplementedError

    def state_counts(self) -> dict[str, int]:
        return {
            str(state): int(n)
            for state, n in self.query("SELECT state, count(*) FROM sync_changes GROUP BY state")
        }

    def outcome_counts(self) -> dict[str, int]:
        rows = self.query(
            "SELECT state, coalesce(outcome, ''), count(*) FROM sync_changes GROUP BY 1, 2"
        )
        return {
            f"{state}/{outcome}" if outcome else str(state): int(n) for state, outcome, n in rows
        }

    def runs(self) -> list[RunRow]:
        rows = self.query(
            "SELECT started_at, finished_at, duration_s, claimed, succeeded, requests, "
            "ended_because FROM sync_runs ORDER BY started_at"
        )
        return [
            RunRow(_when(a), _when(b) if b else None, d, c, s, r, e) for a, b, d, c, s, r, e in rows
        ]


@dataclass(frozen=True)
class RunRow:
    """One row of ``sync_runs``."""

    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    claimed: int
    succeeded: int
    requests: int
    ended_because: str | None


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def seed(self, rows: Iterable[Row]) -> int:
        count = 0
        with contextlib.closing(self._connect()) as conn, conn:
            batch: list[Row] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= 50_000:
                    conn.executemany(_SQLITE_INSERT, batch)
                    count += len(batch)
                    batch.clear()
            conn.executemany(_SQLITE_INSERT, batch)
            count += len(batch)
        return count

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(self._connect()) as conn:
            return list(conn.execute(sql).fetchall())

    def execute(self, sql: str) -> None:
        with contextlib.closing(self._connect()) as conn, conn:
            conn.execute(sql)

    def has_table(self, name: str) -> bool:
        return bool(
            self.query(f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{name}'")
        )


_SQLITE_INSERT = "INSERT INTO sync_changes (workspace_id, kind, payload) VALUES (?, ?, ?)"


class PostgresDatabase(Database):
    kind = "postgresql"

    def __init__(self, name: str) -> None:
        self.name = name
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{name}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    async def _with_conn(self, fn: Any) -> Any:
        conn = await asyncpg.connect(self.url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    def seed(self, rows: Iterable[Row]) -> int:
        iterator = iter(rows)

        async def go(conn: Any) -> int:
            count = 0
            while chunk := list(itertools.islice(iterator, 100_000)):
                await conn.copy_records_to_table(
                    "sync_changes", records=chunk, columns=["workspace_id", "kind", "payload"]
                )
                count += len(chunk)
            return count

        count: int = self._run(self._with_conn(go))
        return count

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        async def go(conn: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.fetch(sql)]

        result: list[tuple[Any, ...]] = self._run(self._with_conn(go))
        return result

    def execute(self, sql: str) -> None:
        async def go(conn: Any) -> None:
            await conn.execute(sql)

        self._run(self._with_conn(go))

    def has_table(self, name: str) -> bool:
        return self.query(f"SELECT to_regclass('{name}') IS NOT NULL")[0][0] is True

    def transactions(self) -> int:
        """Transactions committed or rolled back in this database so far (pg_stat_database)."""
        sql = (
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        return int(self.query(sql)[0][0])


def postgres_available() -> bool:
    async def go() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(go())


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def database(kind: str, tmp: Path, *, migrate: bool = True) -> Iterator[Database]:
    """A fresh database of ``kind`` (``sqlite`` or ``postgresql``), dropped afterwards."""
    db: Database
    if kind == "sqlite":
        db = SqliteDatabase(tmp / f"bench-{uuid.uuid4().hex[:8]}.db")
        try:
            if migrate:
                db.migrate()
            yield db
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db.path}{suffix}").unlink(missing_ok=True)
        return
    name = f"bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        db = PostgresDatabase(name)
        if migrate:
            db.migrate()
        yield db
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kantata-bench-") as name:
        yield Path(name)
