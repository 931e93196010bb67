"""``plan`` and ``verify``: what the next run would send, and whether Kantata holds what it should.

Exit codes of ``verify``: 0 Kantata holds the desired state of every workspace verified;
:data:`EXIT_DRIFT` (1) drift found (a field differs, or a workspace is missing), also after
``--repair`` enqueued the corrections; :data:`EXIT_UNREADABLE` (6) some workspaces could not be
read after retries (verification incomplete; any drift among the rest is still listed); 5 the
API token was rejected; 3 configuration error; 4 database error. ``plan`` exits 0, or 3/4.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import StrEnum

import click

from .changes import JSONObject
from .client import KantataClient
from .clitools import EXIT_TOKEN, fail, run_async, settings_of
from .config import Settings
from .coordination import Coordinator
from .drift import Drift, Finding
from .exceptions import TokenRejected
from .logging import get_logger
from .outbox_reads import OutboxReader
from .preview import Preview, preview
from .reconcile_render import write_drift, write_plan
from .runtime import make_limiter, open_store
from .verify import VerifyOptions, VerifyStats, WorkspaceReader, enqueue_repairs, verify

EXIT_DRIFT = 1
EXIT_UNREADABLE = 6


class Ended(StrEnum):
    """How a verification ended."""

    DONE = "done"
    TOKEN_REJECTED = "token_rejected"
    """Kantata answered 401: nothing more could be read."""


DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


@click.command("plan")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "jsonl"]),
    help="Output format (default: table on a terminal, else json).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Plan only the first N changes the run takes."
)
@click.pass_context
def plan(ctx: click.Context, /, fmt: str | None, limit: int | None) -> None:
    """Show exactly the requests the next run would send, and send nothing.

    The due pending changes (oldest first, none of a workspace in flight or waiting for a
    retry) are validated, coalesced and split at each second status change, as `run` does, in
    claims of batch_size. Per workspace, in order: method, path, body and the change IDs each
    request carries; then the changes that would become invalid, and N changes → M requests.

    It cannot know what a run finds later: leases that expire (a crashed worker's changes),
    retries that fall due, answers that make a request be retried or stop a workspace.
    Nothing is claimed, sent or written.
    """
    settings = settings_of(ctx)
    chosen = fmt or ("table" if sys.stdout.isatty() else "json")

    async def _go() -> Preview:
        async with open_store(settings) as store:
            rows = await OutboxReader(store.engine).due_changes(datetime.now(UTC), limit)
        return preview(rows, settings.batch_size, limit)

    write_plan(run_async(_go), chosen, sys.stdout)


@click.command("verify")
@click.option(
    "--workspace",
    "workspaces",
    multiple=True,
    type=click.IntRange(min=1),
    help="Only this workspace (repeatable).",
)
@click.option(
    "--since",
    type=click.DateTime(DATE_FORMATS),
    help="Only workspaces with a change that succeeded at or after this time (UTC unless given).",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many workspaces.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option(
    "--repair",
    is_flag=True,
    help="Enqueue a change for each drifted field, setting it back (source_ref verify:…).",
)
@click.pass_context
def verify_command(
    ctx: click.Context,
    /,
    workspaces: tuple[int, ...],
    since: datetime | None,
    limit: int | None,
    fmt: str,
    repair: bool,
) -> None:
    """Read the synced workspaces back from Kantata and report where they differ.

    The desired state is what the outbox implies: for each workspace, the last succeeded value
    of every field and the last succeeded status. Kantata is read in bulk (GET /workspaces,
    200 a request) under the shared rate budget. Exit codes: 0 in step; 1 drift found (or a
    workspace missing); 6 some workspaces could not be read (never reported as drift);
    5 token rejected. With --repair, each drifted field gets a new change that sets it back;
    `run` sends them like any other.
    """
    settings = settings_of(ctx)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    options = VerifyOptions(workspaces=workspaces, since=since, limit=limit)
    run_id = uuid.uuid4().hex[:12]
    stats = VerifyStats()
    outcome = run_async(lambda: _verify(settings, options, fmt, repair, run_id, stats))
    if outcome is Ended.TOKEN_REJECTED:
        fail(EXIT_TOKEN, "the API token was rejected (401); nothing was verified after it")
    click.echo(f"kantata-sync: verify {run_id}: {_summary(stats)}", err=True)
    if stats.unreadable:
        fail(
            EXIT_UNREADABLE,
            f"{stats.unreadable} workspace(s) could not be read after retries; they were not "
            "judged. Run verify again for them (--workspace).",
        )
    if stats.drifted_workspaces or stats.missing:
        sys.exit(EXIT_DRIFT)


def _summary(stats: VerifyStats) -> str:
    return (
        f"{stats.workspaces} workspace(s) in {stats.read_requests} read request(s): "
        f"{stats.drifted_fields} field(s) drifted in {len(stats.drifted_workspaces)} "
        f"workspace(s), {stats.missing} missing, {stats.unreadable} unreadable "
        f"({stats.checked_fields} fields checked, {stats.unverified_fields} not returned by "
        f"Kantata, {stats.settling_fields} with a change on its way)"
    )


async def _verify(
    settings: Settings,
    options: VerifyOptions,
    fmt: str,
    repair: bool,
    run_id: str,
    stats: VerifyStats,
) -> Ended:
    token = settings.api_token()
    log = get_logger().bind(verify_run=run_id)
    async with open_store(settings) as store:
        outbox = OutboxReader(store.engine)
        high_water = await outbox.high_water()
        limiter = make_limiter(settings, Coordinator(store.engine), reads=True)
        drifted: list[Drift] = []
        repairs: JSONObject = {}

        async def findings() -> AsyncIterator[Drift]:
            async for item in verify(outbox, reader, options):
                if item.finding is Finding.DRIFTED:
                    drifted.append(item)
                yield item

        def finish() -> JSONObject:
            return {"run_id": run_id, **stats.to_json(), "repair": repairs or None}

        async with KantataClient(
            settings.api_base_url,
            token,
            timeout=settings.request_timeout,
            max_connections=4,
            max_body_bytes=settings.max_response_bytes,
        ) as client:
            reader = WorkspaceReader(client, limiter, settings, stats)
            try:
                if repair:
                    # Repairs must be known before JSON's summary is written: collect first.
                    collected = [item async for item in findings()]
                    repairs.update(
                        await enqueue_repairs(store, outbox, drifted, run_id, high_water)
                    )

                    async def replay() -> AsyncIterator[Drift]:
                        for item in collected:
                            yield item

                    await write_drift(replay(), fmt, sys.stdout, finish)
                else:
                    await write_drift(findings(), fmt, sys.stdout, finish)
            except TokenRejected:
                return Ended.TOKEN_REJECTED
            finally:
                await limiter.settle()
        log.info("verify.finished", **stats.to_json())
        if repairs:
            click.echo(
                f"kantata-sync: verify {run_id}: enqueued {repairs['enqueued']} repair "
                f"change(s) for {repairs['workspaces']} workspace(s)"
                + (
                    f"; {len(repairs['skipped_workspaces'])} workspace(s) skipped: a newer "
                    "change was queued meanwhile"
                    if repairs["skipped_workspaces"]
                    else ""
                ),
                err=True,
            )
    return Ended.DONE


COMMANDS = (plan, verify_command)
