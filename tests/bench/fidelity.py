"""2. Rate-limit fidelity: a 200 requests/s budget against a sandbox enforcing the same limit.

The sandbox answers 429 to any request that would put more than the budget in one second. The
achieved rate is counted on the sandbox's side (accepted requests between two reads of its
statistics), over a 30 s window that starts 2 s after the first request; three runs each, on a
fresh sandbox and database, and the median is the figure. Then the same with 4 workers on
PostgreSQL sharing the budget: through the database (``sync_rate_limits``) when the
worker uses it, otherwise with a stand-in of budget/4 configured per worker.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from databases import Database, database
from processes import (
    Sandbox,
    WorkerProcess,
    check_exits,
    run_worker,
    sandbox,
    stop_workers,
    worker_env,
)
from reporting import BenchError, Context, Finding, Outcome, Table, fmt_pct, log, median
from workloads import cycle_rows

BUDGET = 200
TARGET = 0.97
WARMUP = 2.0
WORKSPACES = 2000
RUNS = 3
"""Runs per configuration (at most; ``--repeats`` can ask for fewer)."""


def _accepted(stats: dict[str, object]) -> int:
    total, throttled = stats["total"], stats["total_429"]
    assert isinstance(total, int) and isinstance(throttled, int)
    return total - throttled


def shared_budget_in_use(db: Database, sb: Sandbox, ctx: Context) -> bool:
    """Whether workers share one budget through the database: a short probe run tells."""
    if not db.has_table("sync_rate_limits"):
        return False
    db.seed((w, "workspace_update", '{"title": "probe"}') for w in range(1, 6))
    run_worker(worker_env(db.url, sb.url, rate_limit=BUDGET), ctx.tmp)
    return int(db.query("SELECT count(*) FROM sync_rate_limits")[0][0]) > 0


def measure(ctx: Context) -> Outcome:
    seconds = 6.0 if ctx.quick else 30.0
    windows = 2 if ctx.quick else 3
    repeats = min(ctx.repeats, RUNS)
    outcome = Outcome()
    detail = Table(
        f"Rate-limit fidelity: budget {BUDGET}/s, sandbox strict at {BUDGET}/s, "
        f"{seconds:.0f} s window",
        [
            "config",
            "run",
            "accepted",
            "seconds",
            "achieved/s",
            "of budget",
            f"slowest {seconds / windows:.0f} s",
            "429s (whole run)",
            "busiest second (accepted, received)",
        ],
    )
    configs = [("sqlite", 1)] + ([("postgresql", 4)] if ctx.postgres else [])
    for backend, workers in configs:
        rates: list[float] = []
        throttled: list[int] = []
        label = ""
        for repeat in range(repeats):
            label, run = _one_run(ctx, backend, workers, seconds, windows, detail)
            log(f"fidelity: {label}, run {repeat + 1}/{repeats}: {run.rate:.1f}/s")
            rates.append(run.rate)
            throttled.append(run.throttled)
            detail.add(label, repeat + 1, *run.cells(BUDGET), run.busiest)
        rate = median(rates)
        detail.add(label, "median", "", "", f"{rate:.1f}", fmt_pct(rate / BUDGET), "", "", "")
        runs_with_429 = sum(1 for n in throttled if n)
        outcome.findings.append(
            Finding(
                f"2. Rate-limit fidelity, {label}",
                f"{rate:.1f}/s = {fmt_pct(rate / BUDGET)} of {BUDGET}/s over {seconds:.0f} s "
                f"(median of {repeats}); 429s in {runs_with_429} of {repeats} runs "
                f"({sum(throttled)} in all)",
                f">= {TARGET:.0%}, 0 x 429",
                rate >= TARGET * BUDGET and not any(throttled),
            )
        )
    detail.notes.append(
        "accepted = requests the sandbox did not answer 429, read from its statistics, from "
        f"{WARMUP:g} s after the first request; 'slowest' is the lowest rate of the "
        f"{windows} equal parts of the window; 'busiest second' is the sandbox's maximum over "
        "every one-second window of the run"
    )
    outcome.tables.append(detail)
    return outcome


@dataclass(frozen=True)
class FidelityRun:
    accepted: int
    seconds: float
    slowest: float
    throttled: int
    busiest: str

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    def cells(self, budget: float) -> list[object]:
        """The detail table's columns from "accepted" to "429s"."""
        return [
            self.accepted,
            f"{self.seconds:.2f}",
            f"{self.rate:.1f}",
            fmt_pct(self.rate / budget),
            fmt_pct(self.slowest / budget),
            self.throttled,
        ]


def _one_run(
    ctx: Context,
    backend: str,
    workers: int,
    seconds: float,
    windows: int,
    detail: Table,
    *,
    latency_ms: float = 0,
) -> tuple[str, FidelityRun]:
    """One run on a fresh sandbox and database: the workers' label and what the sandbox saw."""
    label = f"{workers} worker{'s' if workers > 1 else ''}, {backend}"
    passes = 4 * max(1, round(BUDGET * (seconds + WARMUP + 10) / WORKSPACES / 4 + 0.5))
    with (
        sandbox(WORKSPACES, rate_limit=BUDGET, latency_ms=latency_ms) as sb,
        database(backend, ctx.tmp) as db,
    ):
        per_worker: float = BUDGET
        if workers > 1:
            if shared_budget_in_use(db, sb, ctx):
                label += ", shared budget"
            else:
                per_worker = BUDGET / workers
                label += f", stand-in {per_worker:g}/s each"
                note = (
                    f"{label}: the worker does not share the budget through the database "
                    f"(no sync_rate_limits row after a probe run), so each worker was "
                    f"configured with {per_worker:g}/s"
                )
                if note not in detail.notes:
                    detail.notes.append(note)
        db.seed(cycle_rows(WORKSPACES, passes, tag="fidelity"))
        sb.reset_stats()
        procs = [
            WorkerProcess(
                worker_env(
                    db.url,
                    sb.url,
                    rate_limit=per_worker,
                    concurrency=ctx.concurrency,
                    name=f"bench-{i}",
                ),
                ctx.tmp,
            )
            for i in range(workers)
        ]
        try:
            deadline = time.monotonic() + 30
            while sb.stats()["total"] == 0:
                if time.monotonic() > deadline:
                    raise BenchError("no request reached the sandbox within 30 s")
                time.sleep(0.05)
            time.sleep(WARMUP)
            marks = [(time.monotonic(), _accepted(sb.stats()))]
            for k in range(1, windows + 1):
                time.sleep(max(0.0, marks[0][0] + seconds * k / windows - time.monotonic()))
                marks.append((time.monotonic(), _accepted(sb.stats())))
        finally:
            results = stop_workers(procs)
        check_exits(results)
        stats = sb.stats()
        remaining = db.state_counts().get("pending", 0)
    if remaining == 0:
        raise BenchError(f"{label}: the queue drained before the window ended")
    slowest = min((a1 - a0) / (t1 - t0) for (t0, a0), (t1, a1) in itertools.pairwise(marks))
    (t0, a0), (t1, a1) = marks[0], marks[-1]
    return label, FidelityRun(
        accepted=a1 - a0,
        seconds=t1 - t0,
        slowest=slowest,
        throttled=int(stats["total_429"]),
        busiest=f"{stats['max_accepted_per_second']}, {stats['max_received_per_second']}",
    )
