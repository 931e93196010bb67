"""The benchmarks' regression gate: ``.bench/results.json`` and the comparison with a baseline.

A results document is ``{"machine": {...}, "commit", "date", "command", "repeats", "figures":
{key: {name: value}}}``, written by every ``run.py``. Only figures whose name ends in ``ratio``
are gated (worker / bare loop, 4 workers / 1, achieved / budget): they compare two things
measured side by side on the same machine, so they travel between machines and runs far better
than absolute rates. A ratio fails when it is more than ``TOLERANCE`` (20%) below the baseline's,
or its own tolerance in ``TOLERANCES``.

``make bench-check`` runs the gated measurements and compares them with
``docs/bench-baseline.json``. A baseline is the median of several results documents::

    .venv/bin/python tests/bench/gate.py baseline .bench/r1.json .bench/r2.json .bench/r3.json \\
        > docs/bench-baseline.json
    .venv/bin/python tests/bench/gate.py check docs/bench-baseline.json .bench/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TOLERANCE = 0.20
TOLERANCES = {"scaleout_slow.shared_budget.achieved_ratio": 0.10}
"""Tighter per figure: the achieved share of a budget sits near 98% when all is well, and the
limiter's old block scheme gave 80%, which 20% would let through."""

Figures = Mapping[str, Mapping[str, float]]


def is_gated(name: str) -> bool:
    return name.endswith("ratio")


def results_document(
    findings: Iterable[Any], machine: Mapping[str, str], commit: str, repeats: int, command: str
) -> dict[str, Any]:
    """What ``run.py`` writes to ``.bench/results.json``: every keyed finding's values."""
    figures: dict[str, dict[str, float]] = {}
    for finding in findings:
        if finding.key and finding.values:
            figures[finding.key] = dict(finding.values)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "machine": dict(machine),
        "command": command,
        "repeats": repeats,
        "figures": figures,
    }


def compare(
    baseline: Figures,
    current: Figures,
    tolerance: float = TOLERANCE,
    tolerances: Mapping[str, float] | None = None,
) -> list[str]:
    """One message per gated figure of ``baseline`` that dropped more than its tolerance:
    ``tolerances["key.name"]`` where given, else ``tolerance``.

    A gated figure the baseline has and the current run lacks is a failure too (a measurement
    that stopped producing it, or failed); figures only the current run has are ignored.
    """
    problems: list[str] = []
    for key, values in sorted(baseline.items()):
        for name, expected in sorted(values.items()):
            if not is_gated(name):
                continue
            allowed = (tolerances or {}).get(f"{key}.{name}", tolerance)
            got = current.get(key, {}).get(name)
            if got is None:
                problems.append(f"{key}.{name}: missing from this run (baseline {expected:.3f})")
                continue
            floor = expected * (1 - allowed)
            if got < floor:
                drop = 1 - got / expected if expected else 0.0
                problems.append(
                    f"{key}.{name}: {got:.3f}, {drop:.0%} below the baseline's {expected:.3f} "
                    f"(allowed: {allowed:.0%}, floor {floor:.3f})"
                )
    return problems


def median_figures(documents: Sequence[Figures]) -> dict[str, dict[str, float]]:
    """Per key and name, the median over the documents that have it."""
    merged: dict[str, dict[str, list[float]]] = {}
    for figures in documents:
        for key, values in figures.items():
            for name, value in values.items():
                merged.setdefault(key, {}).setdefault(name, []).append(float(value))
    return {
        key: {name: round(statistics.median(vs), 4) for name, vs in sorted(names.items())}
        for key, names in sorted(merged.items())
    }


def baseline_document(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = documents[0]
    return {
        "note": (
            f"per figure, the median of {len(documents)} runs of tests/bench/run.py; "
            "regenerate with tests/bench/gate.py baseline (docs/PERFORMANCE.md)"
        ),
        "dates": [d.get("date") for d in documents],
        "commits": sorted({str(d.get("commit")) for d in documents}),
        "machine": first.get("machine", {}),
        "command": first.get("command", ""),
        "tolerance": TOLERANCE,
        "tolerances": dict(TOLERANCES),
        "figures": median_figures([d["figures"] for d in documents]),
    }


def check(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> int:
    """Print the verdict; 0 when every gated figure holds, 1 otherwise."""
    tolerance = float(baseline.get("tolerance", TOLERANCE))
    tolerances = {str(k): float(v) for k, v in baseline.get("tolerances", {}).items()}
    problems = compare(baseline["figures"], current["figures"], tolerance, tolerances)
    gated = [
        f"{key}.{name}"
        for key, values in sorted(baseline["figures"].items())
        for name in sorted(values)
        if is_gated(name)
    ]
    print()
    print(f"bench-check against the baseline of {', '.join(baseline.get('commits', []))}:")
    for figure in gated:
        key, name = figure.rsplit(".", 1)
        got = current["figures"].get(key, {}).get(name)
        want = baseline["figures"][key][name]
        shown = "missing" if got is None else f"{got:.3f}"
        print(f"  {figure}: {shown} (baseline {want:.3f})")
    if problems:
        print(f"bench-check FAILED: {len(problems)} ratio figure(s) dropped more than allowed:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("bench-check passed: no ratio figure further below the baseline than allowed")
    return 0


def check_file(baseline_path: Path, current: Mapping[str, Any]) -> int:
    if not baseline_path.exists():
        print(f"bench-check: no baseline at {baseline_path} (see tests/bench/gate.py)")
        return 2
    baseline = json.loads(baseline_path.read_text(encoding="utf-8"))
    return check(baseline, current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("baseline", help="print the median of results documents as a baseline")
    make.add_argument("results", nargs="+", type=Path)
    cmp = sub.add_parser("check", help="compare a results document with a baseline")
    cmp.add_argument("baseline", type=Path)
    cmp.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "baseline":
        documents = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
        print(json.dumps(baseline_document(documents), indent=2))
        return 0
    current = json.loads(args.results.read_text(encoding="utf-8"))
    return check_file(args.baseline, current)


if __name__ == "__main__":
    sys.exit(main())
