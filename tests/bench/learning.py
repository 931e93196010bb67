"""7. The learned rate limit (``KANTATA_SYNC_RATE_LIMIT=auto``) against limits it is not told.

The sandbox enforces a strict one-second window (``--rate-limit L``, no rate-limit headers, no
Retry-After); the worker runs with ``KANTATA_SYNC_RATE_LIMIT=auto`` (bounds 1..250/s, the
defaults) and must find L. Every workspace has one ``workspace_update``, so nothing coalesces
and each change is one PUT, and there are more than the run can send, so the queue never runs
dry. Times and answers come from the worker's attempt log (``sync_attempts``: ``attempted_at``
is taken just before the request leaves, ``http_status`` is the answer), cross-checked against
the sandbox's counters.

1. One worker on SQLite, limits 7, 37 and 180/s, from nothing learned, for ``RUN_SECONDS``
   (then SIGTERM): the accepted rate from ``STEADY_FROM`` s after its first request to the end,
   as a share of the limit, and the share of requests answered 429 in that stretch; the time
   until a one-second bucket (counted from the first request) first held 90% of the limit.
2. A second ``run`` on the same database right after (the learned state kept): its accepted
   rate over its first ``FIRST_SECONDS`` s as a share of the limit, and its 429s in them.
3. Four workers on PostgreSQL sharing one learned budget, limits 37 and 180/s: as 1, together.
4. The limit drops mid-run (``--rate-limit-schedule 0:37,40:12``, one worker, SQLite): seconds
   from the drop to the first of 5 one-second buckets in a row (counted from the drop, on the
   worker's send times) with at most 12 requests sent and no 429.

The worker logs at ``info`` here, so that its ``rate.learned`` lines (the learned ceiling, each
time it moves) can be shown; a success's ``http.attempt`` line is ``debug`` and stays out.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from databases import Database, Row, database
from processes import (
    ProcessResult,
    Sandbox,
    WorkerProcess,
    check_exits,
    sandbox,
    stop_workers,
    worker_env,
)
from reporting import BenchError, Context, Finding, Outcome, Table, fmt_pct, log, median
from workloads import UPDATE

LIMITS = (7, 37, 180)
SHARED_LIMITS = (37, 180)
SHARED_WORKERS = 4
RUN_SECONDS = 60.0
STEADY_FROM = 30.0
FIRST_SECONDS = 5.0
REACHED = 0.9
DROP_FROM, DROP_TO, DROP_AT = 37, 12, 40.0
AFTER_DROP = 25.0
"""Seconds the drop run goes on after the drop."""
CALM_SECONDS = 5
GAP_BETWEEN_RUNS = 2.0
RUNS = 3
"""Runs per configuration (at most; ``--repeats`` can ask for fewer)."""

TARGET_STEADY = 0.90
TARGET_STEADY_429 = 0.01
TARGET_RESTART = 0.85
TARGET_RESTART_429 = 3
TARGET_DROP = 10.0


def update_rows(workspaces: int) -> Iterator[Row]:
    """One ``workspace_update`` per workspace 1..N: one PUT each, nothing coalesces."""
    for w in range(1, workspaces + 1):
        payload = {"title": f"learning {w}", "due_date": "2026-12-01"}
        yield w, UPDATE, json.dumps(payload)


def learning_env(db: Database, sb: Sandbox, ctx: Context, name: str) -> dict[str, str]:
    env = worker_env(db.url, sb.url, concurrency=ctx.concurrency, name=name)
    env.update(KANTATA_SYNC_RATE_LIMIT="auto", KANTATA_SYNC_LOG_LEVEL="info")
    return env


def _epoch(value: Any) -> float:
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass(frozen=True)
class Attempt:
    id: int
    at: float
    """Epoch seconds, just before the request left."""
    status: int | None

    @property
    def accepted(self) -> bool:
        return self.status != 429


def attempts(db: Database, after_id: int = 0) -> list[Attempt]:
    rows = db.query(
        f"SELECT id, attempted_at, http_status FROM sync_attempts WHERE id > {after_id} ORDER BY id"
    )
    found = [Attempt(int(i), _epoch(a), None if s is None else int(s)) for i, a, s in rows]
    return sorted(found, key=lambda a: a.at)


def window(items: Sequence[Attempt], start: float, end: float) -> list[Attempt]:
    return [a for a in items if start <= a.at < end]


def buckets(items: Sequence[Attempt], start: float, count: int) -> list[tuple[int, int]]:
    """(sent, 429s) in each one-second bucket from ``start``."""
    out = [[0, 0] for _ in range(count)]
    for a in items:
        k = math.floor(a.at - start)
        if 0 <= k < count:
            out[k][0] += 1
            out[k][1] += 0 if a.accepted else 1
    return [(s, t) for s, t in out]


def learned_lines(result: ProcessResult) -> list[float]:
    """The learned ceilings a worker logged (``rate.learned``), in order."""
    values: list[float] = []
    for line in result.stderr.splitlines():
        if '"rate.learned"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("endpoint_class", "write") == "write":
            values.append(float(record.get("learned_per_s", 0)))
    return values


def _trail(values: Sequence[float], keep: int = 8) -> str:
    shown = [f"{v:g}" for v in values]
    if len(shown) > keep:
        shown = [*shown[: keep // 2], "…", *shown[-keep // 2 :]]
    return " → ".join(shown) if shown else "none"


def budget_row(db: Database) -> str:
    rows = db.query(
        "SELECT token_key, rate, good, bad, throttled FROM sync_rate_limits ORDER BY token_key"
    )
    parts = []
    for key, rate, good, bad, throttled in rows:
        cls = str(key).rsplit("/", 1)[-1] if "/" in str(key) else "all"
        bad_text = "none" if bad is None else f"{bad:.1f}"
        parts.append(f"{cls}: rate {rate:.1f}, good {good:.1f}, bad {bad_text}, 429s {throttled}")
    return "; ".join(parts) or "no row"


def _wait_first_request(sb: Sandbox, baseline: int = 0) -> None:
    deadline = time.monotonic() + 30
    while sb.stats()["total"] <= baseline:
        if time.monotonic() > deadline:
            raise BenchError("no request reached the sandbox within 30 s")
        time.sleep(0.02)


def _stop(procs: Sequence[WorkerProcess]) -> list[ProcessResult]:
    results = stop_workers(procs)
    check_exits(results)
    return results


@dataclass
class Steady:
    """What one run (one worker or several together) did against a fixed limit."""

    limit: int
    rate: float
    throttled: int
    sent: int
    reached_at: float | None
    learned: list[float] = field(default_factory=list)
    budget: str = ""
    restart_rate: float | None = None
    restart_429: int | None = None
    restart_learned: list[float] = field(default_factory=list)

    @property
    def share_429(self) -> float:
        return self.throttled / self.sent if self.sent else 0.0


def _steady(items: Sequence[Attempt], limit: int, run_seconds: float, steady_from: float) -> Steady:
    t0 = items[0].at
    span = window(items, t0 + steady_from, t0 + run_seconds)
    accepted = sum(1 for a in span if a.accepted)
    reached = None
    for k, (sent, throttled) in enumerate(buckets(items, t0, math.ceil(run_seconds))):
        if sent - throttled >= REACHED * limit:
            reached = k + 1.0
            break
    return Steady(
        limit=limit,
        rate=accepted / (run_seconds - steady_from),
        throttled=len(span) - accepted,
        sent=len(span),
        reached_at=reached,
    )


def _check_not_drained(db: Database, label: str) -> None:
    if db.state_counts().get("pending", 0) == 0:
        raise BenchError(f"{label}: the queue drained before the run ended")


def one_worker(ctx: Context, limit: int, run_seconds: float, steady_from: float) -> Steady:
    """Run 1 from nothing learned, then run 2 on the same database (figures 1 and 2)."""
    workspaces = int(limit * (run_seconds + FIRST_SECONDS + 30)) + 100
    with sandbox(workspaces, rate_limit=limit) as sb, database("sqlite", ctx.tmp) as db:
        db.seed(update_rows(workspaces))
        sb.reset_stats()
        proc = WorkerProcess(learning_env(db, sb, ctx, "bench-0"), ctx.tmp)
        try:
            _wait_first_request(sb)
            time.sleep(run_seconds + 0.5)
        finally:
            (first,) = _stop([proc])
        items = attempts(db)
        if not items:
            raise BenchError(f"limit {limit}: no attempts recorded")
        stats = sb.stats()
        if stats["total"] != len(items):
            log(f"learning: sandbox saw {stats['total']} requests, attempt log has {len(items)}")
        _check_not_drained(db, f"limit {limit}, run 1")
        run = _steady(items, limit, run_seconds, steady_from)
        run.learned = learned_lines(first)
        last_id = max(a.id for a in items)
        time.sleep(GAP_BETWEEN_RUNS)
        before = int(sb.stats()["total"])
        proc = WorkerProcess(learning_env(db, sb, ctx, "bench-0"), ctx.tmp)
        try:
            _wait_first_request(sb, baseline=before)
            time.sleep(FIRST_SECONDS + 1.5)
        finally:
            (second,) = _stop([proc])
        later = attempts(db, after_id=last_id)
        _check_not_drained(db, f"limit {limit}, run 2")
        if not later:
            raise BenchError(f"limit {limit}: the second run recorded no attempts")
        first5 = window(later, later[0].at, later[0].at + FIRST_SECONDS)
        accepted = sum(1 for a in first5 if a.accepted)
        run.restart_rate = accepted / FIRST_SECONDS
        run.restart_429 = len(first5) - accepted
        run.restart_learned = learned_lines(second)
        run.budget = budget_row(db)
    return run


def shared(ctx: Context, limit: int, run_seconds: float, steady_from: float) -> Steady:
    """Four workers on PostgreSQL, one learned budget (figure 3)."""
    workspaces = int(limit * (run_seconds + 30)) + 100
    with sandbox(workspaces, rate_limit=limit) as sb, database("postgresql", ctx.tmp) as db:
        db.seed(update_rows(workspaces))
        sb.reset_stats()
        procs = [
            WorkerProcess(learning_env(db, sb, ctx, f"bench-{i}"), ctx.tmp)
            for i in range(SHARED_WORKERS)
        ]
        try:
            _wait_first_request(sb)
            time.sleep(run_seconds + 0.5)
        finally:
            results = _stop(procs)
        items = attempts(db)
        if not items:
            raise BenchError(f"shared {limit}: no attempts recorded")
        _check_not_drained(db, f"shared {limit}")
        run = _steady(items, limit, run_seconds, steady_from)
        run.learned = [v for r in results for v in learned_lines(r)]
        run.budget = budget_row(db)
    return run


@dataclass
class Drop:
    recovery: float | None
    """Seconds from the drop to the first of ``CALM_SECONDS`` calm buckets; None: never."""
    before_rate: float
    """Accepted rate over the 10 s before the drop."""
    after_rate: float
    """Accepted rate from the drop + ``CALM_SECONDS`` * 2 to the end."""
    after_429: int
    """429s from the drop on."""
    per_second: str
    learned: list[float]
    budget: str


def limit_drop(ctx: Context, drop_at: float, after: float) -> Drop:
    """The limit falls from 37 to 12 at ``drop_at`` s of the sandbox's clock (figure 4)."""
    total = drop_at + after
    workspaces = int(DROP_FROM * (total + 30)) + 100
    schedule = f"0:{DROP_FROM},{drop_at:g}:{DROP_TO}"
    with (
        sandbox(workspaces, extra_args=["--rate-limit-schedule", schedule]) as sb,
        database("sqlite", ctx.tmp) as db,
    ):
        stats = sb.stats()
        drop_epoch = time.time() - float(stats["elapsed_seconds"]) + drop_at
        db.seed(update_rows(workspaces))
        proc = WorkerProcess(learning_env(db, sb, ctx, "bench-0"), ctx.tmp)
        try:
            _wait_first_request(sb)
            time.sleep(max(0.0, drop_epoch + after + 0.5 - time.time()))
        finally:
            (result,) = _stop([proc])
        items = attempts(db)
        _check_not_drained(db, "limit drop")
        budget = budget_row(db)
    if not items or items[0].at > drop_epoch - 10:
        raise BenchError("limit drop: the worker started too late before the drop")
    count = math.floor(after)
    per = buckets(items, drop_epoch, count)
    recovery = None
    for k in range(count - CALM_SECONDS + 1):
        if all(s <= DROP_TO and t == 0 for s, t in per[k : k + CALM_SECONDS]):
            recovery = float(k)
            break
    before = window(items, drop_epoch - 10, drop_epoch)
    settle = drop_epoch + 2 * CALM_SECONDS
    late = window(items, settle, drop_epoch + count)
    return Drop(
        recovery=recovery,
        before_rate=sum(1 for a in before if a.accepted) / 10,
        after_rate=sum(1 for a in late if a.accepted) / max(1e-9, count - 2 * CALM_SECONDS),
        after_429=sum(1 for a in window(items, drop_epoch, drop_epoch + count) if not a.accepted),
        per_second=" ".join(f"{s}" + (f"({t})" if t else "") for s, t in per),
        learned=learned_lines(result),
        budget=budget,
    )


def _reached(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def measure(ctx: Context) -> Outcome:
    quick = ctx.quick
    limits = (37,) if quick else LIMITS
    shared_limits = (37,) if quick else SHARED_LIMITS
    run_seconds, steady_from = (20.0, 10.0) if quick else (RUN_SECONDS, STEADY_FROM)
    drop_at, after = (15.0, 15.0) if quick else (DROP_AT, AFTER_DROP)
    repeats = min(ctx.repeats, RUNS)
    outcome = Outcome()
    detail = Table(
        f"Learned rate limit (auto), hidden strict limit, {run_seconds:.0f} s runs, "
        f"steady from {steady_from:.0f} s",
        [
            "config",
            "run",
            "accepted/s (steady)",
            "of limit",
            "429s / sent (steady)",
            "90% reached after",
            f"2nd run: first {FIRST_SECONDS:.0f} s",
            "2nd run 429s",
            "learned ceilings logged (run 1)",
            "stored at the end",
        ],
    )
    configs: list[tuple[str, int]] = [("1 worker, sqlite", limit) for limit in limits]
    if ctx.postgres:
        configs += [(f"{SHARED_WORKERS} workers, postgresql", limit) for limit in shared_limits]
    else:
        ctx.notes.append("learning: the shared-budget case needs PostgreSQL; skipped")
    for label, limit in configs:
        runs: list[Steady] = []
        for repeat in range(repeats):
            log(f"learning: {label}, limit {limit}/s, run {repeat + 1}/{repeats}")
            if label.startswith("1 worker"):
                run = one_worker(ctx, limit, run_seconds, steady_from)
            else:
                run = shared(ctx, limit, run_seconds, steady_from)
            runs.append(run)
            log(
                f"learning: {run.rate:.1f}/s = {fmt_pct(run.rate / limit)}, "
                f"{run.throttled} x 429 of {run.sent}, 90% after {_reached(run.reached_at)}"
            )
            detail.add(
                f"{label}, limit {limit}/s",
                repeat + 1,
                f"{run.rate:.1f}",
                fmt_pct(run.rate / limit),
                f"{run.throttled} / {run.sent} ({fmt_pct(run.share_429)})",
                _reached(run.reached_at),
                ""
                if run.restart_rate is None
                else f"{run.restart_rate:.1f}/s = {fmt_pct(run.restart_rate / limit)}",
                "" if run.restart_429 is None else run.restart_429,
                _trail(run.learned),
                run.budget,
            )
        rate = median(r.rate for r in runs)
        share = median(r.share_429 for r in runs)
        reached = [r.reached_at for r in runs if r.reached_at is not None]
        reached_text = (
            _reached(median(reached)) + ("" if len(reached) == len(runs) else " (some never)")
            if reached
            else "never"
        )
        of_runs = f"median of {repeats}" if repeats > 1 else "one run"
        key = "learning." + ("sqlite" if label.startswith("1") else "shared") + f".{limit}"
        outcome.findings.append(
            Finding(
                f"7. Learned limit, {label}, hidden {limit}/s: accepted rate from "
                f"{steady_from:.0f} s, 429 share",
                f"{rate:.1f}/s = {fmt_pct(rate / limit)}; {fmt_pct(share)} 429; 90% after "
                f"{reached_text} ({of_runs})",
                f">= {TARGET_STEADY:.0%}, <= {TARGET_STEADY_429:.0%} 429",
                rate >= TARGET_STEADY * limit and share <= TARGET_STEADY_429,
                key=key,
                values={"achieved_fraction": round(rate / limit, 4), "share_429": share},
            )
        )
        if runs[0].restart_rate is not None:
            restart = median(r.restart_rate or 0.0 for r in runs)
            restart_429 = median(float(r.restart_429 or 0) for r in runs)
            outcome.findings.append(
                Finding(
                    f"7. Learned limit, second run on the same database, hidden {limit}/s: "
                    f"first {FIRST_SECONDS:.0f} s",
                    f"{restart:.1f}/s = {fmt_pct(restart / limit)}; {restart_429:g} x 429 "
                    f"({of_runs})",
                    f">= {TARGET_RESTART:.0%}, <= {TARGET_RESTART_429} x 429",
                    restart >= TARGET_RESTART * limit and restart_429 <= TARGET_RESTART_429,
                    key=f"learning.restart.{limit}",
                    values={
                        "restart_fraction": round(restart / limit, 4),
                        "restart_429": restart_429,
                    },
                )
            )
    drop_table = Table(
        f"Learned rate limit: the hidden limit drops {DROP_FROM} → {DROP_TO}/s at "
        f"{drop_at:.0f} s (1 worker, sqlite)",
        [
            "run",
            "recovered after",
            f"accepted/s, 10 s before (of {DROP_FROM})",
            f"accepted/s from +{2 * CALM_SECONDS} s (of {DROP_TO})",
            "429s after the drop",
            "sent per second from the drop (429s)",
            "learned ceilings logged",
            "stored at the end",
        ],
    )
    drops: list[Drop] = []
    for repeat in range(repeats):
        log(f"learning: limit drop, run {repeat + 1}/{repeats}")
        drop = limit_drop(ctx, drop_at, after)
        drops.append(drop)
        log(f"learning: drop recovered after {_reached(drop.recovery)}")
        drop_table.add(
            repeat + 1,
            _reached(drop.recovery),
            f"{drop.before_rate:.1f} ({fmt_pct(drop.before_rate / DROP_FROM)})",
            f"{drop.after_rate:.1f} ({fmt_pct(drop.after_rate / DROP_TO)})",
            drop.after_429,
            drop.per_second,
            _trail(drop.learned),
            drop.budget,
        )
    recovered = [d.recovery for d in drops if d.recovery is not None]
    worst = None if len(recovered) < len(drops) else median(recovered)
    outcome.findings.append(
        Finding(
            f"7. Learned limit, drop {DROP_FROM} → {DROP_TO}/s mid-run: seconds until "
            f"{CALM_SECONDS} s in a row at <= {DROP_TO}/s and no 429",
            f"{_reached(worst)}; then {median(d.after_rate for d in drops):.1f}/s = "
            f"{fmt_pct(median(d.after_rate for d in drops) / DROP_TO)} of {DROP_TO}/s "
            f"({'median of ' + str(repeats) if repeats > 1 else 'one run'})",
            f"<= {TARGET_DROP:.0f} s",
            worst is not None and worst <= TARGET_DROP,
            key="learning.drop",
            values={"recovery_s": -1.0 if worst is None else worst},
        )
    )
    detail.notes.append(
        "from the worker's attempt log (send times, answers); 'steady' is from "
        f"{steady_from:.0f} s after the first request to {run_seconds:.0f} s; '90% reached' is "
        "the end of the first one-second bucket (from the first request) with that many "
        f"accepted; the second run starts {GAP_BETWEEN_RUNS:.0f} s after the first stops; "
        "'learned ceilings' are the worker's rate.learned lines (write class; for 4 workers, "
        "all workers' lines one after another)"
    )
    drop_table.notes.append(
        f"buckets of one second from the drop on the worker's send times; 'recovered' is the "
        f"start of the first {CALM_SECONDS} buckets in a row with <= {DROP_TO} sent and no 429"
    )
    outcome.tables.extend([detail, drop_table])
    return outcome
