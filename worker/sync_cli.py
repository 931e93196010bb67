"""The commands that set up and sync: ``db upgrade``, ``enqueue``, ``run``, ``serve`` and
``config check``.

``run`` and ``serve`` get their worker from :func:`worker.runtime.assemble`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

import click

from . import db as dbmod
from .changes import NewChange, RunEnding, RunReport, State
from .clitools import (
    EXIT_INPUT,
    EXIT_TOKEN,
    fail,
    run_async,
    settings_of,
)
from .config import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, Settings
from .exceptions import InputError
from .progress import progress_bar
from .runtime import assemble, named, open_store, refresh_queue_metrics

if TYPE_CHECKING:
    from .daemon import ServeOptions, ServeSummary


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context, /) -> None:
    """Create or migrate the tables (sync_changes, sync_attempts, sync_runs)."""
    settings = settings_of(ctx)

    async def _go() -> tuple[str | None, str]:
        engine = dbmod.create_engine(settings.database_url)
        try:
            return await dbmod.upgrade(engine)
        finally:
            await engine.dispose()

    before, after = run_async(_go)
    where = dbmod.describe_url(settings.database_url)
    if before == after:
        click.echo(f"{where}: already at schema {after}")
    else:
        click.echo(f"{where}: migrated from {before or 'empty'} to {after}")


@click.command()
@click.option(
    "--file",
    "-f",
    "source",
    type=click.File("r", encoding="utf-8", errors="surrogateescape"),
    required=True,
    help="JSON Lines file of changes, or - for standard input.",
)
@click.option(
    "--supersede",
    is_flag=True,
    help="Replace the failed, invalid or cancelled change holding each line's source_ref.",
)
@click.pass_context
def enqueue(ctx: click.Context, /, source: IO[str], supersede: bool) -> None:
    """Validate and insert changes, one JSON object a line.

    Each line has the producer columns of sync_changes, for example
    {"workspace_id": 12, "kind": "status_change", "payload": {"to_status_key": 310},
    "source_ref": "crm-991"}. Good lines are inserted in one transaction; every bad line is
    reported with its number and reason, and the exit code is 1 if any line was bad.

    With --supersede, a line whose source_ref a failed, invalid or cancelled change holds
    replaces it: the old change keeps its history, gives its source_ref to the new one and
    points at it (superseded_by). A pending, in-flight or succeeded holder is not replaced
    (the line is rejected), and every line needs a source_ref. `report --format jsonl` writes
    lines in this form.
    """
    from .queue_cli import operator_name
    from .supersede import SupersedeResult, enqueue_superseding
    from .validation import parse_line

    settings = settings_of(ctx)
    good: list[tuple[int, NewChange]] = []
    bad = 0
    seen: dict[str, int] = {}
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            line.encode("utf-8")
            change = parse_line(line)
        except UnicodeEncodeError:
            bad += 1
            click.echo(f"line {number}: line: is not valid UTF-8", err=True)
            continue
        except InputError as exc:
            bad += 1
            click.echo(f"line {number}: {exc}", err=True)
            continue
        if change.source_ref is not None:
            if change.source_ref in seen:
                bad += 1
                click.echo(
                    f"line {number}: source_ref: {change.source_ref!r} "
                    f"repeats line {seen[change.source_ref]}",
                    err=True,
                )
                continue
            seen[change.source_ref] = number
        good.append((number, change))

    if supersede:
        operator = operator_name()

        async def _replace() -> SupersedeResult:
            async with open_store(settings) as store:
                return await enqueue_superseding(store.engine, good, operator, datetime.now(UTC))

        result = run_async(_replace) if good else SupersedeResult([], {}, [])
        for number, reason in sorted(result.rejected):
            click.echo(f"line {number}: {reason}", err=True)
        bad += len(result.rejected)
        click.echo(
            f"enqueued {len(result.ids)} change(s), {len(result.replaced)} superseding earlier "
            f"ones; {bad} line(s) rejected"
        )
        if bad:
            sys.exit(EXIT_INPUT)
        return

    async def _go() -> tuple[list[int], list[int]]:
        async with open_store(settings) as store:
            taken = await store.existing_source_refs(list(seen))
            rejected = [n for n, ch in good if ch.source_ref in taken]
            accepted = [ch for _, ch in good if ch.source_ref not in taken]
            return await store.enqueue(accepted), rejected

    ids, rejected = run_async(_go) if good else ([], [])
    for number in rejected:
        click.echo(f"line {number}: source_ref: already enqueued", err=True)
    bad += len(rejected)
    click.echo(f"enqueued {len(ids)} change(s); {bad} line(s) rejected")
    if bad:
        sys.exit(EXIT_INPUT)


@click.command()
@click.option(
    "--metrics-textfile",
    type=click.Path(dir_okay=False),
    help="Write Prometheus metrics here at the end (node_exporter textfile collector).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: only on a terminal).",
)
@click.pass_context
def run(ctx: click.Context, /, metrics_textfile: str | None, progress: bool | None) -> None:
    """Sync every due change, then exit (for a systemd timer or cron)."""
    settings = named(settings_of(ctx))
    show_progress = sys.stdout.isatty() if progress is None else progress
    report = run_async(lambda: _sync_once(settings, metrics_textfile, show_progress))
    if report.ended_because is RunEnding.TOKEN_REJECTED:
        fail(
            EXIT_TOKEN,
            "the API token was rejected (401); claimed changes were returned to pending "
            "untouched. Check or replace KANTATA_SYNC_TOKEN.",
        )


async def _sync_once(settings: Settings, textfile: str | None, show_progress: bool) -> RunReport:
    async with assemble(settings) as worker:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        total = (await worker.store.counts())[State.PENDING]
        async with progress_bar(show_progress, total) as advance:
            worker.dispatcher.on_progress = advance
            report = await worker.dispatcher.run(stop)
        await refresh_queue_metrics(worker.store, worker.metrics)
        if textfile:
            worker.metrics.write_textfile(textfile)
        return report


@click.command("serve")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05, max=3600),
    default=5.0,
    show_default=True,
    help="Seconds between looks at the queue while idle (and queue-gauge refreshes).",
)
@click.option(
    "--http-host",
    default=DEFAULT_HTTP_HOST,
    show_default=True,
    help="Address of the /metrics, /healthz and /readyz listener.",
)
@click.option(
    "--http-port",
    type=click.IntRange(min=0, max=65535),
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="Port of the listener; 0 picks a free one and prints its URL on stdout.",
)
@click.option("--no-http", is_flag=True, help="Serve no HTTP at all.")
@click.option(
    "--token-retry-interval",
    type=click.FloatRange(min=1, max=86_400),
    default=60.0,
    show_default=True,
    help="After a 401, seconds before the token is tried again (SIGHUP: at once).",
)
@click.option(
    "--max-run-seconds",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="End a busy run after this long and start the next (one run-log row each).",
)
@click.option("--notify-socket", envvar="NOTIFY_SOCKET", hidden=True)
@click.option("--watchdog-usec", envvar="WATCHDOG_USEC", hidden=True)
@click.option("--watchdog-pid", envvar="WATCHDOG_PID", hidden=True)
@click.pass_context
def serve(
    ctx: click.Context,
    /,
    poll_interval: float,
    http_host: str,
    http_port: int,
    no_http: bool,
    token_retry_interval: float,
    max_run_seconds: float,
    notify_socket: str | None,
    watchdog_usec: str | None,
    watchdog_pid: str | None,
) -> None:
    """Run as a daemon: sync changes as they become due, until SIGTERM.

    Serves Prometheus metrics on /metrics, liveness on /healthz and readiness on /readyz.
    Under systemd (Type=notify) it reports READY=1, STATUS= lines and STOPPING=1, and pings
    the watchdog when WatchdogSec= is set. After a 401 it stays up but unready and retries the
    token every --token-retry-interval seconds, or at once on SIGHUP. Exit codes as for run;
    0 after a clean SIGTERM.
    """
    from .daemon import ServeOptions
    from .sdnotify import watchdog_interval

    settings = named(settings_of(ctx))
    options = ServeOptions(
        poll_interval=poll_interval,
        http_host=http_host,
        http_port=None if no_http else http_port,
        token_retry_interval=token_retry_interval,
        max_run_seconds=max_run_seconds,
        watchdog_interval=watchdog_interval(watchdog_usec, watchdog_pid, os.getpid()),
    )
    # Port 0: say which port was picked. Otherwise stdout stays quiet, so that the journal
    # holds nothing but JSON lines.
    announce = http_port == 0 and not no_http
    run_async(lambda: _serve(settings, options, notify_socket, announce))


async def _serve(
    settings: Settings, options: ServeOptions, notify_socket: str | None, announce: bool
) -> ServeSummary:
    from .daemon import Daemon
    from .sdnotify import Notifier

    notifier = Notifier(notify_socket)
    news = asyncio.Event()
    try:
        async with (
            assemble(settings) as worker,
            worker.coordinator.notifications(inserts=news) as wake,
        ):
            daemon = Daemon(worker.dispatcher, options, notifier=notifier, wake=wake)
            if wake is not None:
                worker.dispatcher.pacer.news = news  # a busy run claims new changes at once
            daemon.install_signal_handlers()
            return await daemon.run(
                on_listening=(
                    (lambda url: click.echo(f"kantata-sync serve: listening on {url}"))
                    if announce
                    else None
                )
            )
    finally:
        notifier.close()


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option(
    "--show-origin",
    is_flag=True,
    help="Say where each value came from: the file, a variable, or the default.",
)
@click.pass_context
def config_check(ctx: click.Context, /, show_origin: bool) -> None:
    """Validate the configuration and print the effective values, secrets masked.

    Stricter than the service: a ``KANTATA_SYNC_*`` variable that names no setting fails the
    check (``run`` and ``serve`` only warn, so that a leftover cannot take a service down).
    """
    origins: dict[str, str] = {}
    settings = settings_of(ctx, origins=origins, strict=True)
    for key, value in settings.masked().items():
        origin = f"  # {origins.get(key, 'default')}" if show_origin else ""
        click.echo(f"{key} = {json.dumps(value)}{origin}")
    if settings.token is None:
        click.echo("warning: no API token configured (KANTATA_SYNC_TOKEN)", err=True)


COMMANDS = (db, enqueue, run, serve, config_group)
