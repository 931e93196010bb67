"""Benchmark plumbing: the sandbox and the worker as subprocesses, temporary databases, tables.

Everything here runs kantata-sync as an operator does: the installed ``kantata-sync`` console
script, configured through ``KANTATA_SYNC_*`` variables. Child CPU time and peak RSS come from
``os.wait4``; the sandbox is inspected through its ``/__sandbox__/`` routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KANTATA_SYNC = str(BIN / "kantata-sync")
TOKEN = "sandbox-token"
PG_ADMIN_URL = os.environ.get(
    "KANTATA_SYNC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")

Row = tuple[int, str, str]
"""A producer's row of ``sync_changes``: workspace_id, kind, payload (JSON text)."""

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(RuntimeError):
    """A benchmark could not run (a process failed, a check did not hold)."""


# --- small helpers ---------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s"


def fmt_pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- tables ----------------------------------------------------------------------------------


@dataclass
class Table:
    """A titled table with notes, printable as text or markdown."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def text(self) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
            for i, h in enumerate(self.headers)
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

        out = [self.title, "=" * len(self.title), line(self.headers)]
        out.append("  ".join("-" * width for width in widths))
        out.extend(line(row) for row in self.rows)
        out.extend(f"  * {note}" for note in self.notes)
        return "\n".join(line.rstrip() for line in out)

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out.extend(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows
        )
        if self.notes:
            out.append("")
            out.extend(f"- {note}" for note in self.notes)
        return "\n".join(out)


@dataclass
class Finding:
    """One line of the summary table."""

    measurement: str
    figure: str
    target: str
    ok: bool | None  # None: reported, no target


# --- the sandbox -----------------------------------------------------------------------------


@dataclass
class Sandbox:
    """A running ``kantata-sync sandbox --inspect`` subprocess."""

    url: str
    origin: str
    process: subprocess.Popen[str]

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            self.origin + path, method=method, data=b"" if method == "POST" else None
        )
        with _OPENER.open(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/__sandbox__/stats")
        return result

    def reset_stats(self) -> None:
        self._call("POST", "/__sandbox__/reset_stats")

    def workspace(self, workspace_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/__sandbox__/workspaces/{workspace_id}")
        return result

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.process.pid)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def sandbox(workspaces: int, rate_limit: int = 0) -> Iterator[Sandbox]:
    """Start the sandbox (faults off) with ``workspaces`` seeded and an optional strict limit."""
    process = subprocess.Popen(
        [
            KANTATA_SYNC,
            "sandbox",
            "--port",
            "0",
            "--inspect",
            "--workspaces",
            str(workspaces),
            "--rate-limit",
            str(rate_limit),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            err = process.stderr.read() if process.stderr else ""
            raise BenchError(f"sandbox did not start: {line}{err}")
        url = line.split()[-1]
        yield Sandbox(url, url.removesuffix("/api/v1"), process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# --- databases -------------------------------------------------------------------------------


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


# --- the worker ------------------------------------------------------------------------------


def base_env(database_url: str, api_url: str = "http://127.0.0.1:9/api/v1") -> dict[str, str]:
    """The environment of a ``kantata-sync`` child: no inherited KANTATA_SYNC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANTATA_SYNC_")}
    env.update(
        KANTATA_SYNC_DATABASE_URL=database_url,
        KANTATA_SYNC_API_BASE_URL=api_url,
        KANTATA_SYNC_TOKEN=TOKEN,
        KANTATA_SYNC_LOG_LEVEL="warning",
        KANTATA_SYNC_LOG_FORMAT="json",
    )
    return env


def worker_env(
    database_url: str,
    api_url: str,
    *,
    rate_limit: float = 0,
    concurrency: int = 16,
    batch_size: int = 500,
    name: str | None = None,
) -> dict[str, str]:
    env = base_env(database_url, api_url)
    env.update(
        KANTATA_SYNC_RATE_LIMIT=f"{rate_limit:g}",
        KANTATA_SYNC_CONCURRENCY=str(concurrency),
        KANTATA_SYNC_BATCH_SIZE=str(batch_size),
        KANTATA_SYNC_GRACE_PERIOD="10",
    )
    if name:
        env["KANTATA_SYNC_WORKER_NAME"] = name
    return env


@dataclass(frozen=True)
class ProcessResult:
    """How a child went: exit code, wall time, CPU seconds, peak RSS and its stderr."""

    returncode: int
    wall: float
    cpu: float
    maxrss_mb: float
    stderr: str


class WorkerProcess:
    """``kantata-sync run --no-progress`` as a child; :meth:`wait` reaps it with ``wait4``."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self._err_path = tmp / f"worker-{uuid.uuid4().hex[:8]}.err"
        self._err = self._err_path.open("w+")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [KANTATA_SYNC, "run", "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            cwd=tmp,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM: stop claiming, finish in-flight requests, write back, release."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 600) -> ProcessResult:
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.process.kill()
                pid, status, usage = os.wait4(self.pid, 0)
                break
            time.sleep(0.01)
        wall = time.monotonic() - self.started
        code = os.waitstatus_to_exitcode(status)
        self.process.returncode = code
        self._err.seek(0)
        stderr = self._err.read()
        self._err.close()
        self._err_path.unlink(missing_ok=True)
        return ProcessResult(
            code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stderr
        )


def run_worker(env: dict[str, str], tmp: Path, timeout: float = 600) -> ProcessResult:
    """Run one worker until it drains the queue; fail loudly on a non-zero exit."""
    result = WorkerProcess(env, tmp).wait(timeout)
    check_exit(result)
    return result


def check_exit(result: ProcessResult) -> None:
    if result.returncode != 0:
        raise BenchError(f"kantata-sync run exited {result.returncode}: {result.stderr[-2000:]}")


def run_workers(
    envs: Sequence[dict[str, str]], tmp: Path, timeout: float = 600
) -> list[ProcessResult]:
    """Start every worker at once and wait for all of them."""
    workers = [WorkerProcess(env, tmp) for env in envs]
    results = [w.wait(timeout) for w in workers]
    for result in results:
        check_exit(result)
    return results


def startup_cpu(db_url: str, api_url: str, tmp: Path, runs: int = 3) -> float:
    """CPU seconds of a ``run`` with nothing to do: interpreter start, imports, schema check."""
    return median(run_worker(worker_env(db_url, api_url), tmp).cpu for _ in range(runs))


def machine() -> dict[str, str]:
    """The machine the numbers come from."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu model": cpu,
        "memory": mem,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


@dataclass
class Context:
    """What every measurement gets: scratch space, mode, repeats and what is available."""

    tmp: Path
    quick: bool
    repeats: int
    postgres: bool
    concurrency: int = 16
    notes: list[str] = field(default_factory=list)

    def backends(self) -> list[str]:
        return ["sqlite", "postgresql"] if self.postgres else ["sqlite"]


@dataclass
class Outcome:
    """A measurement's detail tables and its lines for the summary."""

    tables: list[Table] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


class MachineCpu:
    """How busy the whole machine was between two points, from /proc/stat (1.0 = all cores)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values[:8]), idle

    def busy(self) -> float:
        total, idle = self._read()
        dt, di = total - self._start[0], idle - self._start[1]
        return (dt - di) / dt if dt else 0.0
