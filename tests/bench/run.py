"""``make bench``: kantata-sync against the local sandbox; one summary table plus the details.

Usage: ``.venv/bin/python tests/bench/run.py [--quick] [--only NAME ...] [--repeats N]
[--check BASELINE]``. Progress goes to stderr; the tables go to stdout and, as markdown, to
``.bench/results.md``; the figures' numbers, with the machine, commit and date, to
``.bench/results.json``. With ``--check``, the ratio figures are compared with a baseline
(``make bench-check``, see ``gate.py``). Not part of ``make test``: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import coalescing
import fidelity
import freshness
import gate
import learning
import overhead
import queue_size
import scaleout
import scaleout_slow
from databases import postgres_available, scratch_dir
from processes import ROOT
from reporting import BenchError, Context, Finding, Outcome, Table, log, machine

MEASUREMENTS: dict[str, Callable[[Context], Outcome]] = {
    "overhead": overhead.measure,
    "fidelity": fidelity.measure,
    "queue": queue_size.measure,
    "coalescing": coalescing.measure,
    "scaleout": scaleout.measure,
    "scaleout_slow": scaleout_slow.measure,
    "learning": learning.measure,
    "freshness": freshness.measure,
}


def summary(findings: list[Finding]) -> Table:
    table = Table("kantata-sync benchmark summary", ["measurement", "figure", "target", "result"])
    for f in findings:
        result = "reported" if f.ok is None else ("pass" if f.ok else "MISS")
        table.add(f.measurement, f.figure, f.target, result)
    return table


def _commit() -> str:
    """The commit measured, and whether the working tree had changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke version (~2 min)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(MEASUREMENTS),
        help="run only this measurement (repeatable)",
    )
    parser.add_argument("--repeats", type=int, help="runs per figure (default 5, quick 1)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / ".bench" / "results.md", help="markdown results"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / ".bench" / "results.json",
        help="the figures' numbers as JSON",
    )
    parser.add_argument(
        "--check",
        type=Path,
        metavar="BASELINE",
        help="fail on a ratio figure more than 20%% below this baseline (gate.py)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    chosen = args.only or list(MEASUREMENTS)
    postgres = postgres_available()
    load_before = os.getloadavg()
    commit = _commit()
    started = time.monotonic()
    tables: list[Table] = []
    findings: list[Finding] = []
    failures: list[str] = []
    with scratch_dir() as tmp:
        ctx = Context(tmp=tmp, quick=args.quick, repeats=repeats, postgres=postgres)
        if not postgres:
            ctx.notes.append("PostgreSQL not reachable: its measurements were skipped")
        for name in chosen:
            log(f"{name}: starting")
            try:
                outcome = MEASUREMENTS[name](ctx)
            except BenchError as exc:
                log(f"{name}: FAILED: {exc}")
                failures.append(f"{name}: {exc}")
                findings.append(Finding(name, f"failed: {str(exc)[:120]}", "", False))
                continue
            tables.extend(outcome.tables)
            findings.extend(outcome.findings)
    elapsed = time.monotonic() - started
    info = machine()
    header = Table("Machine and run", ["", ""])
    for key, value in info.items():
        header.add(key, value)
    header.add("commit", commit)
    command = "tests/bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header.add("command", command)
    header.add("repeats", str(repeats))
    header.add("duration", f"{elapsed / 60:.1f} min")
    load_after = os.getloadavg()
    header.add(
        "load average (1, 5, 15 min)",
        f"at start {_load(load_before)}; at end {_load(load_after)}",
    )
    header.notes.extend(ctx.notes)
    head = summary(findings)
    print()
    for table in [head, *tables, header]:
        print(table.text())
        print()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    markdown = "\n\n".join(t.markdown() for t in [head, *tables, header])
    args.output.write_text(f"# kantata-sync benchmark results\n\n{markdown}\n", encoding="utf-8")
    log(f"results written to {args.output}")
    results = gate.results_document(findings, info, commit, repeats, command)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"figures written to {args.json}")
    if failures:
        return 1
    if args.check:
        return gate.check_file(args.check, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
