"""Reporting for the benchmarks: the median and formatting helpers, progress on stderr, the
``Table`` and ``Finding`` that make up the output, a measurement's ``Context`` and ``Outcome``,
and the machine's description and CPU use (``machine``, ``MachineCpu``), read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


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
    key: str = ""
    """A stable name for ``.bench/results.json`` (``overhead.sqlite``); empty: not stored."""
    values: dict[str, float] = field(default_factory=dict)
    """The figure's numbers for ``.bench/results.json``; names ending in ``ratio`` are gated by
    ``make bench-check`` (higher is better)."""


# --- the machine and the measurement -----------------------------------------------------


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
