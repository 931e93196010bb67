"""The one place that assembles a worker from settings, for ``run`` and ``serve`` alike.

::

    async with open_store(settings) as store: ...          # any command that reads the outbox
    async with assemble(settings) as worker: ...           # a process that syncs

:func:`assemble` opens the store (its sessions named after the worker, with bounded lock
waits), the coordinator (registry and shared budget), the limiter, the Kantata client and the
dispatcher, and closes them in reverse order: the worker leaves the registry, the client's
connections close, the engine is disposed of.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from . import db as dbmod
from .budget import learning_limiter, shared_limiter
from .client import KantataClient
from .config import Settings
from .coordination import Coordinator
from .dispatcher import Dispatcher, default_worker_name
from .exceptions import NotMigratedError
from .learning import Bounds
from .metrics import Metrics
from .ratelimit import Limiter, RateLimiter
from .store import Store


def named(settings: Settings) -> Settings:
    """``settings`` with a worker name: the configured one, or a new unique one."""
    if settings.worker_name:
        return settings
    return settings.model_copy(update={"worker_name": default_worker_name()})


def make_limiter(settings: Settings, coordinator: Coordinator, *, reads: bool = False) -> Limiter:
    """The shared budget when a rate is set; no limiter at all when it is 0.

    A learned budget (``rate_limit = "auto"``) is kept per endpoint class: ``reads`` gets the
    budget of GETs, which Kantata limits apart. A fixed budget serves every request.
    """
    if settings.learns_rate:
        return learning_limiter(
            coordinator,
            settings.api_token(),
            Bounds(settings.rate_limit_min, settings.rate_limit_max),
            "read" if reads else "write",
            max_pause=settings.max_retry_after,
            db_retry_seconds=settings.db_retry_seconds,
        )
    if settings.rate_budget <= 0:
        return RateLimiter(0)
    return shared_limiter(
        coordinator,
        settings.api_token(),
        settings.rate_budget,
        max_pause=settings.max_retry_after,
        db_retry_seconds=settings.db_retry_seconds,
    )


def _require_sqlite_file(url: str) -> None:
    path = dbmod.sqlite_path(url)
    if path is not None and not os.path.exists(path):
        raise NotMigratedError(
            f"database file {path} does not exist: run `kantata-sync db upgrade` to create it"
        )


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, *, migrated: bool = True, worker: bool = False
) -> AsyncIterator[Store]:
    """The store on the configured database, disposed of on exit.

    ``migrated``: the schema must be this version's (else :class:`NotMigratedError`); a
    SQLite file that does not exist is then not created (only ``db upgrade`` creates it), so
    a mistyped path or a file deleted under a running worker leaves no empty database behind.
    ``worker``: the sessions of a process that syncs (named, with bounded lock waits).
    """
    if migrated:
        _require_sqlite_file(settings.database_url)
    engine = dbmod.create_engine(
        settings.database_url,
        application_name=(
            f"{dbmod.WORKER_APPLICATION_PREFIX}{settings.worker_name}" if worker else None
        ),
        worker=worker,
    )
    try:
        if migrated:
            await dbmod.check_schema(engine)
        else:
            await dbmod.ping(engine)
        yield Store(engine)
    finally:
        await engine.dispose()


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker's parts, assembled and open."""

    settings: Settings
    store: Store
    coordinator: Coordinator
    client: KantataClient
    dispatcher: Dispatcher
    metrics: Metrics


def dispatcher_for(
    settings: Settings, store: Store, client: KantataClient, metrics: Metrics
) -> Dispatcher:
    """The dispatcher of a syncing process: the registry and the shared budget on ``store``."""
    coordinator = Coordinator(store.engine)
    limiter = make_limiter(settings, coordinator)
    return Dispatcher(
        store,
        client,
        settings,
        limiter=limiter,
        read_limiter=make_limiter(settings, coordinator, reads=True)
        if settings.learns_rate
        else limiter,
        coordinator=coordinator,
        metrics=metrics,
    )


@contextlib.asynccontextmanager
async def assemble(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[Worker]:
    """Everything a syncing process needs, from ``settings`` (named by :func:`named`)."""
    settings = named(settings)
    token = settings.api_token()  # no token: a configuration error before anything opens
    metrics = metrics or Metrics()
    async with open_store(settings, worker=True) as store:
        coordinator = Coordinator(store.engine)
        async with KantataClient(
            settings.api_base_url,
            token,
            timeout=settings.request_timeout,
            max_connections=settings.concurrency * 2,
            max_body_bytes=settings.max_response_bytes,
        ) as client:
            dispatcher = dispatcher_for(settings, store, client, metrics)
            try:
                yield Worker(settings, store, coordinator, client, dispatcher, metrics)
            finally:
                await dispatcher.close()


async def refresh_queue_metrics(store: Store, metrics: Metrics) -> dict[str, int]:
    """Set the queue gauges from the outbox; return the counts per state."""
    counts = await store.counts()
    oldest = await store.oldest_pending()
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
    metrics.queue(counts, age)
    return counts
