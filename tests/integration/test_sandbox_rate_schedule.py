"""The sandbox on a real socket: a rate limit that changes over time, and a separate read window."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp

from worker.sandbox import SandboxConfig
from worker.sandbox.ratelimit import RateSchedule
from worker.sandbox.testing import SandboxHandle

SandboxFactory = Callable[..., AbstractAsyncContextManager[SandboxHandle]]
AUTH = {"Authorization": "Bearer sandbox-token"}
RATE_HEADERS = ("retry-after", "ratelimit", "rate-limit", "x-ratelimit")


async def _stats(http: aiohttp.ClientSession, sb: SandboxHandle) -> dict[str, Any]:
    async with http.get(f"{sb.origin}/__sandbox__/stats") as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


async def _burst(
    http: aiohttp.ClientSession, sb: SandboxHandle, method: str, n: int
) -> list[tuple[int, list[str]]]:
    """``n`` concurrent requests; each answer's status and header names (lower case)."""

    async def one(i: int) -> tuple[int, list[str]]:
        url = f"{sb.url}/workspaces/{1 + i}"
        body = {"workspace": {"title": f"t{i}"}} if method == "PUT" else None
        async with http.request(method, url, json=body, headers=AUTH) as response:
            await response.read()
            return response.status, [name.lower() for name in response.headers]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _statuses(replies: list[tuple[int, list[str]]]) -> list[int]:
    return sorted(status for status, _ in replies)


async def test_the_limit_follows_its_schedule_and_reads_have_their_own_window(
    sandbox_factory: SandboxFactory,
) -> None:
    config = SandboxConfig(
        inspect=True,
        rate_limit_schedule=RateSchedule.parse("0:5,1:2"),
        read_rate_limit_schedule=RateSchedule.parse("0:3,1:1"),
    )
    async with sandbox_factory(config) as sb, aiohttp.ClientSession() as http:
        before = await _stats(http, sb)
        assert (before["rate_limit"], before["read_rate_limit"]) == (5, 3)

        # First second: 5 writes get through; the full main window does not stop reads,
        # which have 3 of their own.
        writes = await _burst(http, sb, "PUT", 8)
        reads = await _burst(http, sb, "GET", 6)
        first = await _stats(http, sb)
        assert first["elapsed_seconds"] < 1.0, "too slow to see the first step"
        assert _statuses(writes) == [200] * 5 + [429] * 3
        assert _statuses(reads) == [200] * 3 + [429] * 3
        assert first["rate_limited"] == first["total_429"] == 6
        assert first["max_accepted_per_second"] == 8  # both windows together

        # After the step at 1 s, once those requests have left their windows: 2 and 1.
        await asyncio.sleep(1.05)
        later = await _stats(http, sb)
        assert (later["rate_limit"], later["read_rate_limit"]) == (2, 1)
        writes_later = await _burst(http, sb, "PUT", 5)
        reads_later = await _burst(http, sb, "GET", 4)
        assert _statuses(writes_later) == [200] * 2 + [429] * 3
        assert _statuses(reads_later) == [200] + [429] * 3
        assert (await _stats(http, sb))["rate_limited"] == 6 + 3 + 3

        # Kantata sends no rate-limit headers and no Retry-After; neither does the sandbox.
        for _, names in writes + reads + writes_later + reads_later:
            assert not [name for name in names if name.startswith(RATE_HEADERS)]
