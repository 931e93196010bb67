"""What ``serve`` tells the outside world over HTTP: ``/``, ``/metrics``, ``/healthz``, ``/readyz``.

- ``/``: a read-only status page drawn from the database (:mod:`worker.statuspage`), when the
  listener was given a :class:`~worker.statuspage.StatusSource`: self-contained HTML, served
  with a Content-Security-Policy that allows no script and nothing from elsewhere.
- ``/metrics``: the process's Prometheus registry (text format, or OpenMetrics when asked).
- ``/healthz``: 200 while the serve loop has ticked recently, else 503. Liveness only: a
  database outage or a rejected token does not make the process unhealthy (restarting it
  would not help), only unready.
- ``/readyz``: 200 only if the database answers with the schema this version needs, the
  worker's last heartbeat could write to it, and the last run did not end with the token
  rejected; otherwise 503 with the reasons in the body.

The listener binds to loopback by default; it serves nothing secret (the page masks the API
token in anything the database holds), but nothing that needs to be public either.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from sqlalchemy.ext.asyncio import AsyncEngine

from . import db as dbmod
from .exceptions import ConfigError, DatabaseError
from .metrics import Metrics
from .statushtml import CONTENT_SECURITY_POLICY, render_error_page, render_status_page
from .statuspage import StatusSource

SHUTDOWN_TIMEOUT = 2.0
"""Seconds a stopping listener gives a scrape in progress."""
DATABASE_TIMEOUT = 10.0
"""Seconds a readiness probe or a queue refresh may take before it counts as a failure."""


@dataclass(slots=True)
class HealthState:
    """The serve loop's vital signs, shared with the HTTP handlers and the watchdog."""

    stale_after: float
    """Seconds without a tick after which the loop counts as stuck."""
    clock: Callable[[], float] = time.monotonic
    last_tick: float = field(default=0.0)
    activity: str = "starting"
    token_problem: str | None = None
    database_problem: str | None = None
    write_problem: str | None = None
    """Why the last write (the registry heartbeat) failed, if it did."""
    stopping: bool = False

    def __post_init__(self) -> None:
        self.last_tick = self.clock()

    def tick(self) -> None:
        self.last_tick = self.clock()

    def tick_age(self) -> float:
        return max(self.clock() - self.last_tick, 0.0)

    def alive(self) -> bool:
        return self.tick_age() <= self.stale_after


class DatabaseProbe:
    """Checks that the database answers and is migrated, within :data:`DATABASE_TIMEOUT`.

    For a SQLite file it also checks that the path still names the file the process opened:
    an open connection keeps working on a deleted or replaced file, so a plain query would
    say "fine" while every result went into a file nobody can see any more.
    """

    def __init__(self, engine: AsyncEngine, timeout: float = DATABASE_TIMEOUT) -> None:
        self.engine = engine
        self.timeout = timeout
        self.file = dbmod.FileWatch(engine.url)

    async def problem(self) -> str | None:
        """None when the database is usable, else why not (without the password)."""
        change = self.file.change()
        if change == "missing":
            return f"database file {self.file.path} is missing"
        if change == "replaced":
            return f"database file {self.file.path} was replaced since kantata-sync opened it"
        try:
            await asyncio.wait_for(dbmod.check_schema(self.engine), self.timeout)
        except TimeoutError:
            return f"database did not answer within {self.timeout:g} s"
        except DatabaseError as exc:
            return str(exc)
        return None


class HttpListener:
    """The aiohttp server for ``/`` (with a ``status`` source), ``/metrics``, ``/healthz``
    and ``/readyz``."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: HealthState,
        probe: DatabaseProbe,
        *,
        status: StatusSource | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health
        self.probe = probe
        self.status = status
        self.url = ""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        if self.status is not None:
            app.router.add_get("/", self._status_page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> str:
        """Bind and serve; return the base URL (with the real port when asked for port 0)."""
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"http: cannot listen on {self.host}:{self.port} ({exc.strerror or exc})"
            ) from exc
        if not runner.addresses:
            # asyncio skips an address family the kernel refuses (EAFNOSUPPORT, e.g. under
            # systemd's RestrictAddressFamilies=), and may end up bound to nothing at all.
            await runner.cleanup()
            raise ConfigError(
                f"http_host: cannot listen on {self.host}:{self.port}: no socket of its "
                "address family could be opened (forbidden by RestrictAddressFamilies=?); "
                "choose another --http-host, or --no-http"
            )
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self.status is not None:
            await self.status.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _status_page(self, request: web.Request) -> web.Response:
        assert self.status is not None
        secrets = self.status.secrets
        try:
            data = await self.status.gather(self.health.activity)
        except (DatabaseError, TimeoutError) as exc:
            problem = str(exc) or f"database did not answer within {self.status.timeout:g} s"
            return _html(render_error_page(problem, secrets=secrets), 503)
        return _html(render_status_page(data, secrets=secrets), 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        alive = self.health.alive()
        body = {
            "alive": alive,
            "activity": self.health.activity,
            "last_tick_age_seconds": round(self.health.tick_age(), 3),
            "stale_after_seconds": self.health.stale_after,
        }
        return _json(body, 200 if alive else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = await readiness_problems(self.health, self.probe)
        body = {"ready": not reasons, "reasons": reasons, "activity": self.health.activity}
        return _json(body, 503 if reasons else 200)


async def readiness_problems(health: HealthState, probe: DatabaseProbe) -> list[str]:
    """Why the daemon should not count as ready; empty when it is ready."""
    reasons: list[str] = []
    if health.stopping:
        reasons.append("stopping")
    problem = await probe.problem()
    if problem is not None:
        reasons.append(f"database: {problem}")
    elif health.write_problem is not None:
        reasons.append(f"database: {health.write_problem}")
    if health.token_problem is not None:
        reasons.append(f"token: {health.token_problem}")
    return reasons


def _html(page: str, status: int) -> web.Response:
    return web.Response(
        text=page,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        text=json.dumps(body) + "\n", status=status, content_type="application/json"
    )
