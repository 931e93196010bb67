"""Throughput of the sandbox: concurrent PUTs and POSTs from a bare aiohttp client.

Run as ``.venv/bin/python tests/bench/sandbox_throughput.py [--seconds S] [--concurrency C]``.
It starts ``python -m worker.sandbox --port 0`` (faults and rate limit off) as a subprocess,
measures five times and prints the median requests/s with the min and max. ``measure`` and
``measure_async`` can be imported by a benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sandbox-token"
WORKSPACES = 200
STATUS_KEYS = (100, 310)
REPETITIONS = 5


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    workspace_ids: list[int],
    deadline: float,
    counts: list[int],
) -> None:
    put_body = json.dumps({"workspace": {"title": "Benchmark", "due_date": "2026-12-01"}}).encode()
    current = dict.fromkeys(workspace_ids, STATUS_KEYS[0])
    n = 0
    while time.monotonic() < deadline:
        workspace_id = workspace_ids[n % len(workspace_ids)]
        if n % 2:
            target = STATUS_KEYS[1] if current[workspace_id] == STATUS_KEYS[0] else STATUS_KEYS[0]
            body = json.dumps(
                {"workspace_status_change": {"workspace_id": workspace_id, "to_status_key": target}}
            ).encode()
            async with session.post(f"{url}/workspace_status_changes", data=body) as response:
                await response.read()
                if response.status == 200:
                    current[workspace_id] = target
        else:
            async with session.put(f"{url}/workspaces/{workspace_id}", data=put_body) as response:
                await response.read()
        counts[0] += 1
        n += 1


async def measure_async(
    url: str, seconds: float, concurrency: int, *, token: str = TOKEN, workspaces: int = WORKSPACES
) -> float:
    """Requests per second that ``concurrency`` clients get from ``url`` over ``seconds``.

    Each client owns its own workspaces, so its status changes always alternate cleanly.
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        counts = [0]
        started = time.monotonic()
        deadline = started + seconds
        ids = [
            [n for n in range(1, workspaces + 1) if n % concurrency == k] or [k + 1]
            for k in range(concurrency)
        ]
        await asyncio.gather(
            *(_client(session, url, ids[k], deadline, counts) for k in range(concurrency))
        )
        return counts[0] / (time.monotonic() - started)


def measure(url: str, seconds: float, concurrency: int) -> float:
    """Synchronous ``measure_async`` with the default token (runs its own event loop)."""
    return asyncio.run(measure_async(url, seconds, concurrency))


@contextmanager
def sandbox_process(*extra: str) -> Iterator[str]:
    """Run ``python -m worker.sandbox --port 0`` and yield its API base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.sandbox", "--port", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("sandbox exited before announcing its URL")
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=REPETITIONS)
    args = parser.parse_args()
    with sandbox_process() as url:
        measure(url, 0.5, args.concurrency)
        rates = [measure(url, args.seconds, args.concurrency) for _ in range(args.repetitions)]
    print(
        f"sandbox throughput: median {statistics.median(rates):,.0f} requests/s "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}; {args.repetitions} x {args.seconds:g} s, "
        f"concurrency {args.concurrency})"
    )


if __name__ == "__main__":
    main()
