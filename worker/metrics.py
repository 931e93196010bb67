"""Prometheus metrics, on a registry of their own so that tests and processes don't share one."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile

NAMESPACE = "kantata_sync"


class Metrics:
    """Every metric kantata-sync exports, documented in the README."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.changes = Counter(
            f"{NAMESPACE}_changes_total",
            "Changes finished, by kind, final state and outcome",
            ["kind", "state", "outcome"],
            registry=r,
        )
        self.requests = Counter(
            f"{NAMESPACE}_http_requests_total",
            "HTTP requests to Kantata OX, by endpoint and status code (none: no response)",
            ["endpoint", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{NAMESPACE}_http_request_duration_seconds",
            "Duration of HTTP requests to Kantata OX",
            ["endpoint"],
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
            f"{NAMESPACE}_queue_depth", "Changes in the outbox by state", ["state"], registry=r
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

        # Labelled children, looked up once: ``labels()`` costs more than the increment.
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._change_children: dict[tuple[str, str, str], Any] = {}

    def request(self, endpoint: str, code: str, seconds: float) -> None:
        """Count one HTTP request and observe its duration."""
        children = self._request_children.get((endpoint, code))
        if children is None:
            children = self._request_children[endpoint, code] = (
                self.requests.labels(endpoint, code),
                self.request_duration.labels(endpoint),
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

    def write_textfile(self, path: str) -> None:
        """Write the registry for node_exporter's textfile collector, atomically."""
        write_to_textfile(path, self.registry)
