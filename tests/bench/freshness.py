"""8. Freshness: how long a change waits between the producer's INSERT and ``succeeded``.

Issue 17's target: insert → succeeded p50 ≤ 150 ms and p99 ≤ 500 ms at light load, on SQLite and
PostgreSQL, with default settings and a rate budget that does not bind; and the p99 while a
producer inserts 50 changes/s for a minute (≤ 500 ms here too).

``kantata-sync serve`` runs as a real process against the sandbox, with default settings except
the database, the API URL and token, ``--http-port 0`` (to find ``/readyz``) and
``KANTATA_SYNC_RATE_LIMIT=100`` in both phases: the default 10/s would bind at 50 changes/s and
measure the queue behind the limiter, not freshness. The producer is this process: plain
``INSERT INTO sync_changes (workspace_id, kind, payload)`` on its own connection (sqlite3 in
autocommit mode with a busy timeout, asyncpg), one ``workspace_update`` (a title, one PUT) per
change, every change on a workspace of its own so that nothing coalesces or waits for another
change. Phases, one daemon per backend, each on a fresh sandbox and database:

- *light*: one change every 0.5 s, 100 changes (40 with ``--quick``);
- *load*: 50 changes/s for 60 s (30 s with ``--quick``), on a schedule of absolute times.

Clock: one clock, this process's. ``t0`` is ``time.time()`` when the INSERT's commit returned;
the producer then polls its outstanding rows every 10 ms (``SELECT id, state ... WHERE id IN``)
and a change's latency is the end of the first poll that reads ``succeeded`` minus ``t0``.
So the figure includes the commit of the write-back and overstates by up to one poll
(10 ms plus the query; about 5 ms on average); it never flatters. ``created_at`` is no use as
``t0`` (SQLite's ``CURRENT_TIMESTAMP`` has whole seconds). The breakdown beside it uses the
worker's timestamps, taken from the same host clock (``datetime.now(UTC)``): ``attempted_at``
(``sync_attempts``, just before the request leaves) and ``updated_at`` (the write-back's
``now``; ``completed_at`` is the same instant, so it says nothing of when the answer came).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from databases import Database, PostgresDatabase, SqliteDatabase, _when, database
from processes import KANTATA_SYNC, base_env, proc_cpu_seconds, sandbox
from reporting import BenchError, Context, Finding, Outcome, Table, log

RATE_LIMIT = 100
LIGHT_INTERVAL = 0.5
LOAD_RATE = 50
POLL = 0.01
SETTLE = 30.0  # seconds after the last insert before an unfinished change counts as lost
TARGET_P50_MS = 150.0
TARGET_P99_MS = 500.0
FINAL = ("succeeded", "failed", "invalid", "cancelled")

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the producer ----------------------------------------------------------------------------


class Producer:
    """Inserts one change, and reads the state of given rows, on its own connection."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, workspace_id: int, payload: str) -> int:
        raise NotImplementedError

    async def states(self, ids: Sequence[int]) -> list[tuple[int, str]]:
        raise NotImplementedError

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError


class SqliteProducer(Producer):
    def __init__(self, path: Path) -> None:
        # Autocommit: each INSERT is its own transaction; the busy timeout as the README asks.
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)

    async def close(self) -> None:
        self.conn.close()

    async def insert(self, workspace_id: int, payload: str) -> int:
        cursor = self.conn.execute(
            "INSERT INTO sync_changes (workspace_id, kind, payload) "
            "VALUES (?, 'workspace_update', ?)",
            (workspace_id, payload),
        )
        return int(cursor.lastrowid or 0)

    async def states(self, ids: Sequence[int]) -> list[tuple[int, str]]:
        marks = ",".join("?" * len(ids))
        sql = f"SELECT id, state FROM sync_changes WHERE id IN ({marks})"
        return [(int(i), str(s)) for i, s in self.conn.execute(sql, tuple(ids))]

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql).fetchall())


class PostgresProducer(Producer):
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.url)

    async def close(self) -> None:
        await self.conn.close()

    async def insert(self, workspace_id: int, payload: str) -> int:
        return int(
            await self.conn.fetchval(
                "INSERT INTO sync_changes (workspace_id, kind, payload) "
                "VALUES ($1, 'workspace_update', $2) RETURNING id",
                workspace_id,
                payload,
            )
        )

    async def states(self, ids: Sequence[int]) -> list[tuple[int, str]]:
        rows = await self.conn.fetch(
            "SELECT id, state FROM sync_changes WHERE id = ANY($1::bigint[])", list(ids)
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(sql)]


def producer_for(db: Database) -> Producer:
    if isinstance(db, SqliteDatabase):
        return SqliteProducer(db.path)
    if isinstance(db, PostgresDatabase):
        return PostgresProducer(db.url)
    raise BenchError(f"no producer for {db.kind}")


# --- one phase -------------------------------------------------------------------------------


@dataclass
class Change:
    id: int
    workspace_id: int
    due: float  # the scheduled insert time (monotonic)
    started: float  # time.time() before the INSERT
    committed: float  # time.time() when the INSERT's commit returned
    seen: float | None = None  # time.time() at the end of the poll that read a final state
    state: str = "pending"
    attempted: float | None = None
    updated: float | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.seen is None or self.state != "succeeded":
            return None
        return (self.seen - self.committed) * 1000


@dataclass
class Phase:
    name: str
    planned: int
    changes: list[Change] = field(default_factory=list)
    wall: float = 0.0  # first insert to last insert, seconds
    poll_ms: list[float] = field(default_factory=list)
    daemon_cpu: float = 0.0
    runs: int = 0

    def latencies(self) -> list[float]:
        return sorted(v for c in self.changes if (v := c.latency_ms) is not None)

    def lost(self) -> int:
        return sum(1 for c in self.changes if c.state != "succeeded")


async def drive(
    producer: Producer, name: str, offsets: Sequence[float], first_workspace: int
) -> Phase:
    """Insert at ``offsets`` (seconds from now), poll outstanding rows every ``POLL`` seconds,
    until every change is final or ``SETTLE`` seconds after the last insert."""
    phase = Phase(name, len(offsets))
    outstanding: dict[int, Change] = {}
    start = time.monotonic()
    next_poll = start
    last_insert = start
    i = 0
    while i < len(offsets) or outstanding:
        now = time.monotonic()
        if i < len(offsets) and now >= start + offsets[i]:
            workspace = first_workspace + i
            payload = json.dumps({"title": f"freshness {name} {i}"})
            before = time.time()
            ident = await producer.insert(workspace, payload)
            change = Change(ident, workspace, start + offsets[i], before, time.time())
            phase.changes.append(change)
            outstanding[ident] = change
            last_insert = time.monotonic()
            i += 1
            continue
        if i >= len(offsets) and now > last_insert + SETTLE:
            break
        if outstanding and now >= next_poll:
            polled = time.perf_counter()
            rows = await producer.states(list(outstanding))
            seen = time.time()
            phase.poll_ms.append((time.perf_counter() - polled) * 1000)
            for ident, state in rows:
                if state in FINAL:
                    change = outstanding.pop(ident)
                    change.state, change.seen = state, seen
            next_poll = time.monotonic() + POLL
            continue
        wake = next_poll if outstanding else float("inf")
        if i < len(offsets):
            wake = min(wake, start + offsets[i])
        await asyncio.sleep(max(min(wake, now + POLL) - time.monotonic(), 0))
    phase.wall = (phase.changes[-1].due - phase.changes[0].due) if phase.changes else 0.0
    return phase


def _epoch(value: Any) -> float | None:
    return None if value is None else _when(value).timestamp()


async def annotate(producer: Producer, phase: Phase) -> None:
    """The worker's own timestamps of each change, for the breakdown."""
    by_id = {c.id: c for c in phase.changes}
    low, high = min(by_id), max(by_id)
    rows = await producer.fetch(
        f"SELECT id, updated_at FROM sync_changes WHERE id BETWEEN {low} AND {high}"
    )
    for ident, updated in rows:
        if (change := by_id.get(int(ident))) is not None:
            change.updated = _epoch(updated)
    by_workspace = {c.workspace_id: c for c in phase.changes}
    lo, hi = min(by_workspace), max(by_workspace)
    rows = await producer.fetch(
        "SELECT workspace_id, min(attempted_at) FROM sync_attempts "
        f"WHERE workspace_id BETWEEN {lo} AND {hi} GROUP BY workspace_id"
    )
    for workspace, attempted in rows:
        if (change := by_workspace.get(int(workspace))) is not None:
            change.attempted = _epoch(attempted)


# --- the daemon ------------------------------------------------------------------------------


class Daemon:
    """``kantata-sync serve --http-port 0`` as a child, ready once ``/readyz`` answers 200."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self._err_path = tmp / f"serve-{os.getpid()}-{time.monotonic_ns()}.err"
        self._err = self._err_path.open("w+")
        self.process = subprocess.Popen(
            [KANTATA_SYNC, "serve", "--http-port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            cwd=tmp,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise BenchError(f"serve did not start: {line}{self._stderr()}")
        self.url = line.split()[-1].rstrip("/")

    def _stderr(self) -> str:
        self._err.flush()
        self._err.seek(0)
        return self._err.read()

    def wait_ready(self, timeout: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise BenchError(f"serve exited {self.process.returncode}: {self._stderr()}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                _OPENER.open(self.url + "/readyz", timeout=5) as response,
            ):
                if response.status == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise BenchError(f"serve not ready within {timeout:g} s: {self._stderr()[-2000:]}")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.process.pid)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, wait, and the exit code and stderr."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        err = self._stderr()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._err.close()
        self._err_path.unlink(missing_ok=True)
        return code, err


# --- the measurement -------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of sorted ``values``."""
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * q // 100))
    return values[int(rank) - 1]


def fmt_ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


async def _phases(
    db: Database, light: int, load_seconds: int, daemon_cpu: Callable[[], float]
) -> list[Phase]:
    producer = producer_for(db)
    await producer.open()
    try:
        phases = []
        plans = [
            ("light", [k * LIGHT_INTERVAL for k in range(light)], 1),
            ("load", [k / LOAD_RATE for k in range(LOAD_RATE * load_seconds)], light + 1),
        ]
        for name, offsets, first in plans:
            await asyncio.sleep(2.0)  # let the daemon settle into idle
            cpu0 = daemon_cpu()
            runs0 = len(await producer.fetch("SELECT id FROM sync_runs"))
            log(f"freshness {db.kind}: {name}, {len(offsets)} changes over {offsets[-1]:.0f} s")
            phase = await drive(producer, name, offsets, first)
            phase.daemon_cpu = daemon_cpu() - cpu0
            phase.runs = len(await producer.fetch("SELECT id FROM sync_runs")) - runs0
            await annotate(producer, phase)
            phases.append(phase)
        return phases
    finally:
        await producer.close()


def _breakdown(phase: Phase) -> str:
    parts = []
    for label, pairs in (
        ("insert→request", [(c.committed, c.attempted) for c in phase.changes]),
        ("request→write-back", [(c.attempted, c.updated) for c in phase.changes]),
        ("write-back→seen", [(c.updated, c.seen) for c in phase.changes]),
    ):
        spans = sorted((b - a) * 1000 for a, b in pairs if a is not None and b is not None)
        if spans:
            parts.append(f"{label} {fmt_ms(pct(spans, 50))} / {fmt_ms(pct(spans, 99))}")
    return "; ".join(parts)


def measure(ctx: Context) -> Outcome:
    light = 40 if ctx.quick else 100
    load_seconds = 30 if ctx.quick else 60
    workspaces = light + LOAD_RATE * load_seconds
    outcome = Outcome()
    detail = Table(
        "Freshness: INSERT commit → producer reads succeeded, `serve` with default settings "
        f"(rate limit {RATE_LIMIT}/s), ms",
        ["backend", "phase", "changes", "p50", "p90", "p99", "max", "target", "result"],
    )
    parts = Table(
        "Freshness breakdown (p50 / p99, ms) from the worker's timestamps",
        ["backend", "phase", "breakdown", "runs", "daemon CPU", "insert p99", "poll p50"],
    )
    for kind in ctx.backends():
        with database(kind, ctx.tmp) as db, sandbox(workspaces) as box:
            env = base_env(db.url, box.url)
            env["KANTATA_SYNC_RATE_LIMIT"] = str(RATE_LIMIT)
            daemon = Daemon(env, ctx.tmp)
            try:
                ready = daemon.wait_ready()
                log(f"freshness {kind}: serve ready in {ready:.2f} s at {daemon.url}")
                phases = asyncio.run(_phases(db, light, load_seconds, daemon.cpu))
            finally:
                code, err = daemon.stop()
            if code != 0:
                raise BenchError(f"serve exited {code}: {err[-2000:]}")
            problems = [line for line in err.splitlines() if '"level": "error"' in line]
            if problems:
                ctx.notes.append(f"freshness {kind}: serve logged errors: {problems[0][:300]}")
        for phase in phases:
            lat = phase.latencies()
            p50, p90, p99 = pct(lat, 50), pct(lat, 90), pct(lat, 99)
            lost = phase.lost()
            if phase.name == "light":
                ok = lost == 0 and p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
                target = f"p50 ≤ {TARGET_P50_MS:.0f}, p99 ≤ {TARGET_P99_MS:.0f}"
                label = f"light: 1 per {LIGHT_INTERVAL:g} s"
                figure = f"p50 {fmt_ms(p50)} ms, p99 {fmt_ms(p99)} ms"
            else:
                ok = lost == 0 and p99 <= TARGET_P99_MS
                target = f"p99 ≤ {TARGET_P99_MS:.0f}"
                rate = (len(phase.changes) - 1) / phase.wall if phase.wall else 0.0
                label = f"load: {LOAD_RATE}/s for {load_seconds} s (achieved {rate:.1f}/s)"
                figure = f"p99 {fmt_ms(p99)} ms (p50 {fmt_ms(p50)})"
            changes = f"{len(phase.changes)}" + (f", {lost} not succeeded" if lost else "")
            detail.add(
                kind,
                label,
                changes,
                fmt_ms(p50),
                fmt_ms(p90),
                fmt_ms(p99),
                fmt_ms(lat[-1]) if lat else "-",
                target,
                "pass" if ok else "MISS",
            )
            inserts = sorted((c.committed - c.started) * 1000 for c in phase.changes)
            parts.add(
                kind,
                phase.name,
                _breakdown(phase),
                str(phase.runs),
                f"{phase.daemon_cpu:.2f} s",
                fmt_ms(pct(inserts, 99)),
                f"{pct(sorted(phase.poll_ms), 50):.2f}",
            )
            outcome.findings.append(
                Finding(
                    f"freshness ({kind}, {phase.name})",
                    figure + (f"; {lost} not succeeded" if lost else ""),
                    target + " ms",
                    ok,
                    key=f"freshness.{kind}.{phase.name}",
                    values={
                        "p50_ms": p50,
                        "p90_ms": p90,
                        "p99_ms": p99,
                        "max_ms": lat[-1] if lat else float("nan"),
                        "changes": float(len(phase.changes)),
                        "not_succeeded": float(lost),
                    },
                )
            )
    detail.notes.extend(
        [
            f"`kantata-sync serve --http-port 0`, default settings but KANTATA_SYNC_RATE_LIMIT="
            f"{RATE_LIMIT} (the default 10/s would bind at {LOAD_RATE}/s); one "
            "`workspace_update` per change, each on its own workspace.",
            "Latency: end of the producer's first poll (every 10 ms) that reads `succeeded` minus "
            "the return of the INSERT's commit, both on this process's clock; up to one poll "
            "(about 5 ms on average) above the true figure.",
        ]
    )
    parts.notes.append(
        "insert→request: commit to `sync_attempts.attempted_at` (wake-up, poll, run start, "
        "claim, limiter); request→write-back: to `updated_at`, the write-back's `now` "
        "(`completed_at` is the same instant): the response and the wait for the next flush; "
        "write-back→seen: its commit and the producer's next poll. runs: `sync_runs` rows in "
        "the phase. daemon CPU: the whole phase, settle included. "
        "insert p99 / poll p50: the producer's own INSERT and poll query times."
    )
    outcome.tables.extend([detail, parts])
    return outcome
