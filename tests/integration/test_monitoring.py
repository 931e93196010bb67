"""The Grafana dashboard and the alert rules ask only for what a real ``/metrics`` exports.

A real daemon syncs a small queue against the sandbox (with faults, 403s and 429s, so that
every labelled series exists) and is scraped over HTTP; every metric name the dashboard's and
the rules' PromQL use must be among the scraped samples, with the labels they select and
aggregate by.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import migrated_store
from worker.changes import State
from worker.client import KantataClient
from worker.daemon import Daemon, ServeOptions
from worker.metrics import Metrics
from worker.runtime import dispatcher_for
from worker.sandbox import SandboxConfig, running_sandbox
from worker.sandbox.config import FaultConfig

from .pipeline_helpers import fast_settings, status, update

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "kantata-sync.json"
RULES = DEPLOY / "prometheus" / "kantata-sync.rules.yml"
NAME = re.compile(r"\b((?:kantata_sync|process|python)_[a-z_]+)\b")
SELECTOR = re.compile(r"\b((?:kantata_sync|process|python)_[a-z_]+)\{([^}]*)\}")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
TARGET_LABELS = {"job", "instance"}
"""Added by Prometheus at scrape time."""


async def _scrape(database: Path) -> str:
    faults = FaultConfig(error_rate=0.1, burst_429_rate=0.05, seed=11)
    config = SandboxConfig(inspect=True, forbidden=frozenset({4}), faults=faults)
    async with (
        running_sandbox(config) as sandbox,
        migrated_store(f"sqlite+aiosqlite:///{database}") as store,
    ):
        await store.enqueue(
            [c for w in range(1, 16) for c in (update(w, title="t"), status(w, 310))]
        )
        settings = fast_settings(sandbox, rate_limit=500, max_attempts=20)
        async with KantataClient(
            settings.api_base_url, settings.api_token(), timeout=settings.request_timeout
        ) as client:
            dispatcher = dispatcher_for(settings, store, client, Metrics())
            daemon = Daemon(dispatcher, ServeOptions(poll_interval=0.05, http_port=0))
            task = asyncio.create_task(daemon.run())
            try:
                deadline = time.monotonic() + 30
                while True:
                    counts = await store.counts()
                    if (
                        daemon.ready.is_set()
                        and counts[State.PENDING] + counts[State.IN_FLIGHT] == 0
                        and daemon.health.activity == "idle"
                    ):
                        break
                    assert time.monotonic() < deadline, "the queue did not drain"
                    await asyncio.sleep(0.05)
                assert sandbox.state.stats.total_429 > 0, "no 429: the rate-limited series"
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{daemon.url}/metrics") as response,
                ):
                    assert response.status == 200
                    return await response.text()
            finally:
                daemon.request_stop("test over")
                await asyncio.wait_for(task, 30)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Every sample name a real daemon's /metrics exported, with the labels it carries."""
    text = asyncio.run(_scrape(tmp_path_factory.mktemp("monitoring") / "outbox.db"))
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def template_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def checks(exprs: list[str]) -> Iterator[tuple[str, str, set[str]]]:
    """``(expression, metric, labels it uses)`` for every metric each expression names."""
    for expr in exprs:
        names = set(NAME.findall(expr))
        assert names, expr
        by = {label.strip() for group in BY.findall(expr) for label in group.split(",")}
        for name in names:
            selected = {
                m.group(1)
                for matcher in SELECTOR.finditer(expr)
                if matcher.group(1) == name
                for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", matcher.group(2))
            }
            yield expr, name, selected
        # Every label aggregated by is on one of the expression's metrics (or the target's).
        yield expr, "", by - {""}


def assert_exported(exprs: list[str], exported: dict[str, set[str]]) -> None:
    for expr, name, labels in checks(exprs):
        if name:
            assert name in exported, f"{name} is not exported (in {expr})"
            missing = labels - exported[name] - TARGET_LABELS
            assert not missing, f"{name} has no label {missing} (in {expr})"
        else:
            carried = set().union(*(exported[n] for n in set(NAME.findall(expr))))
            missing = labels - carried - TARGET_LABELS
            assert not missing, f"no metric of {expr} has the label(s) {missing}"


def test_the_dashboard_queries_only_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    assert_exported(dashboard_exprs() + template_queries(), exported)


def test_the_alert_rules_use_only_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    assert_exported(rule_exprs(), exported)


def test_the_label_check_would_catch_a_renamed_label(exported: dict[str, set[str]]) -> None:
    old = 'sum by (endpoint) (rate(kantata_sync_http_requests_total{code="429"}[5m]))'
    with pytest.raises(AssertionError, match="endpoint"):
        assert_exported([old], exported)
    with pytest.raises(AssertionError, match="kantata_sync_queue_depths is not exported"):
        assert_exported(["kantata_sync_queue_depths"], exported)


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("queue depth", r"kantata_sync_queue_depth\b"),
        ("oldest pending age", r"kantata_sync_oldest_pending_age_seconds"),
        ("throughput by outcome", r"by \(state, outcome\) \(rate\(kantata_sync_changes_total"),
        ("HTTP requests by code", r"by \(code\) \(rate\(kantata_sync_http_requests_total"),
        (
            "latency quantiles",
            r"histogram_quantile\(0\.99, .*kantata_sync_http_request_duration_seconds_bucket",
        ),
        ("429 rate", r"rate\(kantata_sync_rate_limited_total"),
        ("rate-limiter wait", r"kantata_sync_rate_limiter_wait_seconds_bucket"),
        ("lost leases", r"kantata_sync_lost_leases_total"),
        ("internal errors", r"kantata_sync_internal_errors_total"),
        ("last success age", r"time\(\) - max.*kantata_sync_last_success_timestamp_seconds"),
    ],
)
def test_the_dashboard_shows(what: str, pattern: str) -> None:
    assert any(re.search(pattern, expr) for expr in dashboard_exprs()), what


def test_the_dashboard_is_one_grafana_can_import() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "kantata-sync" and dashboard["title"] == "kantata-sync"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"]
