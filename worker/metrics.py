"""Prometheus metrics, on a registry of their own so that tests and processes don't share one.

Hygiene, per :class:`Metrics` object rather than through prometheus_client's global switches:

- no ``*_created`` series: :class:`ExportRegistry` drops them when it is collected (the
  library's ``disable_created_metrics()`` is process-wide, and would change every registry in a
  test process as a side effect of building one);
- the process's own metrics (``process_*``, ``python_gc_*``, ``python_info``) on ``/metrics``,
  but not in the node_exporter textfile, where they would describe a process that has exited
  and clash with node_exporter's own ``process_*`` series (:meth:`Metrics.write_textfile`
  writes only ``kantata_sync_*``);
- ``kantata_sync_build_info{version}`` = 1;
- HTTP requests labelled by ``method`` and ``route`` (``PUT``, ``/workspaces/{id}``), never by
  a URL with an ID in it;
- ``kantata_sync_queue_depth`` only for the states that are a queue (pending, in flight); the
  final states' row counts are a separate gauge, ``kantata_sync_outbox_finished_changes``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    write_to_textfile,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from . import __version__

if TYPE_CHECKING:
    from .ratelimit import Limiter

NAMESPACE = "kantata_sync"
QUEUE_STATES = ("pending", "in_flight")
"""The states that are a queue: ``kantata_sync_queue_depth`` exports these only."""
FINISHED_STATES = ("succeeded", "failed", "invalid", "cancelled")
"""Final states, counted in ``kantata_sync_outbox_finished_changes``."""
_CREATED_TYPES = frozenset({"counter", "histogram", "summary"})


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """``"PUT /workspaces/{id}"`` as ``("PUT", "/workspaces/{id}")``; no method: ``unknown``."""
    method, _, route = endpoint.strip().partition(" ")
    route = route.strip()
    if not route:
        return "unknown", method or "unknown"
    return method.upper(), route


class ExportRegistry(CollectorRegistry):
    """A registry whose counters, histograms and summaries export no ``*_created`` series."""

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.type in _CREATED_TYPES:
                created = f"{family.name}_created"
                if any(sample.name == created for sample in family.samples):
                    family = copy.copy(family)
                    family.samples = [s for s in family.samples if s.name != created]
            yield family


class _Prefixed:
    """The families of a registry whose names start with a prefix (for the textfile)."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix

    def collect(self) -> Iterable[Metric]:
        return [f for f in self.registry.collect() if f.name.startswith(self.prefix)]


class Metrics:
    """Every metric kantata-sync exports, documented in the README."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True
    ) -> None:
        self.registry = registry if registry is not None else ExportRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.build_info = Gauge(
            f"{NAMESPACE}_build_info",
            "Always 1; the version of kantata-sync in its label",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        self.changes = Counter(
            f"{NAMESPACE}_changes_total",
            "Changes finished, by kind, final state and outcome",
            ["kind", "state", "outcome"],
            registry=r,
        )
        self.requests = Counter(
            f"{NAMESPACE}_http_requests_total",
            "HTTP requests to Kantata OX, by method, route and status code (none: no response)",
            ["method", "route", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{NAMESPACE}_http_request_duration_seconds",
            "Duration of HTTP requests to Kantata OX, by method and route",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180),
            registry=r,
        )
        self.limiter_wait = Histogram(
            f"{NAMESPACE}_rate_limiter_wait_seconds",
            "Time spent waiting for the rate limiter before a request",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.throttled = Counter(
            f"{NAMESPACE}_rate_limited_total", "429 answers from Kantata OX", registry=r
        )
        self.retries = Counter(
            f"{NAMESPACE}_retries_total", "Changes scheduled for another attempt", registry=r
        )
        self.lost_leases = Counter(
            f"{NAMESPACE}_lost_leases_total",
            "Claimed changes this worker found taken over by another (after a stall)",
            registry=r,
        )
        self.internal_errors = Counter(
            f"{NAMESPACE}_internal_errors_total",
            "Changes ended by something unexpected (error_type internal)",
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{NAMESPACE}_queue_depth",
            "Changes waiting in the outbox: pending or in flight (whole database)",
            ["state"],
            registry=r,
        )
        self.finished_changes = Gauge(
            f"{NAMESPACE}_outbox_finished_changes",
            "Changes in the outbox in a final state, by state (whole database; goes down when "
            "changes are retried or rows are deleted)",
            ["state"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            f"{NAMESPACE}_oldest_pending_age_seconds",
            "Age of the oldest pending change (0 when none)",
            registry=r,
        )
        self.last_success = Gauge(
            f"{NAMESPACE}_last_success_timestamp_seconds",
            "Unix time of the last run that completed",
            registry=r,
        )
        self.run_duration = Gauge(
            f"{NAMESPACE}_run_duration_seconds", "Duration of the last run", registry=r
        )
        self.drift_fields = Gauge(
            f"{NAMESPACE}_drift_fields",
            "Fields where Kantata differs from the outbox's desired state, found by the last "
            "completed verify sweep of serve",
            registry=r,
        )
        self.drift_workspaces = Gauge(
            f"{NAMESPACE}_drift_workspaces",
            "Workspaces with at least one drifted field, found by the last completed sweep",
            registry=r,
        )
        self.verify_missing = Gauge(
            f"{NAMESPACE}_verify_missing_workspaces",
            "Synced workspaces Kantata no longer returned in the last completed sweep",
            registry=r,
        )
        self.verify_unreadable = Gauge(
            f"{NAMESPACE}_verify_unreadable_workspaces",
            "Workspaces the last completed sweep could not read (not judged)",
            registry=r,
        )
        self.verify_last_sweep = Gauge(
            f"{NAMESPACE}_verify_last_sweep_timestamp_seconds",
            "Unix time the last verify sweep of serve completed (0: none yet)",
            registry=r,
        )
        self.verify_reads = Counter(
            f"{NAMESPACE}_verify_read_requests_total",
            "Read requests (GET /workspaces) sent by serve's verify sweeps",
            registry=r,
        )

        self.rate_current = Gauge(
            f"{NAMESPACE}_rate_limit_current_per_second",
            "The rate requests are paced at, by endpoint class (all: one fixed budget)",
            ["endpoint_class"],
            registry=r,
        )
        self.rate_learned = Gauge(
            f"{NAMESPACE}_rate_limit_learned_per_second",
            'rate_limit = "auto": the highest rate known to draw no 429, by endpoint class',
            ["endpoint_class"],
            registry=r,
        )
        self.rate_throttled_ratio = Gauge(
            f"{NAMESPACE}_rate_limit_throttled_ratio",
            "The share of this process's rate-limited requests that drew a 429",
            ["endpoint_class"],
            registry=r,
        )

        # Labelled children, looked up once: ``labels()`` costs more than the increment.
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._change_children: dict[tuple[str, str, str], Any] = {}
        self._limiter_children: dict[str, tuple[Any, Any, Any]] = {}

    def limiter(self, limiter: Limiter) -> None:
        """Export a limiter's rate, learned ceiling and 429 share."""
        name = limiter.endpoint_class
        children = self._limiter_children.get(name)
        if children is None:
            children = self._limiter_children[name] = (
                self.rate_current.labels(name),
                self.rate_learned.labels(name),
                self.rate_throttled_ratio.labels(name),
            )
        rate = limiter.rate
        children[0].set(rate if math.isfinite(rate) else 0.0)
        if limiter.learned is not None:
            children[1].set(limiter.learned)
        if limiter.acquired:
            children[2].set(limiter.throttled / limiter.acquired)

    def request(self, endpoint: str, code: str, seconds: float) -> None:
        """Count one HTTP request to ``endpoint`` (``"PUT /workspaces/{id}"``), observe its
        duration; exported with ``method`` and ``route`` labels."""
        children = self._request_children.get((endpoint, code))
        if children is None:
            method, route = split_endpoint(endpoint)
            children = self._request_children[endpoint, code] = (
                self.requests.labels(method, route, code),
                self.request_duration.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def change_finished(self, kind: str, state: str, outcome: str) -> None:
        """Count one change that reached a final state."""
        child = self._change_children.get((kind, state, outcome))
        if child is None:
            child = self._change_children[kind, state, outcome] = self.changes.labels(
                kind, state, outcome
            )
        child.inc()

    def queue(self, counts: Mapping[str, int], oldest_pending_age: float) -> None:
        """Set the outbox gauges from the changes per state and the oldest pending age."""
        for state in QUEUE_STATES:
            self.queue_depth.labels(state).set(counts.get(state, 0))
        for state in FINISHED_STATES:
            self.finished_changes.labels(state).set(counts.get(state, 0))
        self.oldest_pending.set(max(oldest_pending_age, 0.0))

    def swept(
        self,
        *,
        drifted_fields: int,
        drifted_workspaces: int,
        missing: int,
        unreadable: int,
        finished_at: float,
    ) -> None:
        """Set the drift gauges from a verify sweep that completed at ``finished_at``."""
        self.drift_fields.set(drifted_fields)
        self.drift_workspaces.set(drifted_workspaces)
        self.verify_missing.set(missing)
        self.verify_unreadable.set(unreadable)
        self.verify_last_sweep.set(finished_at)

    def write_textfile(self, path: str) -> None:
        """Write the ``kantata_sync_*`` metrics for node_exporter's textfile collector,
        atomically (the process's own metrics stay out: see the module's docstring)."""
        write_to_textfile(path, _Prefixed(self.registry, f"{NAMESPACE}_"))
