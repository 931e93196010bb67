"""Read Kantata back and compare it with the desired state: the I/O half of ``verify``.

The workspaces with a succeeded change stream from the outbox in chunks of up to 200
(:class:`~worker.outbox_reads.OutboxReader`); each chunk's desired state is folded
(:mod:`worker.desired`), read back with one ``GET /workspaces?only=…`` (more only if Kantata
pages the answer), and compared (:mod:`worker.drift`). Every read waits for the shared rate
budget, as the writes do. A 429, a 5xx, a timeout or a dropped connection is retried with the
writes' backoff (honouring ``Retry-After``) up to ``max_attempts``; then the chunk's workspaces
are *unreadable*, which is never reported as drift. A 401 ends the verification
(:class:`~worker.exceptions.TokenRejected`). A few chunks are read at once; memory stays that of
a few chunks, however many workspaces there are.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .changes import JSONObject
from .client import KantataClient
from .config import Settings
from .desired import DesiredState, fold_all
from .drift import Drift, Finding, compare, repair_changes
from .endpoints import MAX_PER_PAGE
from .envelopes import WorkspacePage, workspace_page
from .exceptions import InputError, ProtocolError, TokenRejected, TransportError
from .logging import get_logger
from .outbox_reads import OutboxReader
from .outcomes import ApiResponse, Verdict, backoff_delay, classify, shared_pause
from .ratelimit import Limiter
from .store import Store
from .validation import validate_payload

PARALLEL_READS = 2
"""Chunks read at once: enough to keep the budget busy while the next chunk is folded."""


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """Which workspaces to verify."""

    workspaces: tuple[int, ...] = ()
    since: datetime | None = None
    limit: int | None = None
    chunk: int = MAX_PER_PAGE


@dataclass(slots=True)
class VerifyStats:
    """What a verification did and found."""

    workspaces: int = 0
    read_requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    checked_fields: int = 0
    unverified_fields: int = 0
    settling_fields: int = 0
    drifted_fields: int = 0
    drifted_workspaces: set[int] = field(default_factory=set)
    missing: int = 0
    unreadable: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "workspaces": self.workspaces,
            "read_requests": self.read_requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "checked_fields": self.checked_fields,
            "unverified_fields": self.unverified_fields,
            "settling_fields": self.settling_fields,
            "drifted_fields": self.drifted_fields,
            "drifted_workspaces": len(self.drifted_workspaces),
            "missing": self.missing,
            "unreadable": self.unreadable,
        }


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What one chunk's read found: the workspaces returned, or why it could not be read."""

    workspaces: dict[int, dict[str, object]]
    custom_values: dict[int, dict[int, dict[str, object]]]
    with_custom_fields: bool
    unreadable: str | None = None


class WorkspaceReader:
    """Bulk reads under the shared budget, with the writes' retries and backoff."""

    def __init__(
        self,
        client: KantataClient,
        limiter: Limiter,
        settings: Settings,
        stats: VerifyStats,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.settings = settings
        self.stats = stats
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.log = get_logger()

    async def read(self, ids: Sequence[int], *, custom_fields: bool) -> ReadBack:
        """Every page of ``GET /workspaces?only=ids``; unreadable if any page stays failed."""
        found: dict[int, dict[str, object]] = {}
        values: dict[int, dict[int, dict[str, object]]] = {}
        page_number, pages = 1, 1
        while page_number <= pages and page_number <= len(ids):
            page = await self._page(ids, custom_fields, page_number)
            if isinstance(page, str):
                return ReadBack(found, values, custom_fields, unreadable=page)
            found.update(page.workspaces)
            values.update(page.custom_field_values)
            pages = page.page_count
            page_number += 1
        return ReadBack(found, values, custom_fields)

    async def _page(
        self, ids: Sequence[int], custom_fields: bool, page: int
    ) -> WorkspacePage | str:
        """One page, retried within the budget; a string says why it could not be read."""
        settings = self.settings
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.acquire()
            self.stats.read_requests += 1
            try:
                answer: ApiResponse | TransportError = await self.client.list_workspaces(
                    ids, include_custom_fields=custom_fields, include_archived=True, page=page
                )
            except TransportError as exc:
                answer = exc
            verdict = classify(answer, status_change=False)
            message = verdict.error_message or ""
            if verdict.verdict is Verdict.SUCCESS and isinstance(answer, ApiResponse):
                try:
                    return workspace_page(answer.body)
                except ProtocolError as exc:
                    message = f"not the documented envelope ({exc})"
            elif verdict.verdict is Verdict.TOKEN_REJECTED:
                raise TokenRejected(f"GET /workspaces: {message}")
            elif verdict.verdict is not Verdict.RETRY:
                return f"HTTP {verdict.http_status}: {message}"
            if verdict.http_status == 429:
                self.stats.rate_limited += 1
                self.limiter.on_throttled(
                    shared_pause(verdict.retry_after, settings.max_retry_after)
                )
            if attempt >= settings.max_attempts:
                return f"gave up after {attempt} attempts: {message}"
            retry_after = verdict.retry_after
            if retry_after is not None and retry_after > settings.max_retry_after:
                return f"Kantata asked to wait {retry_after:.0f} s: {message}"
            delay = backoff_delay(
                attempt,
                base=settings.retry_base_delay,
                cap=settings.retry_max_delay,
                jitter=self.rng.random(),
                retry_after=retry_after,
            )
            self.stats.retries += 1
            self.log.warning(
                "verify.retrying",
                status=verdict.http_status,
                error=message,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            await self.sleep(delay)


def judge(states: Sequence[DesiredState], read: ReadBack, stats: VerifyStats) -> list[Drift]:
    """The report rows of one chunk (pure, apart from counting into ``stats``)."""
    rows: list[Drift] = []
    for state in states:
        ident = state.workspace_id
        stats.workspaces += 1
        if read.unreadable is not None:
            stats.unreadable += 1
            rows.append(Drift(ident, Finding.UNREADABLE, detail=read.unreadable))
            continue
        workspace = read.workspaces.get(ident)
        if workspace is None:
            stats.missing += 1
            rows.append(Drift(ident, Finding.MISSING, detail="Kantata no longer returns it"))
            continue
        custom = read.custom_values.get(ident) if read.with_custom_fields else None
        result = compare(state, workspace, custom)
        stats.checked_fields += result.checked
        stats.unverified_fields += result.unverified
        stats.settling_fields += result.settling
        if result.drift:
            stats.drifted_fields += len(result.drift)
            stats.drifted_workspaces.add(ident)
            rows.extend(result.drift)
    return rows


async def verify(
    outbox: OutboxReader,
    reader: WorkspaceReader,
    options: VerifyOptions,
    *,
    parallel: int = PARALLEL_READS,
) -> AsyncIterator[Drift]:
    """Every finding, workspace by workspace in ascending order; counts go to ``reader.stats``."""

    async def one(ids: list[int]) -> list[Drift]:
        states = list(fold_all(await outbox.history(ids)))
        if not states:
            return []
        custom = any(state.needs_custom_fields for state in states)
        read = await reader.read([s.workspace_id for s in states], custom_fields=custom)
        return judge(states, read, reader.stats)

    running: deque[asyncio.Task[list[Drift]]] = deque()
    try:
        async for ids in outbox.synced_workspaces(
            workspaces=options.workspaces,
            since=options.since,
            limit=options.limit,
            chunk=options.chunk,
        ):
            running.append(asyncio.create_task(one(ids)))
            if len(running) >= parallel:
                for row in await running.popleft():
                    yield row
        while running:
            for row in await running.popleft():
                yield row
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def enqueue_repairs(
    store: Store, outbox: OutboxReader, drifted: Sequence[Drift], run_id: str, high_water: int
) -> JSONObject:
    """Enqueue a change setting each drifted field back (``source_ref`` ``verify:…``).

    A workspace that got a change after verify began (an ID above ``high_water``) is skipped:
    the correction would land after that newer change and undo it.
    """
    newer = await outbox.touched_since([d.workspace_id for d in drifted], high_water)
    changes = []
    for change in repair_changes((d for d in drifted if d.workspace_id not in newer), run_id):
        try:
            validate_payload(change.kind, change.payload)
        except InputError:
            continue  # cannot happen for a value that once succeeded; never enqueue bad input
        changes.append(change)
    ids = await store.enqueue(changes)
    return {
        "run_id": run_id,
        "enqueued": len(ids),
        "workspaces": len({c.workspace_id for c in changes}),
        "change_ids": ids,
        "skipped_workspaces": sorted(newer),
        "source_ref_prefix": f"verify:{run_id}:",
    }
