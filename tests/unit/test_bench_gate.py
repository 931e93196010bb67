"""The benchmark gate's comparison (tests/bench/gate.py): pure, no benchmark is run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

GATE = Path(__file__).resolve().parents[1] / "bench" / "gate.py"


@pytest.fixture(scope="module")
def gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gate", GATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASELINE = {
    "overhead.sqlite": {"worker_bare_ratio": 0.5, "worker_cpu_us_per_change": 200.0},
    "scaleout_slow.latency": {"four_vs_one_ratio": 4.0},
}


def test_within_tolerance_passes(gate: ModuleType) -> None:
    current = {
        "overhead.sqlite": {"worker_bare_ratio": 0.41, "worker_cpu_us_per_change": 900.0},
        "scaleout_slow.latency": {"four_vs_one_ratio": 3.3},
    }
    assert gate.compare(BASELINE, current) == []


def test_a_drop_of_more_than_20_percent_names_the_figure(gate: ModuleType) -> None:
    current = {
        "overhead.sqlite": {"worker_bare_ratio": 0.39},
        "scaleout_slow.latency": {"four_vs_one_ratio": 4.2},
    }
    (problem,) = gate.compare(BASELINE, current)
    assert problem.startswith("overhead.sqlite.worker_bare_ratio: 0.390, 22% below")


def test_a_figure_may_have_its_own_tolerance(gate: ModuleType) -> None:
    baseline = {"b.shared": {"achieved_ratio": 0.98}}
    current = {"b.shared": {"achieved_ratio": 0.80}}
    assert gate.compare(baseline, current) == []
    (problem,) = gate.compare(baseline, current, tolerances={"b.shared.achieved_ratio": 0.1})
    assert "(allowed: 10%, floor 0.882)" in problem


def test_only_ratios_are_gated_and_a_missing_ratio_fails(gate: ModuleType) -> None:
    current = {"overhead.sqlite": {"worker_bare_ratio": 0.5, "worker_cpu_us_per_change": 1e9}}
    (problem,) = gate.compare(BASELINE, current)
    assert problem.startswith("scaleout_slow.latency.four_vs_one_ratio: missing")


def test_baseline_is_the_median_per_figure(gate: ModuleType) -> None:
    runs = [
        {"figures": {"a": {"x_ratio": 1.0}}, "commit": "c1", "date": "d1"},
        {"figures": {"a": {"x_ratio": 3.0}}, "commit": "c1", "date": "d2"},
        {"figures": {"a": {"x_ratio": 2.0}, "b": {"y_ratio": 5.0}}, "commit": "c2", "date": "d3"},
    ]
    doc = gate.baseline_document(runs)
    assert doc["figures"] == {"a": {"x_ratio": 2.0}, "b": {"y_ratio": 5.0}}
    assert doc["commits"] == ["c1", "c2"]


def test_check_exit_codes(gate: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = {"figures": BASELINE, "commits": ["abc"], "tolerance": 0.2}
    good = {"figures": {k: dict(v) for k, v in BASELINE.items()}}
    assert gate.check(baseline, good) == 0
    bad = {"figures": {"overhead.sqlite": {"worker_bare_ratio": 0.1}}}
    assert gate.check(baseline, bad) == 1
    out = capsys.readouterr().out
    assert "bench-check FAILED" in out and "overhead.sqlite.worker_bare_ratio" in out
