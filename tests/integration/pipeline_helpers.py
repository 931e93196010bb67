"""Building a real pipeline (store + client + dispatcher) against an in-process sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from worker.changes import Kind, NewChange
from worker.client import KantataClient
from worker.config import Settings
from worker.dispatcher import Dispatcher
from worker.metrics import Metrics
from worker.models import sync_changes
from worker.ratelimit import RateLimiter
from worker.sandbox.testing import SandboxHandle
from worker.store import Store

TOKEN = "sandbox-token"


def fast_settings(sandbox: SandboxHandle, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_base_url": sandbox.url,
        "token": TOKEN,
        "rate_limit": 0.0001,
        "concurrency": 8,
        "max_attempts": 8,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        "request_timeout": 2.0,
        "lease_seconds": 30.0,
        "grace_period": 2.0,
        "batch_size": 200,
        "breaker_threshold": 10,
        "breaker_cooldown": 0.1,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@contextlib.asynccontextmanager
async def dispatcher_for(
    store: Store, sandbox: SandboxHandle, *, rate_limit: float = 0, seed: int = 7, **overrides: Any
) -> AsyncIterator[Dispatcher]:
    settings = fast_settings(sandbox, **overrides)
    async with KantataClient(
        settings.api_base_url, settings.api_token(), timeout=settings.request_timeout
    ) as client:
        yield Dispatcher(
            store,
            client,
            settings,
            limiter=RateLimiter(rate_limit),
            metrics=Metrics(),
            rng=random.Random(seed),
        )


def update(workspace_id: int, ref: str | None = None, **fields: Any) -> NewChange:
    return NewChange(workspace_id, Kind.WORKSPACE_UPDATE, fields, ref)


def status(workspace_id: int, key: int, ref: str | None = None) -> NewChange:
    return NewChange(workspace_id, Kind.STATUS_CHANGE, {"to_status_key": key}, ref)


async def insert_raw(store: Store, workspace_id: object, kind: object, payload: object) -> int:
    """Insert a row with plain SQL, as a producer would, bypassing all validation."""
    async with store.engine.begin() as conn:
        result = await conn.execute(
            sa.text(
                "INSERT INTO sync_changes (workspace_id, kind, payload) "
                "VALUES (:w, :k, :p) RETURNING id"
            ),
            {"w": workspace_id, "k": kind, "p": payload},
        )
        return int(result.scalar_one())


async def all_rows(store: Store) -> dict[int, dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.select(sync_changes).order_by(sync_changes.c.id))
        rows = {row.id: dict(row._mapping) for row in result}
    for row in rows.values():
        if isinstance(row.get("result"), str):
            row["result"] = json.loads(row["result"])
    return rows


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 30.0) -> None:
    """Return once ``check()`` holds (it may be a coroutine); fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        outcome = check()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")
