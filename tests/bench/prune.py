"""Retention: ``prune`` on a million finished changes, with a producer writing all the while.

Each database (SQLite, and PostgreSQL when reachable) is filled by bulk SQL with ``--rows``
terminal changes finished 40 days ago (a quarter each succeeded, failed, invalid, cancelled),
one attempt each, a run per thousand attempts, and as many young changes again that must stay.
Then ``kantata-sync prune --older-than 30d --format json`` deletes the old ones while a
producer thread of this process inserts a change every 10 ms on its own connection, as a real
producer would (``sqlite3`` with a busy timeout; ``asyncpg`` on PostgreSQL). Printed: the total
time, the transactions and the longest one (how long it held the database), and the producer's
insert latency (the longest is the longest it waited for the lock), against the same producer
for a few seconds before the prune. The goal: no transaction holds the lock longer than 100 ms.

Usage: ``.venv/bin/python tests/bench/prune.py [--rows 1000000] [--backend sqlite ...]``.
Not part of ``make test``: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from databases import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    database,
    postgres_available,
    scratch_dir,
)
from processes import KANTATA_SYNC, base_env
from reporting import BenchError, Context, Finding, Outcome, Table, log

TARGET_MS = 100.0
PRODUCER_INTERVAL = 0.010
BASELINE_SECONDS = 3.0
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
YOUNG = NOW - timedelta(days=1)
CUTOFF = NOW - timedelta(days=30)

_STATES = (
    "CASE n % 4 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'failed' WHEN 2 THEN 'invalid' "
    "ELSE 'cancelled' END"
)


def fill_sqlite(db: SqliteDatabase, rows: int) -> None:
    old = OLD.strftime("%Y-%m-%d %H:%M:%S.%f")
    young = YOUNG.strftime("%Y-%m-%d %H:%M:%S.%f")
    series = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < ?) "
    conn = sqlite3.connect(db.path, timeout=30)
    try:
        with conn:
            for stamp in (old, young):
                conn.execute(
                    series + "INSERT INTO sync_changes (workspace_id, kind, payload, state, "
                    "attempts, http_status, created_at, updated_at, completed_at) "
                    f"SELECT n % 10000 + 1, 'workspace_update', '{{\"title\":\"t\"}}', {_STATES}, "
                    "1, 200, ?, ?, ? FROM s",
                    (rows, stamp, stamp, stamp),
                )
            conn.execute(
                "INSERT INTO sync_attempts (run_id, change_ids, workspace_id, endpoint, "
                "http_status, duration_ms, request_id, attempted_at) "
                "SELECT 'run-' || (id / 1000), CAST(id AS TEXT), workspace_id, "
                "'PUT /workspaces/{id}', 200, 5.0, 'req-' || id, completed_at FROM sync_changes"
            )
            conn.execute(
                "INSERT INTO sync_runs (id, worker, command, started_at, finished_at, "
                "ended_because) SELECT run_id, 'bench', 'run', min(attempted_at), "
                "max(attempted_at), 'drained' FROM sync_attempts GROUP BY run_id"
            )
    finally:
        conn.close()


def fill_postgres(db: PostgresDatabase, rows: int) -> None:
    async def go(conn: Any) -> None:
        for stamp in (OLD, YOUNG):
            await conn.execute(
                "INSERT INTO sync_changes (workspace_id, kind, payload, state, attempts, "
                "http_status, created_at, updated_at, completed_at) "
                f"SELECT n % 10000 + 1, 'workspace_update', '{{\"title\":\"t\"}}', {_STATES}, "
                "1, 200, $2, $2, $2 FROM generate_series(1, $1) AS n",
                rows,
                stamp,
            )
        await conn.execute(
            "INSERT INTO sync_attempts (run_id, change_ids, workspace_id, endpoint, "
            "http_status, duration_ms, request_id, attempted_at) "
            "SELECT 'run-' || (id / 1000), id::text, workspace_id, 'PUT /workspaces/{id}', "
            "200, 5.0, 'req-' || id, completed_at FROM sync_changes"
        )
        await conn.execute(
            "INSERT INTO sync_runs (id, worker, command, started_at, finished_at, "
            "ended_because) SELECT run_id, 'bench', 'run', min(attempted_at), "
            "max(attempted_at), 'drained' FROM sync_attempts GROUP BY run_id"
        )
        await conn.execute("VACUUM ANALYZE")

    asyncio.run(db._with_conn(go))


class Producer:
    """Inserts a pending change every PRODUCER_INTERVAL on its own connection, timing each."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.latencies: list[float] = []
        self.lock_waits: list[float] = []
        """SQLite: from asking for the write lock (BEGIN IMMEDIATE) to having it."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        if isinstance(self.db, SqliteDatabase):
            self._sqlite(self.db.path)
        else:
            asyncio.run(self._postgres(self.db.url))

    def _sqlite(self, path: Path) -> None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            while not self._stop.is_set():
                self._timed(lambda: self._insert_sqlite(conn))
                time.sleep(PRODUCER_INTERVAL)
        finally:
            conn.close()

    def _insert_sqlite(self, conn: sqlite3.Connection) -> None:
        asked = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        self.lock_waits.append(time.perf_counter() - asked)
        try:
            conn.execute(
                "INSERT INTO sync_changes (workspace_id, kind, payload) "
                "VALUES (1, 'workspace_update', '{\"title\":\"p\"}')"
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _postgres(self, url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    await conn.execute(
                        "INSERT INTO sync_changes (workspace_id, kind, payload) "
                        "VALUES (1, 'workspace_update', '{\"title\":\"p\"}')"
                    )
                except asyncpg.PostgresError as exc:
                    self.errors.append(str(exc))
                self.latencies.append(time.perf_counter() - started)
                await asyncio.sleep(PRODUCER_INTERVAL)
        finally:
            await conn.close()

    def _timed(self, work: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            work()
        except sqlite3.OperationalError as exc:
            self.errors.append(str(exc))
        self.latencies.append(time.perf_counter() - started)


def _ms(values: list[float], q: float | None = None) -> str:
    if not values:
        return "-"
    if q is None:
        return f"{max(values) * 1000:.1f}"
    return f"{statistics.quantiles(values, n=100)[int(q) - 1] * 1000:.1f}"


def _prune(url: str, tmp: Path) -> dict[str, Any]:
    """``kantata-sync prune --older-than 30d`` as an operator runs it; its JSON summary."""
    result = subprocess.run(
        [KANTATA_SYNC, "prune", "--older-than", "30d", "--format", "json"],
        env=base_env(url),
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp,
    )
    if result.returncode:
        raise BenchError(f"prune failed ({result.returncode}): {result.stderr.strip()}")
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def measure_one(backend: str, tmp: Path, rows: int, table: Table, outcome: Outcome) -> None:
    with database(backend, tmp) as db:
        log(f"prune: {backend}, filling {rows:,} old and {rows:,} young changes")
        started = time.monotonic()
        if isinstance(db, SqliteDatabase):
            fill_sqlite(db, rows)
        else:
            assert isinstance(db, PostgresDatabase)
            fill_postgres(db, rows)
        fill_s = time.monotonic() - started
        log(f"prune: {backend}, filled in {fill_s:.0f} s; producer baseline")
        with Producer(db) as baseline:
            time.sleep(BASELINE_SECONDS)
        log(f"prune: {backend}, pruning with the producer running")
        with Producer(db) as producer:
            report = _prune(db.url, tmp)
        left = db.query("SELECT count(*) FROM sync_changes")[0][0]
        longest_ms = float(report["longest_transaction_ms"])
        # The longest wait for the lock: measured on SQLite; on PostgreSQL an insert takes no
        # lock the pruner holds, and its whole latency is the bound.
        waits = producer.lock_waits or producer.latencies
        table.add(
            backend,
            f"{rows:,}",
            f"{fill_s:.0f}",
            f"{report['changes']:,} / {report['attempts']:,} / {report['runs']:,}",
            f"{report['seconds']:.1f}",
            f"{report['transactions']:,}",
            f"{report['p99_transaction_ms']:.1f} / {longest_ms:.1f}",
            f"{_ms(baseline.latencies, 50)} / {_ms(baseline.latencies)}",
            f"{_ms(producer.latencies, 50)} / {_ms(producer.latencies, 99)} / "
            f"{_ms(producer.latencies)}",
            f"{_ms(waits, 99)} / {_ms(waits)}",
            f"{len(producer.latencies):,}",
            len(producer.errors) + len(baseline.errors),
            f"{left:,}",
        )
        outcome.findings.append(
            Finding(
                f"Retention: longest prune transaction, {rows:,} old rows ({backend})",
                f"{longest_ms:.1f} ms; the producer waited {_ms(waits)} ms at most for the lock",
                f"<= {TARGET_MS:.0f} ms",
                longest_ms <= TARGET_MS,
            )
        )


def measure(ctx: Context, rows: int | None = None) -> Outcome:
    rows = rows or (100_000 if ctx.quick else 1_000_000)
    outcome = Outcome()
    table = Table(
        "Retention: prune --older-than 30d with a producer inserting every 10 ms",
        [
            "backend",
            "old rows",
            "fill s",
            "deleted changes / attempts / runs",
            "prune s",
            "transactions",
            "tx p99 / longest ms",
            "producer before: p50 / max ms",
            "producer during: p50 / p99 / max ms",
            "lock wait p99 / max ms",
            "inserts",
            "errors",
            "rows left",
        ],
    )
    for backend in ctx.backends():
        measure_one(backend, ctx.tmp, rows, table, outcome)
    table.notes.append(
        "one attempt per change, a run per 1,000 attempts; as many young changes stay; the "
        "longest transaction is measured inside the pruner from lock taken to commit done "
        "(on SQLite that includes a WAL checkpoint when the commit triggers one); the lock "
        "wait is the producer's BEGIN IMMEDIATE on SQLite, its whole insert on PostgreSQL"
    )
    outcome.tables.append(table)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    args = parser.parse_args(argv)
    postgres = postgres_available()
    with scratch_dir() as tmp:
        ctx = Context(tmp=tmp, quick=False, repeats=1, postgres=postgres)
        if args.backend:
            chosen = [b for b in args.backend if b != "postgresql" or postgres]
            ctx.backends = lambda: chosen  # type: ignore[method-assign]
        outcome = measure(ctx, args.rows)
    for table in outcome.tables:
        print(table.text())
        print()
    for finding in outcome.findings:
        verdict = "" if finding.ok is None else (" pass" if finding.ok else " MISS")
        print(f"{finding.measurement}: {finding.figure} (target {finding.target}){verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
