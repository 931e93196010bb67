"""The operator's commands on the outbox: ``status``, ``report``, ``retry`` and ``cancel``."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import click

from . import render
from .changes import State
from .clitools import run_async, settings_of
from .coordination import Coordinator
from .queries import Filters, note_line
from .runtime import open_store

DEAD_AFTER = 30.0
"""Seconds without a heartbeat after which ``status`` counts a worker as dead."""


def operator_name() -> str:
    """Who is running this command, for ``operator_note``: the OS user name, else the UID."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def status(ctx: click.Context, /, fmt: str) -> None:
    """Counts per state (and per outcome), and the age of the oldest pending change."""
    settings = settings_of(ctx)

    async def _go() -> dict[str, Any]:
        async with open_store(settings) as store:
            counts = await store.counts()
            breakdown = await store.outcome_counts()
            oldest = await store.oldest_pending()
            coordinator = Coordinator(store.engine)
            live, dead = await coordinator.workers(datetime.now(UTC), DEAD_AFTER)
            budgets = await coordinator.budgets()
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
        return render.status_data(counts, breakdown, age, live, dead, budgets)

    data = run_async(_go)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        render.print_status(data)


def filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--state",
            "states",
            multiple=True,
            type=click.Choice([str(s) for s in State]),
            help="Only changes in this state (repeatable).",
        ),
        click.option("--workspace", "workspaces", multiple=True, type=int, help="Workspace ID."),
        click.option("--id", "ids", multiple=True, type=int, help="Change ID (repeatable)."),
        click.option("--source-ref", "source_refs", multiple=True, help="Producer's reference."),
        click.option("--error-type", "error_types", multiple=True, help="e.g. validation."),
        click.option(
            "--since",
            type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
            help="Only changes created at or after this time (UTC unless given).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def filters_of(
    states: Iterable[str],
    workspaces: Iterable[int],
    ids: Iterable[int],
    source_refs: Iterable[str],
    error_types: Iterable[str],
    since: datetime | None,
) -> Filters:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return Filters(
        states=tuple(State(s) for s in states),
        workspace_ids=tuple(workspaces),
        ids=tuple(ids),
        source_refs=tuple(source_refs),
        error_types=tuple(error_types),
        since=since,
    )


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "jsonl", "html"]),
    default="table",
    help="jsonl: one change a line as enqueue reads it (producer columns only; superseded "
    "changes left out), for `enqueue --supersede -f -`. html: a self-contained "
    "reconciliation report with the status page's charts, e.g. `> report.html`.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@filter_options
@click.pass_context
def report(ctx: click.Context, /, fmt: str, limit: int | None, **filter_args: Any) -> None:
    """One row per change: what was asked, what happened, and Kantata's error if any."""
    settings = settings_of(ctx)
    filters = filters_of(**filter_args)
    if fmt == "jsonl":
        filters = dataclasses.replace(filters, superseded=False)

    async def _go() -> None:
        async with open_store(settings) as store:
            if fmt == "html":
                await _write_html(store, filters, limit, settings.token)
            else:
                await render.write_report(store.report(filters, limit), fmt)

    run_async(_go)


async def _write_html(store: Any, filters: Filters, limit: int | None, token: Any) -> None:
    """The report as one HTML document: the counts and charts, then a row per change."""
    import sys

    from .statushtml import iter_report_html
    from .statuspage import gather_summary

    scope = "changes matching the filters" if filters.where() else "all changes"
    summary = await gather_summary(store, datetime.now(UTC), where=filters.where(), scope=scope)
    rows = [row async for row in store.report(filters, limit)]
    secrets = [token.get_secret_value()] if token is not None else []
    for piece in iter_report_html(summary, rows, secrets=secrets):
        sys.stdout.write(piece)


def _transition_command(name: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
    @click.option(
        "--reason",
        help="Why; kept in operator_note with your user name and the time.",
    )
    @filter_options
    @click.pass_context
    def command(
        ctx: click.Context, /, dry_run: bool, reason: str | None, **filter_args: Any
    ) -> None:
        settings = settings_of(ctx)
        filters = filters_of(**filter_args)
        if not filters.where():
            raise click.UsageError(f"{name} needs at least one filter (--state, --id, ...)")
        operator = operator_name()

        async def _go() -> list[int]:
            async with open_store(settings) as store:
                method = store.retry if name == "retry" else store.cancel
                now = datetime.now(UTC)
                action = "retried" if name == "retry" else "cancelled"
                note = note_line(action, operator, reason, now)
                return await method(filters, now, dry_run, note)

        ids = run_async(_go)
        verb = (
            "would " + name if dry_run else name.rstrip("y") + ("ied" if name == "retry" else "led")
        )
        click.echo(f"{verb} {len(ids)} change(s)" + (f": {render.id_list(ids)}" if ids else ""))

    return command


retry = _transition_command(
    "retry",
    "Put failed, invalid or cancelled changes back to pending: attempts reset, the last "
    "answer's status, error and result cleared (the attempt log keeps them). A change another "
    "has superseded is left alone.",
)
cancel = _transition_command("cancel", "Cancel pending changes so that they are never sent.")
COMMANDS = (status, report, retry, cancel)
