"""Seeded fault decisions: reproducibility, precedence, bursts, live replacement."""

from __future__ import annotations

from collections import Counter

import pytest

from worker.sandbox.config import ApplyThenFailMode, ConfigError, FaultConfig
from worker.sandbox.faults import ERROR_STATUSES, FaultDecision, FaultInjector, FaultKind


def decisions(config: FaultConfig, n: int = 200, step: float = 0.01) -> list[FaultDecision]:
    injector = FaultInjector(config)
    return [injector.decide(i * step) for i in range(n)]


MIXED = FaultConfig(
    error_rate=0.1, hang_rate=0.1, drop_rate=0.1, apply_then_fail_rate=0.1, seed=1234
)


def test_same_seed_same_sequence() -> None:
    assert decisions(MIXED) == decisions(MIXED)
    assert decisions(MIXED) != decisions(FaultConfig(**{**MIXED.to_json(), "seed": 99}))


def test_every_kind_occurs_at_about_its_rate() -> None:
    counts = Counter(d.kind for d in decisions(MIXED, n=4000))
    for kind in (FaultKind.ERROR, FaultKind.HANG, FaultKind.DROP, FaultKind.APPLY_THEN_FAIL):
        assert 150 < counts[kind] < 550, counts
    assert counts[FaultKind.NONE] > 2000


def test_no_faults_by_default() -> None:
    assert {d.kind for d in decisions(FaultConfig(seed=1))} == {FaultKind.NONE}
    assert not FaultConfig().active
    assert MIXED.active


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (FaultConfig(error_rate=1.0), FaultKind.ERROR),
        (FaultConfig(hang_rate=1.0), FaultKind.HANG),
        (FaultConfig(drop_rate=1.0), FaultKind.DROP),
        (FaultConfig(apply_then_fail_rate=1.0), FaultKind.APPLY_THEN_FAIL),
        (FaultConfig(burst_429_rate=1.0), FaultKind.BURST_429),
    ],
)
def test_rate_one_always_fires(config: FaultConfig, kind: FaultKind) -> None:
    assert {d.kind for d in decisions(config, n=50)} == {kind}


def test_error_codes_are_drawn_from_500_502_503() -> None:
    codes = Counter(d.status for d in decisions(FaultConfig(error_rate=1.0, seed=3), n=600))
    assert set(codes) == set(ERROR_STATUSES)


def test_precedence_error_before_hang_before_drop() -> None:
    everything = FaultConfig(error_rate=1.0, hang_rate=1.0, drop_rate=1.0, apply_then_fail_rate=1.0)
    assert {d.kind for d in decisions(everything, n=20)} == {FaultKind.ERROR}
    assert {d.kind for d in decisions(FaultConfig(hang_rate=1.0, drop_rate=1.0), n=20)} == {
        FaultKind.HANG
    }


def test_one_rate_does_not_shift_the_others() -> None:
    errors_only = FaultConfig(error_rate=0.3, seed=8)
    with_drops = FaultConfig(error_rate=0.3, drop_rate=0.3, seed=8)
    a = [d.kind == FaultKind.ERROR for d in decisions(errors_only)]
    b = [d.kind == FaultKind.ERROR for d in decisions(with_drops)]
    assert a == b


def test_hang_and_latency_carry_their_durations() -> None:
    [decision] = decisions(FaultConfig(hang_rate=1.0, hang_seconds=7.5, latency_ms=40), n=1)
    assert decision.hang and decision.hang_seconds == 7.5
    assert decision.latency == pytest.approx(0.04)
    [plain] = decisions(FaultConfig(latency_ms=40), n=1)
    assert plain.kind is FaultKind.NONE
    assert plain.latency == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("mode", "hangs"),
    [
        (ApplyThenFailMode.ERROR, {False}),
        (ApplyThenFailMode.HANG, {True}),
        (ApplyThenFailMode.MIXED, {False, True}),
    ],
)
def test_apply_then_fail_modes(mode: ApplyThenFailMode, hangs: set[bool]) -> None:
    config = FaultConfig(apply_then_fail_rate=1.0, apply_then_fail_mode=mode, seed=2)
    assert {d.hang for d in decisions(config, n=100)} == hangs


def test_a_burst_answers_429_for_its_whole_length() -> None:
    injector = FaultInjector(FaultConfig(burst_429_rate=1.0, burst_seconds=0.5))
    assert injector.decide(10.0).kind is FaultKind.BURST_429
    injector.replace(FaultConfig(burst_429_rate=0.0, burst_seconds=0.5))
    assert injector.decide(10.1).kind is FaultKind.NONE

    injector = FaultInjector(FaultConfig(burst_429_rate=0.05, burst_seconds=0.5, seed=4))
    kinds = [(t / 100, injector.decide(t / 100).kind) for t in range(2000)]
    starts = [
        t
        for i, (t, k) in enumerate(kinds)
        if k is FaultKind.BURST_429 and (i == 0 or kinds[i - 1][1] is not FaultKind.BURST_429)
    ]
    assert starts
    for start in starts:
        inside = [k for t, k in kinds if start <= t < start + 0.5]
        assert set(inside) == {FaultKind.BURST_429}


def test_replace_reseeds_only_with_a_seed() -> None:
    injector = FaultInjector(FaultConfig(error_rate=0.5, seed=11))
    first = [injector.decide(0).kind for _ in range(20)]
    injector.replace(FaultConfig(error_rate=0.5, seed=11))
    assert [injector.decide(0).kind for _ in range(20)] == first
    injector.replace(FaultConfig(error_rate=0.5))
    assert injector.config.seed is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"hang_seconds": -1},
        {"latency_ms": float("nan")},
        {"apply_then_fail_mode": "sometimes"},
    ],
)
def test_invalid_fault_config(kwargs: dict[str, object]) -> None:
    with pytest.raises((ConfigError, ValueError)):
        FaultConfig(**kwargs)  # type: ignore[arg-type]


def test_fault_config_json_round_trip() -> None:
    config = FaultConfig(error_rate=0.2, apply_then_fail_mode=ApplyThenFailMode.HANG, seed=5)
    assert FaultConfig.from_json(config.to_json()) == config
    assert FaultConfig.from_json({}) == FaultConfig()
    bad: object
    for bad in (
        [],
        {"bogus": 1},
        {"seed": 1.5},
        {"error_rate": "0.1"},
        {"hang_rate": True},
        {"apply_then_fail_mode": ["x"]},
    ):
        with pytest.raises(ConfigError):
            FaultConfig.from_json(bad)
