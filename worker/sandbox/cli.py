"""``kantata-sync sandbox``: serve the Kantata OX sandbox until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click
from aiohttp import web

from worker.statuses import DEFAULT_STATUSES

from .app import API_PREFIX, create_app
from .config import (
    DEFAULT_TOKEN,
    ApplyThenFailMode,
    ConfigError,
    FaultConfig,
    SandboxConfig,
    statuses_for,
)
from .ratelimit import RateSchedule

ENV_PREFIX = "KANTATA_SANDBOX_"
SHUTDOWN_TIMEOUT = 1.0
"""Seconds a stopping sandbox waits for hanging handlers before cancelling them."""


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    """Parse a comma-separated list of integers, e.g. ``100,310,600``."""
    try:
        return tuple(int(item) for item in (value or "").split(",") if item.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def _schedule(ctx: click.Context, param: click.Parameter, value: str | None) -> RateSchedule | None:
    """Parse a rate-limit schedule, e.g. ``0:37,20:12,40:37``; unset stays None."""
    if value is None:
        return None
    try:
        return RateSchedule.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


_F = TypeVar("_F", bound=Callable[..., Any])


def _option(*decls: str, **kwargs: Any) -> Callable[[_F], _F]:
    name = decls[0].split("/")[0].removeprefix("--")
    return click.option(*decls, envvar=_env(name), show_envvar=True, **kwargs)


RATE = click.FloatRange(0.0, 1.0)
NON_NEGATIVE = click.FloatRange(min=0.0)


async def serve(config: SandboxConfig, host: str, port: int) -> None:
    """Serve ``config`` on ``host:port``, announce the URL on stdout, stop on SIGTERM/SIGINT."""
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        print(f"Kantata OX sandbox listening on http://{shown}:{bound}{API_PREFIX}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


@click.command("sandbox")
@_option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@_option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8089,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@_option(
    "--token",
    "tokens",
    multiple=True,
    default=(DEFAULT_TOKEN,),
    show_default=True,
    help="Accepted bearer token; repeat for several (whitespace-separated in the env var).",
)
@_option(
    "--workspaces",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Seed workspaces with IDs 1..N.",
)
@_option(
    "--status-keys",
    callback=_int_list,
    default=",".join(str(key) for key in DEFAULT_STATUSES),
    show_default=True,
    help="Comma-separated project status keys the account enables.",
)
@_option(
    "--initial-status",
    type=int,
    default=100,
    show_default=True,
    help="Status key of every seeded workspace.",
)
@_option(
    "--forbidden",
    callback=_int_list,
    default="",
    help="Workspace IDs the tokens may not edit (403).",
)
@_option(
    "--rate-limit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Accepted requests allowed in any one-second window; 0 = unlimited.",
)
@_option(
    "--rate-limit-schedule",
    callback=_schedule,
    default=None,
    metavar="SPEC",
    help="Limits that change over time, as SECONDS:LIMIT,... counted from the start, e.g."
    " 0:37,20:12,40:37 (first at 0, times increasing); overrides --rate-limit.",
)
@_option(
    "--read-rate-limit",
    type=click.IntRange(min=0),
    default=None,
    help="Give GET (and HEAD) requests a one-second window of their own with this limit"
    " (0 = unlimited); they then do not count against --rate-limit. Omitted = GETs share the"
    " main window.",
)
@_option(
    "--read-rate-limit-schedule",
    callback=_schedule,
    default=None,
    metavar="SPEC",
    help="The read window's limit over time, as for --rate-limit-schedule; overrides"
    " --read-rate-limit.",
)
@_option(
    "--retry-after",
    type=click.IntRange(min=0),
    default=None,
    help="Seconds to send in Retry-After on 429; omitted = no header.",
)
@_option(
    "--error-rate", type=RATE, default=0.0, show_default=True, help="Probability of a 500/502/503."
)
@_option(
    "--latency-ms",
    type=NON_NEGATIVE,
    default=0.0,
    show_default=True,
    help="Latency added to every API request.",
)
@_option(
    "--hang-rate",
    type=RATE,
    default=0.0,
    show_default=True,
    help="Probability that a request hangs for --hang-seconds, then gets 503.",
)
@_option(
    "--hang-seconds",
    type=NON_NEGATIVE,
    default=30.0,
    show_default=True,
    help="How long a hanging request hangs.",
)
@_option(
    "--drop-rate",
    type=RATE,
    default=0.0,
    show_default=True,
    help="Probability that the connection is cut mid-response (change not applied).",
)
@_option(
    "--apply-then-fail-rate",
    type=RATE,
    default=0.0,
    show_default=True,
    help="Probability that a change is applied but the client gets a 503 or a hang.",
)
@_option(
    "--apply-then-fail-mode",
    type=click.Choice([mode.value for mode in ApplyThenFailMode]),
    default=ApplyThenFailMode.MIXED.value,
    show_default=True,
    help="What an applied-then-failed request answers.",
)
@_option(
    "--burst-429-rate",
    type=RATE,
    default=0.0,
    show_default=True,
    help="Probability that a request starts a burst in which every request gets 429.",
)
@_option(
    "--burst-seconds",
    type=NON_NEGATIVE,
    default=0.75,
    show_default=True,
    help="Length of a 429 burst.",
)
@_option("--seed", type=int, default=None, help="Seed for the fault decisions (reproducible runs).")
@_option(
    "--inspect/--no-inspect",
    default=False,
    show_default=True,
    help="Serve the /__sandbox__/ inspection and control routes.",
)
@_option(
    "--request-log",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="Keep the latest N API requests for GET /__sandbox__/requests (0: keep none).",
)
def sandbox(
    host: str,
    port: int,
    tokens: tuple[str, ...],
    workspaces: int,
    status_keys: tuple[int, ...],
    initial_status: int,
    forbidden: tuple[int, ...],
    rate_limit: int,
    rate_limit_schedule: RateSchedule | None,
    read_rate_limit: int | None,
    read_rate_limit_schedule: RateSchedule | None,
    retry_after: int | None,
    error_rate: float,
    latency_ms: float,
    hang_rate: float,
    hang_seconds: float,
    drop_rate: float,
    apply_then_fail_rate: float,
    apply_then_fail_mode: str,
    burst_429_rate: float,
    burst_seconds: float,
    seed: int | None,
    inspect: bool,
    request_log: int,
) -> None:
    """Serve a local Kantata OX sandbox (GET /workspaces, PUT/GET /workspaces/{id}, POST
    /workspace_status_changes) with auth, a strict rate limit (optionally changing over time,
    optionally separate for reads) and fault injection."""
    try:
        faults = FaultConfig(
            error_rate=error_rate,
            latency_ms=latency_ms,
            hang_rate=hang_rate,
            hang_seconds=hang_seconds,
            drop_rate=drop_rate,
            apply_then_fail_rate=apply_then_fail_rate,
            apply_then_fail_mode=ApplyThenFailMode(apply_then_fail_mode),
            burst_429_rate=burst_429_rate,
            burst_seconds=burst_seconds,
            seed=seed,
        )
        config = SandboxConfig(
            tokens=tokens,
            workspaces=workspaces,
            statuses=statuses_for(status_keys),
            initial_status=initial_status,
            forbidden=frozenset(forbidden),
            rate_limit=rate_limit,
            rate_limit_schedule=rate_limit_schedule,
            read_rate_limit=read_rate_limit,
            read_rate_limit_schedule=read_rate_limit_schedule,
            retry_after=retry_after,
            faults=faults,
            inspect=inspect,
            request_log=request_log,
        )
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    try:
        asyncio.run(serve(config, host, port))
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from None
