"""1. Overhead: ``kantata-sync run`` against a bare aiohttp loop, rate limit off.

Both send the same requests (one per change: PUTs and status-change POSTs) to the same sandbox
at the same concurrency, alternately, in the same run. The worker's rate is the changes of its
run divided by the run's own duration (``sync_runs.duration_s``: claim to last write-back,
without interpreter start-up); its CPU per change is the child's CPU time (``wait4``) less that
of a run with nothing to do.
"""

from __future__ import annotations

from databases import Row, database
from processes import Sandbox, run_worker, sandbox, startup_cpu, worker_env
from reporting import BenchError, Context, Finding, Outcome, Table, fmt_pct, fmt_rate, log, median
from workloads import bare_loop, cycle_rows

TARGET = 0.50


def measure(ctx: Context) -> Outcome:
    workspaces, passes = (500, 4) if ctx.quick else (3000, 4)
    rows = list(cycle_rows(workspaces, passes, tag="overhead"))
    n = len(rows)
    outcome = Outcome()
    detail = Table(
        f"Overhead: worker vs bare aiohttp loop ({n:,} changes, concurrency {ctx.concurrency}, "
        "rate limit off)",
        [
            "backend",
            "run",
            "worker changes/s",
            "bare requests/s",
            "worker/bare",
            "worker CPU ms/change",
            "bare CPU ms/request",
            "sandbox CPU ms/request (worker, bare)",
        ],
    )
    with sandbox(workspaces) as sb:
        for backend in ctx.backends():
            with database(backend, ctx.tmp) as empty:
                fixed = startup_cpu(empty.url, sb.url, ctx.tmp)
            last_seconds = 3.0
            ratios, worker_rates, bare_rates, worker_cpu, bare_cpu = [], [], [], [], []
            for repeat in range(ctx.repeats):
                log(f"overhead: {backend} run {repeat + 1}/{ctx.repeats}")
                order = ("worker", "bare") if repeat % 2 == 0 else ("bare", "worker")
                sandbox_cpu: dict[str, float] = {}
                for which in order:
                    before = sb.cpu_seconds()
                    if which == "worker":
                        rate, cpu = _worker(ctx, backend, sb, rows)
                        last_seconds = n / rate
                    else:
                        sb.reset_stats()
                        bare = bare_loop(sb.url, rows, ctx.concurrency, last_seconds)
                        if bare.statuses.get(200, 0) != bare.requests:
                            raise BenchError(f"bare loop answers: {dict(bare.statuses)}")
                    sent = n if which == "worker" else bare.requests
                    sandbox_cpu[which] = (sb.cpu_seconds() - before) / sent * 1000
                per_change = (cpu - fixed) / n * 1000
                worker_rates.append(rate)
                bare_rates.append(bare.rate)
                ratios.append(rate / bare.rate)
                worker_cpu.append(per_change)
                bare_cpu.append(bare.cpu / bare.requests * 1000)
                detail.add(
                    backend,
                    repeat + 1,
                    fmt_rate(rate),
                    fmt_rate(bare.rate),
                    fmt_pct(rate / bare.rate),
                    f"{per_change:.3f}",
                    f"{bare.cpu / bare.requests * 1000:.3f}",
                    f"{sandbox_cpu['worker']:.3f}, {sandbox_cpu['bare']:.3f}",
                )
            ratio = median(ratios)
            detail.add(
                backend,
                "median",
                fmt_rate(median(worker_rates)),
                fmt_rate(median(bare_rates)),
                fmt_pct(ratio),
                f"{median(worker_cpu):.3f}",
                f"{median(bare_cpu):.3f}",
                "",
            )
            outcome.findings.append(
                Finding(
                    f"1. Overhead, {backend}: worker / bare loop",
                    f"{fmt_pct(ratio)} ({fmt_rate(median(worker_rates))} vs "
                    f"{fmt_rate(median(bare_rates))}); CPU {median(worker_cpu):.2f} vs "
                    f"{median(bare_cpu):.2f} ms",
                    f">= {TARGET:.0%}",
                    ratio >= TARGET,
                )
            )
            detail.notes.append(
                f"{backend}: start-up CPU of an empty run ({fixed:.2f} s) is subtracted from the "
                "worker's CPU"
            )
    detail.notes.append(
        "worker/bare is the median of the per-pair ratios; each pair runs back to back, "
        "alternating which goes first"
    )
    detail.notes.append(
        "KANTATA_SYNC_LOG_LEVEL=warning keeps the per-request log lines (and their I/O) out of "
        "the measurement"
    )
    outcome.tables.append(detail)
    return outcome


def _worker(ctx: Context, backend: str, sb: Sandbox, rows: list[Row]) -> tuple[float, float]:
    """One worker run over ``rows`` on a fresh database: changes/s and CPU seconds."""
    with database(backend, ctx.tmp) as db:
        db.seed(rows)
        sb.reset_stats()
        result = run_worker(worker_env(db.url, sb.url, concurrency=ctx.concurrency), ctx.tmp)
        counts = db.outcome_counts()
        runs = db.runs()
    n = len(rows)
    if counts.get("succeeded/applied") != n:
        raise BenchError(
            f"worker run left {counts} (expected {n} succeeded/applied); runs {runs}; "
            f"exit {result.returncode}; stderr: {result.stderr[-1500:]!r}"
        )
    stats = sb.stats()
    if stats["total"] != n:
        raise BenchError(f"sandbox saw {stats['total']} requests for {n} changes: {stats}")
    duration = sum(r.duration_s or 0.0 for r in runs)
    return n / duration, result.cpu
