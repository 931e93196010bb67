"""Waiting on asyncio events: the first of several, or a timeout."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_any(*events: asyncio.Event, seconds: float | None = None) -> None:
    """Return once any of ``events`` is set, or after ``seconds`` (None: no limit)."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
