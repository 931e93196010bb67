"""What the metrics export: names, labels, no ``*_created``, the process's own, the textfile."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from worker import __version__
from worker.metrics import FINISHED_STATES, QUEUE_STATES, Metrics, split_endpoint


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("PUT /workspaces/{id}", ("PUT", "/workspaces/{id}")),
        ("POST /workspace_status_changes", ("POST", "/workspace_status_changes")),
        ("GET /workspaces/{id}", ("GET", "/workspaces/{id}")),
        ("GET /workspaces", ("GET", "/workspaces")),
        ("get  /workspaces ", ("GET", "/workspaces")),
        ("/workspaces", ("unknown", "/workspaces")),
        ("", ("unknown", "unknown")),
    ],
)
def test_an_endpoint_splits_into_method_and_route(endpoint: str, expected: tuple[str, str]) -> None:
    assert split_endpoint(endpoint) == expected


def test_requests_are_labelled_by_method_route_and_code_never_by_endpoint() -> None:
    metrics = Metrics()
    metrics.request("PUT /workspaces/{id}", "200", 0.02)
    metrics.request("PUT /workspaces/{id}", "200", 0.03)
    metrics.request("POST /workspace_status_changes", "none", 60.0)
    found = samples(scrape(metrics))
    put = (("code", "200"), ("method", "PUT"), ("route", "/workspaces/{id}"))
    post = (("code", "none"), ("method", "POST"), ("route", "/workspace_status_changes"))
    assert found["kantata_sync_http_requests_total", put] == 2
    assert found["kantata_sync_http_requests_total", post] == 1
    put_route = (("method", "PUT"), ("route", "/workspaces/{id}"))
    assert found["kantata_sync_http_request_duration_seconds_count", put_route] == 2
    assert found["kantata_sync_http_request_duration_seconds_sum", put_route] == pytest.approx(0.05)
    assert not any("endpoint" in dict(labels) for _, labels in found)


def test_build_info_is_one_with_the_version() -> None:
    found = samples(scrape(Metrics()))
    assert found["kantata_sync_build_info", (("version", __version__),)] == 1


def test_the_process_metrics_are_exported_by_each_metrics_object() -> None:
    first, second = Metrics(), Metrics()
    for metrics in (first, second):
        names = {name for name, _ in samples(scrape(metrics))}
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
        assert "python_info" in names
        assert any(name.startswith("python_gc_") for name in names)
    bare = {name for name, _ in samples(scrape(Metrics(process_metrics=False)))}
    assert not any(name.startswith(("process_", "python_")) for name in bare)


@pytest.mark.parametrize("render", [generate_latest, openmetrics_latest])
def test_no_created_series_in_either_format(render: object) -> None:
    metrics = Metrics()
    metrics.request("PUT /workspaces/{id}", "200", 0.1)
    metrics.change_finished("status_change", "succeeded", "applied")
    metrics.retries.inc()
    metrics.limiter_wait.observe(0.01)
    assert callable(render)
    text = render(metrics.registry).decode()
    assert "kantata_sync_changes_total" in text
    assert "_created" not in text


def test_dropping_created_series_changes_no_other_registry() -> None:
    """prometheus_client's own switch is process-wide; ours is per Metrics object."""
    Metrics()
    other = CollectorRegistry()
    Counter("other_total", "a counter of someone else's", registry=other).inc()
    assert "other_created" in generate_latest(other).decode()


@pytest.mark.parametrize(
    ("counts", "age", "queue", "finished", "oldest"),
    [
        (
            {"pending": 4, "in_flight": 2, "succeeded": 9, "failed": 1, "invalid": 3},
            12.5,
            {"pending": 4, "in_flight": 2},
            {"succeeded": 9, "failed": 1, "invalid": 3, "cancelled": 0},
            12.5,
        ),
        ({}, -3.0, {"pending": 0, "in_flight": 0}, dict.fromkeys(FINISHED_STATES, 0), 0.0),
    ],
)
def test_queue_depth_is_only_the_states_that_are_a_queue(
    counts: dict[str, int],
    age: float,
    queue: dict[str, int],
    finished: dict[str, int],
    oldest: float,
) -> None:
    metrics = Metrics()
    metrics.queue(counts, age)
    found = samples(scrape(metrics))
    depth = {
        dict(labels)["state"]: value
        for (name, labels), value in found.items()
        if name == "kantata_sync_queue_depth"
    }
    assert depth == queue
    assert set(depth) == set(QUEUE_STATES)
    final = {
        dict(labels)["state"]: value
        for (name, labels), value in found.items()
        if name == "kantata_sync_outbox_finished_changes"
    }
    assert final == finished
    assert found["kantata_sync_oldest_pending_age_seconds", ()] == oldest


def test_two_metrics_objects_count_apart() -> None:
    first, second = Metrics(), Metrics()
    first.retries.inc(3)
    assert samples(scrape(first))["kantata_sync_retries_total", ()] == 3
    assert samples(scrape(second))["kantata_sync_retries_total", ()] == 0


def test_the_textfile_holds_only_kantata_sync_series(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.request("GET /workspaces/{id}", "404", 0.2)
    metrics.queue({"pending": 1, "failed": 2}, 3.0)
    path = tmp_path / "kantata-sync.prom"
    metrics.write_textfile(str(path))
    text = path.read_text()
    names = {name for name, _ in samples(text)}
    assert names and all(name.startswith("kantata_sync_") for name in names)
    assert "kantata_sync_build_info" in names
    assert "kantata_sync_http_requests_total" in names
    assert "_created" not in text
    assert not list(tmp_path.glob("*.prom.*"))  # the temporary file was renamed into place
