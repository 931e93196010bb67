"""3. Queue size: claim time and the worker's peak RSS with a million pending changes.

``Store.claim`` is timed in this process on a queue of 10,000 and one of 1,000,000 pending rows
(10,000 workspaces, the default batch of 500; the median of several claims, each released
untouched so the queue stays the same). Then ``kantata-sync run`` works on the big queue for a
while and is stopped with SIGTERM; its peak RSS comes from ``wait4``. PostgreSQL tables are
ANALYZEd after the bulk load, as autovacuum would soon do.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

from databases import database
from processes import WorkerProcess, check_exit, run_worker, sandbox, worker_env
from reporting import BenchError, Context, Finding, Outcome, Table, log, median
from workloads import cycle_rows

WORKSPACES = 10_000
BATCH = 500
RSS_TARGET_MB = 200.0
CLAIM_RATIO_TARGET = 2.0


async def claim_times(urls: list[str], claims: int) -> list[list[float]]:
    """Time ``claims`` claims on each database, alternating between them (side by side)."""
    from worker import db as dbmod
    from worker.changes import Lease
    from worker.config import Settings
    from worker.store import Store

    stores = [Store(dbmod.create_engine(Settings(database_url=url).database_url)) for url in urls]
    times: list[list[float]] = [[] for _ in urls]
    try:
        for k in range(claims + 1):
            for store, samples in zip(stores, times, strict=True):
                started = time.perf_counter()
                rows = await store.claim("bench-claimer", BATCH, 300.0, datetime.now(UTC))
                elapsed = time.perf_counter() - started
                if len(rows) != BATCH:
                    raise BenchError(f"claim returned {len(rows)} rows, expected {BATCH}")
                if k:  # the first claim warms caches and connections
                    samples.append(elapsed)
                leases = [Lease(r.id, r.lease_token) for r in rows]
                await store.release(leases, datetime.now(UTC))
    finally:
        for store in stores:
            await store.engine.dispose()
    return times


def _rows(n: int) -> itertools.islice[tuple[int, str, str]]:
    passes = 4 * ((n // WORKSPACES + 3) // 4 or 1)
    return itertools.islice(cycle_rows(WORKSPACES, passes, tag="queue"), n)


def measure(ctx: Context) -> Outcome:
    sizes = (10_000, 100_000) if ctx.quick else (10_000, 1_000_000)
    claims = 10 if ctx.quick else 30
    work_seconds = 6.0 if ctx.quick else 20.0
    outcome = Outcome()
    claim_table = Table(
        f"Queue size: Store.claim of a {BATCH}-change batch (median of {claims}, the two queues "
        "alternating)",
        ["backend", "pending rows", "seed s", "claim ms (median)", "min", "max", "vs smallest"],
    )
    rss_table = Table(
        "Queue size: peak RSS of kantata-sync run",
        ["backend", "pending rows", "ran for", "changes done", "peak RSS", "exit"],
    )
    with sandbox(WORKSPACES) as sb:
        for backend in ctx.backends():
            log(f"queue: {backend}, seeding {sizes[0]:,} and {sizes[1]:,} pending rows")
            with database(backend, ctx.tmp) as small, database(backend, ctx.tmp) as large:
                seconds = []
                for db, n in ((small, sizes[0]), (large, sizes[1])):
                    started = time.monotonic()
                    db.seed(_rows(n))
                    if backend == "postgresql":
                        db.execute("ANALYZE sync_changes")
                    seconds.append(time.monotonic() - started)
                log(f"queue: {backend}, timing claims")
                times = asyncio.run(claim_times([small.url, large.url], claims))
                medians = [median(t) for t in times]
                for n, t, m, s in zip(sizes, times, medians, seconds, strict=True):
                    claim_table.add(
                        backend,
                        f"{n:,}",
                        f"{s:.1f}",
                        f"{m * 1000:.1f}",
                        f"{min(t) * 1000:.1f}",
                        f"{max(t) * 1000:.1f}",
                        f"{m / medians[0]:.2f}x",
                    )
                ratio = medians[1] / medians[0]
                outcome.findings.append(
                    Finding(
                        f"3. Queue size, claim time {sizes[1]:,} vs {sizes[0]:,} rows ({backend})",
                        f"{ratio:.2f}x ({medians[1] * 1000:.1f} vs {medians[0] * 1000:.1f} ms)",
                        f"<= {CLAIM_RATIO_TARGET:g}x",
                        ratio <= CLAIM_RATIO_TARGET,
                    )
                )
                if backend != "sqlite":
                    continue
                for db, n in ((small, sizes[0]), (large, sizes[1])):
                    log(f"queue: {backend}, peak RSS of run with {n:,} pending")
                    env = worker_env(db.url, sb.url, concurrency=ctx.concurrency)
                    if n == sizes[0]:
                        result = run_worker(env, ctx.tmp)
                    else:
                        proc = WorkerProcess(env, ctx.tmp)
                        time.sleep(work_seconds)
                        proc.stop()
                        result = proc.wait(60)
                        check_exit(result)
                    done = n - db.state_counts().get("pending", 0)
                    rss_table.add(
                        backend,
                        f"{n:,}",
                        f"{result.wall:.1f} s" + ("" if n == sizes[0] else " (then SIGTERM)"),
                        f"{done:,}",
                        f"{result.maxrss_mb:.0f} MB",
                        result.returncode,
                    )
                    if n == sizes[1]:
                        outcome.findings.append(
                            Finding(
                                f"3. Queue size, peak RSS of run ({n:,} pending, {backend})",
                                f"{result.maxrss_mb:.0f} MB",
                                f"<= {RSS_TARGET_MB:.0f} MB",
                                result.maxrss_mb <= RSS_TARGET_MB,
                            )
                        )
    claim_table.notes.append(
        f"rows cycle over {WORKSPACES:,} workspaces (update, status, update, status), "
        "inserted by the producer's plain INSERT (sqlite3 executemany / COPY)"
    )
    rss_table.notes.append(
        "peak RSS is ru_maxrss of the child from wait4; the big queue's run is stopped with "
        "SIGTERM after a fixed time, rate limit off"
    )
    outcome.tables.extend([claim_table, rss_table])
    return outcome
