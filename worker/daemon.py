"""The supervisor loop of ``kantata-sync serve``, the long-running worker for systemd.

It receives a ready :class:`~worker.dispatcher.Dispatcher` (see :mod:`worker.runtime`); the
command itself lives in :mod:`worker.cli`.

Every poll interval, or at once when the ``wake`` event is set, the loop checks cheaply
whether a change is due (``Store.next_due``). When one is, it starts a dispatcher run, which
keeps claiming until nothing due is left: one run-log row per busy period, not per poll. A run
that lasts longer than ``max_run_seconds`` is ended (drained) and a new one started, so that
the run log and ``kantata_sync_last_success_timestamp_seconds`` move on under a steady flow.
While idle or busy, the loop refreshes the queue gauges every poll and ticks the health state
that ``/healthz`` and the systemd watchdog report.

When a run ends with the token rejected (401), the daemon stays up but unready, sends nothing,
and tries again after ``token_retry_interval`` seconds or at once on SIGHUP. A database that
stops answering makes it unready too; it keeps polling and recovers by itself. SIGTERM or
SIGINT sends ``STOPPING=1``, stops claiming, lets in-flight requests finish within the grace
period, returns every other claimed change to pending, and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .changes import RunEnding, RunReport, State
from .config import DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT
from .dispatcher import Dispatcher
from .exceptions import DatabaseError, SyncError
from .health import (
    DATABASE_TIMEOUT,
    DatabaseProbe,
    HealthState,
    HttpListener,
)
from .logging import get_logger
from .retention import prune_daily
from .runtime import refresh_queue_metrics
from .sdnotify import Notifier
from .statuspage import StatusSource
from .sweep import Sweeper


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How ``serve`` polls, listens and backs off; the defaults are the CLI's."""

    poll_interval: float = 5.0
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int | None = DEFAULT_HTTP_PORT
    """None: no HTTP listener; 0: any free port."""
    token_retry_interval: float = 60.0
    max_run_seconds: float = 600.0
    watchdog_interval: float | None = None
    """Seconds between ``WATCHDOG=1`` pings; None when systemd asked for no watchdog."""

    @property
    def stale_after(self) -> float:
        """The loop counts as stuck after this long without a tick."""
        return 3 * self.poll_interval + DATABASE_TIMEOUT


@dataclass(slots=True)
class ServeSummary:
    """What a daemon did in its life, for the final log line and for tests."""

    runs: int = 0
    token_rejections: int = 0
    last_report: RunReport | None = None


class Daemon:
    """The serve loop around one :class:`Dispatcher` (and its store, settings and metrics).

    ``wake``: an event that anything may set to make an idle loop look for due changes at
    once instead of at the next poll; ``serve`` passes the one of
    :meth:`Coordinator.notifications` (PostgreSQL LISTEN/NOTIFY on new changes, SQLite's
    ``data_version``). While a run goes it is not waited for. The loop clears it. The daemon
    registers the dispatcher's worker as a ``serve`` worker and heartbeats while idle (the
    dispatcher does while it runs). ``notifier`` defaults to a no-op (no ``NOTIFY_SOCKET``).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        options: ServeOptions | None = None,
        *,
        notifier: Notifier | None = None,
        wake: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self.settings = dispatcher.settings
        self.store = dispatcher.store
        self.metrics = dispatcher.metrics
        self.options = options or ServeOptions()
        self.notifier = notifier or Notifier(None)
        self.wake = wake if wake is not None else asyncio.Event()
        self.clock = clock
        self.stop_event = asyncio.Event()
        self.retry_event = asyncio.Event()
        self.health = HealthState(self.options.stale_after, clock)
        self.probe = DatabaseProbe(self.store.engine)
        self.summary = ServeSummary()
        self.ready = asyncio.Event()
        """Set once READY=1 has been sent: the listener is up and the database answered."""
        self.url: str | None = None
        self.log = get_logger()
        self._run_stop: asyncio.Event | None = None
        self._run_started = 0.0
        self._token_retry_at: float | None = None
        self._retry_requested = False
        self._status = ""
        self._counts: dict[str, int] = {}
        self.sweeper: Sweeper | None = None
        """The drift sweep, with ``verify_interval`` set (:mod:`worker.sweep`)."""
        if self.settings.verify_interval is not None:
            self.sweeper = Sweeper(
                self.store,
                dispatcher.client,
                dispatcher.read_limiter,
                self.settings,
                self.metrics,
                blocked=lambda: self.health.token_problem or self.health.database_problem,
            )

    # -- control ---------------------------------------------------------------------------

    def request_stop(self, why: str = "requested") -> None:
        """Stop claiming, drain, exit; what SIGTERM and SIGINT do."""
        if self.stop_event.is_set():
            self.log.info("serve.stop_repeated", why=why)
            return
        self.log.info("serve.stopping", why=why)
        self.health.stopping = True
        self._set_status("stopping", "stopping; letting in-flight requests finish", stopping=True)
        self.stop_event.set()
        if self._run_stop is not None:
            self._run_stop.set()

    def retry_now(self) -> None:
        """After a token rejection, try again at once instead of after the back-off (SIGHUP)."""
        self.log.info("serve.retry_requested")
        self._retry_requested = True
        self.retry_event.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.retry_now)

    # -- life ------------------------------------------------------------------------------

    async def run(self, on_listening: Callable[[str], None] | None = None) -> ServeSummary:
        """Serve until :meth:`request_stop`; READY=1 once the database and listener are up."""
        listener: HttpListener | None = None
        background: list[asyncio.Task[None]] = []
        try:
            if self.options.http_port is not None:
                listener = HttpListener(
                    self.options.http_host,
                    self.options.http_port,
                    self.metrics,
                    self.health,
                    self.probe,
                    status=StatusSource(self.store, (self.settings.api_token(),)),
                )
                self.url = await listener.start()
                self.log.info("serve.listening", url=self.url)
                if on_listening is not None:
                    on_listening(self.url)
            await self._poll(busy=False)  # the database check: DatabaseError if it fails
            dispatcher = self.dispatcher
            try:
                await dispatcher.register("serve")
                background.append(asyncio.create_task(self._idle_heartbeat(dispatcher)))
                if self.sweeper is not None:  # reads only, within its share; stops with SIGTERM
                    background.append(asyncio.create_task(self.sweeper.run(self.stop_event)))
                if self.settings.retention_days is not None:  # prune at start, then daily
                    days = self.settings.retention_days
                    background.append(asyncio.create_task(prune_daily(self.store.engine, days)))
                if self.options.watchdog_interval is not None:
                    interval = self.options.watchdog_interval
                    background.append(asyncio.create_task(self._watchdog(interval)))
                self._announce_ready()
                await self._loop(dispatcher)
            finally:
                await self._leave_registry(dispatcher)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if listener is not None:
                await listener.stop()
        self.notifier.status("stopped")
        self.log.info(
            "serve.stopped", runs=self.summary.runs, unauthorized_runs=self.summary.token_rejections
        )
        return self.summary

    def _announce_ready(self) -> None:
        self.health.tick()
        self.health.activity = "idle"
        self._status = self._idle_text()
        self.notifier.ready(self._status)
        self.ready.set()
        self.log.info(
            "serve.ready",
            poll_interval_s=self.options.poll_interval,
            watchdog_interval_s=self.options.watchdog_interval,
            url=self.url,
        )

    async def _leave_registry(self, dispatcher: Dispatcher) -> None:
        try:
            await asyncio.wait_for(dispatcher.close(), DATABASE_TIMEOUT)
        except (SyncError, TimeoutError) as exc:
            # The registry will count this worker as dead soon enough.
            self.log.warning("serve.deregister_failed", error=str(exc) or "timed out")

    async def _loop(self, dispatcher: Dispatcher) -> None:
        run_task: asyncio.Task[RunReport] | None = None
        while True:
            self.health.tick()
            if run_task is not None and run_task.done():
                self._run_finished(run_task)
                run_task = None
                self._run_stop = None
            if self.stop_event.is_set():
                if run_task is None:
                    return
                if self._run_stop is not None:
                    self._run_stop.set()
            else:
                due = await self._poll_safely(busy=run_task is not None)
                if self.stop_event.is_set():
                    pass  # stopped while polling: start nothing, say nothing more
                elif run_task is None:
                    if due and self._may_start():
                        run_task = self._start_run(dispatcher)
                    elif not due and self._healthy():
                        # Nothing due and nothing wrong: as good as a run that drained.
                        self.metrics.last_success.set(time.time())
                    self._show(run_task)
                else:
                    if self.clock() - self._run_started > self.options.max_run_seconds:
                        self._rotate()
                    self._show(run_task)
            await self._wait(run_task)

    def _start_run(self, dispatcher: Dispatcher) -> asyncio.Task[RunReport]:
        self._run_stop = asyncio.Event()
        self._run_started = self.clock()
        return asyncio.create_task(dispatcher.run(self._run_stop, command="serve"))

    def _rotate(self) -> None:
        if self._run_stop is not None and not self._run_stop.is_set():
            self.log.info("serve.run_rotated", max_run_seconds=self.options.max_run_seconds)
            self._run_stop.set()

    def _run_finished(self, task: asyncio.Task[RunReport]) -> None:
        try:
            report = task.result()
        except SyncError as exc:
            # The dispatcher has released what it could; leases cover the rest.
            self.log.error("serve.run_failed", error=str(exc), error_type=type(exc).__name__)
            if isinstance(exc, DatabaseError):
                self.health.database_problem = str(exc)
            return
        self.summary.runs += 1
        self.summary.last_report = report
        if report.ended_because is RunEnding.TOKEN_REJECTED:
            self.summary.token_rejections += 1
            self._token_retry_at = self.clock() + self.options.token_retry_interval
            self.health.token_problem = (
                f"rejected (401) in run {report.run_id}; retrying every "
                f"{self.options.token_retry_interval:g} s or on SIGHUP"
            )
            self.log.error(
                "serve.token_rejected",
                run_id=report.run_id,
                retry_in_s=self.options.token_retry_interval,
            )
        elif self.health.token_problem is not None:
            self.log.info("serve.token_accepted", run_id=report.run_id)
            self.health.token_problem = None

    def _may_start(self) -> bool:
        """False while backing off after a token rejection."""
        if self._token_retry_at is None:
            return True
        if self._retry_requested or self.clock() >= self._token_retry_at:
            self._retry_requested = False
            self._token_retry_at = None
            self.log.info("serve.token_retry")
            return True
        return False

    def _healthy(self) -> bool:
        return self.health.database_problem is None and self.health.token_problem is None

    # -- polling ---------------------------------------------------------------------------

    async def _poll_safely(self, *, busy: bool) -> bool:
        try:
            due = await asyncio.wait_for(self._poll(busy=busy), DATABASE_TIMEOUT)
        except (DatabaseError, TimeoutError) as exc:
            problem = str(exc) or f"database did not answer within {DATABASE_TIMEOUT:g} s"
            if self.health.database_problem is None:
                self.log.error("serve.database_error", error=problem)
            self.health.database_problem = problem
            return False
        if self.health.database_problem is not None:
            self.log.info("serve.database_recovered")
            self.health.database_problem = None
        return due

    async def _poll(self, *, busy: bool) -> bool:
        """Refresh the queue gauges; True when a change is due now (only asked when idle)."""
        # The probe reads; a failed heartbeat (a write) says the database cannot be written.
        self.health.write_problem = self.dispatcher.keeper.problem
        problem = await self.probe.problem()
        if problem is not None:
            raise DatabaseError(problem)
        self._counts = await refresh_queue_metrics(self.store, self.metrics)
        self.dispatcher.export_rates()
        now = datetime.now(UTC)
        if busy:
            return False
        return await self.store.next_due(now, now) is not None

    async def _wait(self, run_task: asyncio.Task[RunReport] | None) -> None:
        timeout = self.options.poll_interval
        if self._token_retry_at is not None and run_task is None:
            timeout = min(timeout, max(self._token_retry_at - self.clock(), 0.0))
        # While a run goes, it claims what is inserted by itself: a wake-up (every insert on
        # PostgreSQL, every commit, the run's own included, on SQLite) would only count the
        # whole outbox again for the gauges. They refresh every poll, and at the run's end.
        events = [self.retry_event, self.stop_event]
        if run_task is None:
            events.insert(0, self.wake)
        if self.stop_event.is_set():
            if run_task is None:
                return  # stopped while polling: nothing to wait for
            # Draining: only the run's end (or the timeout, to tick) may wake the loop; the
            # set stop event would wake it at once, again and again.
            events = [self.retry_event]
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(event.wait()) for event in events
        ]
        try:
            await asyncio.wait(
                [*waiters, *([run_task] if run_task is not None else [])],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self.wake.clear()
        self.retry_event.clear()
        if self._token_retry_at is None:
            self._retry_requested = False  # a SIGHUP with no rejection to retry

    async def _idle_heartbeat(self, dispatcher: Dispatcher) -> None:
        """Keep the worker registry's heartbeat going while no run does it."""
        failing = False
        while True:
            await asyncio.sleep(dispatcher.heartbeat_interval)
            if self._run_stop is not None or self.stop_event.is_set():
                continue  # a run heartbeats by itself
            try:
                await asyncio.wait_for(dispatcher.heartbeat(), DATABASE_TIMEOUT)
            except (SyncError, TimeoutError) as exc:
                if not failing:
                    self.log.warning("serve.heartbeat_failed", error=str(exc) or "timed out")
                failing = True
            else:
                failing = False

    # -- reporting -------------------------------------------------------------------------

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every ``interval`` while the loop ticks; withheld when it is stuck."""
        withheld = False
        while True:
            if self.health.alive():
                self.notifier.watchdog()
                if withheld:
                    self.log.info("serve.watchdog_resumed")
                    withheld = False
            elif not withheld:
                withheld = True
                self.log.error(
                    "serve.watchdog_withheld", last_tick_age_s=round(self.health.tick_age(), 1)
                )
            await asyncio.sleep(interval)

    def _show(self, run_task: asyncio.Task[RunReport] | None) -> None:
        pending = self._counts.get(State.PENDING, 0)
        if run_task is not None:
            in_flight = self._counts.get(State.IN_FLIGHT, 0)
            self._set_status("syncing", f"syncing; {pending} pending, {in_flight} in flight")
        elif self.health.database_problem is not None:
            self._set_status("database_error", f"database error: {self.health.database_problem}")
        elif self._token_retry_at is not None:
            wait = max(self._token_retry_at - self.clock(), 0.0)
            self._set_status(
                "token_rejected", f"token rejected (401); retry in {wait:.0f} s or on SIGHUP"
            )
        else:
            self._set_status("idle", self._idle_text())

    def _idle_text(self) -> str:
        return f"idle; {self._counts.get(State.PENDING, 0)} pending"

    def _set_status(self, activity: str, text: str, *, stopping: bool = False) -> None:
        self.health.activity = activity
        text = text[:200]
        if text == self._status:
            return
        self._status = text
        if not stopping:
            self.notifier.status(text)
        else:
            self.notifier.stopping(text)
