"""1. Overhead: ``kantata-sync run`` against a bare aiohttp loop, both against the fast server.

The server is ``fastserver.py`` (raw asyncio, about 20 µs of CPU per request), not the sandbox:
the sandbox costs more per request than the worker and would flatter it. The workload is 8,000
workspaces with one change each (half updates, half status changes), concurrency 16, rate limit
off. The worker and the bare loop (concurrency 16, the same requests, once) run in pairs, back to
back, alternating which goes first; the figure is the median of the per-pair ratios.

The worker's rate is its changes divided by its run's own duration (``sync_runs.duration_s``,
claim to last write-back, without interpreter start-up; the bare loop has none either); the
table also shows the rate over the process's whole wall time. Its CPU per change is the child's
CPU (``wait4``, all threads), start-up included; the CPU of a run with nothing to do is shown
beside it. So is the worker's own CPU per change on its loop's thread with no HTTP at all
(``owncost.py``), and the ratio that leaves possible while that loop is CPU-bound:
bare / (bare + own).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from databases import Row, database
from fastserver import FastServer, fast_server
from processes import LIBRARIES, base_env, import_floor_cpu, run_worker, startup_cpu, worker_env
from reporting import BenchError, Context, Finding, Outcome, Table, fmt_pct, fmt_rate, log, median
from workloads import bare_loop, one_change_rows

TARGET_RATIO = 0.60
TARGET_CPU_US = 250.0
MIN_PAIRS = 3


def measure(ctx: Context) -> Outcome:
    workspaces = 2000 if ctx.quick else 8000
    pairs = ctx.repeats if ctx.quick else max(MIN_PAIRS, ctx.repeats)
    rows = list(one_change_rows(workspaces, tag="overhead"))
    n = len(rows)
    outcome = Outcome()
    detail = Table(
        f"Overhead against the fast server: worker vs bare aiohttp loop ({n:,} one-change "
        f"workspaces, concurrency {ctx.concurrency}, rate limit off)",
        [
            "backend",
            "pair",
            "worker changes/s (run)",
            "worker changes/s (wall)",
            "bare requests/s",
            "worker/bare",
            "worker CPU µs/change",
            "bare CPU µs/request",
            "server CPU µs/request (worker, bare)",
        ],
    )
    with fast_server() as fs:
        for backend in ctx.backends():
            with database(backend, ctx.tmp) as empty:
                fixed = startup_cpu(empty.url, fs.url, ctx.tmp)
            imports = import_floor_cpu(backend)
            ratios, worker_rates, wall_rates, bare_rates, worker_cpu, bare_cpu = (
                [],
                [],
                [],
                [],
                [],
                [],
            )
            for pair in range(pairs):
                log(f"overhead: {backend} pair {pair + 1}/{pairs}")
                order = ("worker", "bare") if pair % 2 == 0 else ("bare", "worker")
                server_cpu: dict[str, float] = {}
                for which in order:
                    before = fs.cpu_seconds()
                    fs.reset_stats()
                    if which == "worker":
                        rate, wall_rate, cpu = _worker(ctx, backend, fs, rows)
                    else:
                        bare = bare_loop(fs.url, rows, ctx.concurrency)
                        if bare.statuses.get(200, 0) != bare.requests or fs.total() != n:
                            raise BenchError(f"bare loop answers: {dict(bare.statuses)}")
                    server_cpu[which] = (fs.cpu_seconds() - before) / n * 1e6
                per_change = cpu / n * 1e6
                ratio = rate / bare.rate
                worker_rates.append(rate)
                wall_rates.append(wall_rate)
                bare_rates.append(bare.rate)
                ratios.append(ratio)
                worker_cpu.append(per_change)
                bare_cpu.append(bare.cpu / bare.requests * 1e6)
                detail.add(
                    backend,
                    pair + 1,
                    fmt_rate(rate),
                    fmt_rate(wall_rate),
                    fmt_rate(bare.rate),
                    fmt_pct(ratio),
                    f"{per_change:.0f}",
                    f"{bare_cpu[-1]:.0f}",
                    f"{server_cpu['worker']:.0f}, {server_cpu['bare']:.0f}",
                )
            own = median(own_cost(backend, ctx.tmp, rows) for _ in range(pairs))
            ratio, cpu_us = median(ratios), median(worker_cpu)
            ceiling = median(bare_cpu) / (median(bare_cpu) + own)
            floor_us = median(bare_cpu) + imports / n * 1e6
            detail.add(
                backend,
                "median",
                fmt_rate(median(worker_rates)),
                fmt_rate(median(wall_rates)),
                fmt_rate(median(bare_rates)),
                fmt_pct(ratio),
                f"{cpu_us:.0f}",
                f"{median(bare_cpu):.0f}",
                "",
            )
            detail.notes.append(
                f"{backend}: the worker's own CPU per change on its loop's thread, with no "
                f"HTTP at all (owncost.py, median of {pairs}), is {own:.0f} µs, against "
                f"{median(bare_cpu):.0f} µs for a bare request: a ratio of at most "
                f"{fmt_pct(ceiling)} while the loop is CPU-bound"
            )
            detail.notes.append(
                f"{backend}: a run with nothing to do costs {fixed:.2f} s of CPU "
                f"({fixed / n * 1e6:.0f} µs per change of this workload), included in the "
                "worker's CPU per change"
            )
            detail.notes.append(
                f"{backend}: the CPU per change no worker of this design can go below on this "
                f"machine is {floor_us:.0f} µs: a bare request ({median(bare_cpu):.0f} µs) plus "
                f"importing only `{LIBRARIES[backend].removeprefix('import ')}` "
                f"({imports:.2f} s, {imports / n * 1e6:.0f} µs per change)"
            )
            outcome.findings.append(
                Finding(
                    f"1. Overhead vs fast server, {backend}: worker / bare loop changes/s",
                    f"{fmt_pct(ratio)} ({fmt_rate(median(worker_rates))} vs "
                    f"{fmt_rate(median(bare_rates))})",
                    f">= {TARGET_RATIO:.0%}",
                    ratio >= TARGET_RATIO,
                    key=f"overhead.{backend}",
                    values={
                        "worker_bare_ratio": round(ratio, 4),
                        "worker_changes_per_s": round(median(worker_rates), 1),
                        "worker_wall_changes_per_s": round(median(wall_rates), 1),
                        "bare_requests_per_s": round(median(bare_rates), 1),
                        "worker_cpu_us_per_change": round(cpu_us, 1),
                        "bare_cpu_us_per_request": round(median(bare_cpu), 1),
                        "startup_cpu_s": round(fixed, 3),
                        "import_floor_cpu_s": round(imports, 3),
                        "cpu_floor_us_per_change": round(floor_us, 1),
                        "own_cpu_us_per_change": round(own, 1),
                        "ratio_ceiling": round(ceiling, 4),
                        "pairs": pairs,
                    },
                )
            )
            outcome.findings.append(
                Finding(
                    f"1. Overhead vs fast server, {backend}: worker CPU per change, start-up "
                    "included",
                    f"{cpu_us:.0f} µs (start-up {fixed / n * 1e6:.0f} µs of it; bare loop "
                    f"{median(bare_cpu):.0f} µs/request; floor {floor_us:.0f} µs)",
                    f"<= {TARGET_CPU_US:.0f} µs",
                    cpu_us <= TARGET_CPU_US,
                )
            )
    detail.notes.append(
        "worker/bare is the median of the per-pair ratios of the run rate; each pair runs back "
        "to back, alternating which goes first; the wall rate counts the process from exec to "
        "exit"
    )
    detail.notes.append(
        "KANTATA_SYNC_LOG_LEVEL=warning keeps the per-request log lines (and their I/O) out of "
        "the measurement"
    )
    outcome.tables.append(detail)
    return outcome


def _worker(
    ctx: Context, backend: str, fs: FastServer, rows: list[Row]
) -> tuple[float, float, float]:
    """One worker run over ``rows`` on a fresh database: run rate, wall rate, CPU seconds."""
    n = len(rows)
    with database(backend, ctx.tmp) as db:
        db.seed(rows)
        result = run_worker(worker_env(db.url, fs.url, concurrency=ctx.concurrency), ctx.tmp)
        counts = db.outcome_counts()
        runs = db.runs()
    if counts.get("succeeded/applied") != n:
        raise BenchError(
            f"worker run left {counts} (expected {n} succeeded/applied); runs {runs}; "
            f"exit {result.returncode}; stderr: {result.stderr[-1500:]!r}"
        )
    if fs.total() != n:
        raise BenchError(f"fast server saw {fs.total()} requests for {n} changes")
    duration = sum(r.duration_s or 0.0 for r in runs)
    return n / duration, n / result.wall, result.cpu


def own_cost(backend: str, tmp: Path, rows: Sequence[Row]) -> float:
    """The worker's own CPU µs per change on its loop's thread, no HTTP (``owncost.py`` in a
    child, on a fresh database)."""
    with database(backend, tmp) as db:
        db.seed(rows)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("owncost.py")), db.url],
            env=base_env(db.url),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        raise BenchError(f"owncost.py exited {done.returncode}: {done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["changes"] != len(rows):
        raise BenchError(f"owncost.py finished {figures['changes']} of {len(rows)} changes")
    return float(figures["main_cpu_s"]) / len(rows) * 1e6
