"""What the benchmarks enqueue, and the bare aiohttp loop that sends the same requests.

The standard workload cycles every workspace through update, status 310, update, status 100, in
passes over all workspaces (the order producers typically write). Updates never sit next to each
other within a workspace, so each change is exactly one request, and after a multiple of four
passes the sandbox is back at its initial status: runs can repeat against one sandbox.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import aiohttp
from databases import Row
from processes import TOKEN

INITIAL_STATUS = 100
ACTIVE_STATUS = 310
UPDATE = "workspace_update"
STATUS = "status_change"


def cycle_rows(workspaces: int, passes: int, tag: str = "bench") -> Iterator[Row]:
    """``passes`` (a multiple of 4) passes over workspaces 1..N: update, 310, update, 100."""
    if passes % 4:
        raise ValueError("passes must be a multiple of 4 so that statuses return to the start")
    for p in range(passes):
        for w in range(1, workspaces + 1):
            if p % 2 == 0:
                payload = {"title": f"{tag} {w} pass {p}", "due_date": "2026-12-01"}
                yield w, UPDATE, json.dumps(payload)
            else:
                key = ACTIVE_STATUS if p % 4 == 1 else INITIAL_STATUS
                yield w, STATUS, json.dumps({"to_status_key": key})


def one_change_rows(workspaces: int, tag: str = "bench") -> Iterator[Row]:
    """One change per workspace 1..N, alternating a ``workspace_update`` and a status change.

    Nothing coalesces and nothing waits for another change of its workspace: each change is one
    request, sent as soon as a slot is free. For servers that keep no state (the fast server).
    """
    for w in range(1, workspaces + 1):
        if w % 2:
            payload: dict[str, object] = {"title": f"{tag} {w}", "due_date": "2026-12-01"}
            yield w, UPDATE, json.dumps(payload)
        else:
            yield w, STATUS, json.dumps({"to_status_key": ACTIVE_STATUS})


Request = tuple[str, str, dict[str, object], dict[str, str] | None]


@dataclass(frozen=True)
class BareResult:
    """What the bare loop did: requests, wall seconds, CPU seconds, answers by status."""

    requests: int
    seconds: float
    cpu: float
    statuses: Counter[int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _bare(url: str, rows: Sequence[Row], concurrency: int, min_seconds: float) -> BareResult:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/json",
        "User-Agent": "kantata-sync-bench",
    }
    requests: list[Request] = []
    for workspace_id, kind, payload in rows:
        body = json.loads(payload)
        if kind == UPDATE:
            requests.append(("PUT", f"{url}/workspaces/{workspace_id}", {"workspace": body}, None))
        else:
            change = {"workspace_id": workspace_id, "to_status_key": body["to_status_key"]}
            requests.append(
                (
                    "POST",
                    f"{url}/workspace_status_changes",
                    {"workspace_status_change": change},
                    {"include": "workspace"},
                )
            )
    statuses: Counter[int] = Counter()

    async def client(session: aiohttp.ClientSession, iterator: Iterator[Request]) -> None:
        for method, target, body, params in iterator:
            async with session.request(
                method, target, json=body, params=params, headers=headers
            ) as response:
                await response.read()
                statuses[response.status] += 1

    cpu_started = time.process_time()
    started = time.perf_counter()
    rounds = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        while rounds == 0 or time.perf_counter() - started < min_seconds:
            iterator = iter(requests)
            await asyncio.gather(*(client(session, iterator) for _ in range(concurrency)))
            rounds += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return BareResult(len(requests) * rounds, seconds, cpu, statuses)


def bare_loop(
    url: str, rows: Sequence[Row], concurrency: int, min_seconds: float = 0
) -> BareResult:
    """Send one request per row, ``concurrency`` at a time, in row order; no database at all.

    The whole list is sent again until ``min_seconds`` have passed (at least once), so that
    the bare loop is measured over as long a stretch as the worker it is compared with.
    """
    # The worker's own event loop (uvloop where installed), so that the two compare like
    # with like.
    from worker.clitools import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_bare(url, rows, concurrency, min_seconds))
