"""5. Scale-out, CPU-bound: 1, 2 and 4 ``kantata-sync run`` processes on one PostgreSQL queue,
no rate limit, against the sandbox answering at once: the workers, PostgreSQL and the sandbox
share the machine's cores, so this shows contention, not what more workers bring against a slow
API (``scaleout_slow.py`` measures that).

The aggregate rate is the queue's size divided by the span from the first run's start to the
last run's end (``sync_runs``). The machine's CPU use over that span is shown beside it: on a
small machine the workers, PostgreSQL and the sandbox share the same cores.
"""

from __future__ import annotations

import time

from databases import PostgresDatabase, database
from processes import run_workers, sandbox, startup_cpu, worker_env
from reporting import (
    BenchError,
    Context,
    Finding,
    MachineCpu,
    Outcome,
    Table,
    fmt_rate,
    log,
    median,
)
from workloads import cycle_rows

WORKER_COUNTS = (1, 2, 4)


def measure(ctx: Context) -> Outcome:
    outcome = Outcome()
    if not ctx.postgres:
        outcome.findings.append(Finding("5. Scale-out", "skipped: no PostgreSQL", "", None))
        return outcome
    workspaces, passes = (500, 4) if ctx.quick else (3000, 4)
    rows = list(cycle_rows(workspaces, passes, tag="scaleout"))
    n = len(rows)
    detail = Table(
        f"Scale-out, CPU-bound, on PostgreSQL ({n:,} changes, concurrency {ctx.concurrency} per "
        "worker, rate limit off)",
        [
            "workers",
            "run",
            "aggregate changes/s",
            "vs 1 worker",
            "worker CPU ms/change",
            "machine CPU busy",
            "DB transactions per change",
            "changes per worker",
        ],
    )
    with sandbox(workspaces) as sb:
        with database("postgresql", ctx.tmp) as empty:
            fixed = startup_cpu(empty.url, sb.url, ctx.tmp)
        rates: dict[int, list[float]] = {k: [] for k in WORKER_COUNTS}
        for repeat in range(ctx.repeats):
            for workers in WORKER_COUNTS:
                log(f"scale-out: {workers} worker(s), run {repeat + 1}/{ctx.repeats}")
                with database("postgresql", ctx.tmp) as db:
                    assert isinstance(db, PostgresDatabase)
                    db.seed(rows)
                    sb.reset_stats()
                    xacts = db.transactions()
                    cpu = MachineCpu()
                    results = run_workers(
                        [
                            worker_env(
                                db.url, sb.url, concurrency=ctx.concurrency, name=f"bench-{i}"
                            )
                            for i in range(workers)
                        ],
                        ctx.tmp,
                    )
                    busy = cpu.busy()
                    time.sleep(0.6)  # backends publish their statistics when they exit
                    xacts = db.transactions() - xacts
                    counts = db.outcome_counts()
                    runs = db.runs()
                if counts.get("succeeded/applied") != n:
                    raise BenchError(f"{workers} workers left {counts}")
                if sb.stats()["total"] != n:
                    raise BenchError(f"sandbox saw {sb.stats()['total']} requests for {n} changes")
                span = max(r.finished_at for r in runs if r.finished_at) - min(
                    r.started_at for r in runs
                )
                rate = n / span.total_seconds()
                rates[workers].append(rate)
                worker_cpu = (sum(r.cpu for r in results) - fixed * workers) / n * 1000
                detail.add(
                    workers,
                    repeat + 1,
                    fmt_rate(rate),
                    "",
                    f"{worker_cpu:.3f}",
                    f"{busy:.0%}",
                    f"{xacts / n:.2f}",
                    " / ".join(str(r.succeeded) for r in runs),
                )
        base = median(rates[1])
        for workers in WORKER_COUNTS:
            rate = median(rates[workers])
            detail.add(workers, "median", fmt_rate(rate), f"{rate / base:.2f}x", "", "", "", "")
        outcome.findings.append(
            Finding(
                "5. Scale-out, CPU-bound (sandbox, no latency), PostgreSQL, 1 / 2 / 4 workers",
                " / ".join(fmt_rate(median(rates[k])) for k in WORKER_COUNTS)
                + f" ({median(rates[4]) / base:.2f}x at 4)",
                "table",
                None,
                key="scaleout.cpu_bound",
                values={
                    "one_worker_changes_per_s": round(base, 1),
                    "two_workers_changes_per_s": round(median(rates[2]), 1),
                    "four_workers_changes_per_s": round(median(rates[4]), 1),
                },
            )
        )
    detail.notes.append(
        "DB transactions per change: from pg_stat_database over the runs (claims, write-backs, "
        "attempt log, rate budget, heartbeats, polling)"
    )
    detail.notes.append(
        "machine CPU busy: share of all cores in use (workers + PostgreSQL + sandbox) during the "
        "runs, from /proc/stat"
    )
    outcome.tables.append(detail)
    return outcome
