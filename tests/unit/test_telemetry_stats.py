"""Telemetry arithmetic (histograms, windows, SLI counts, health, submit-to-start time)."""

from __future__ import annotations

import itertools
import math

import pytest

from orchestrator.models import ProductionMetrics, SLATarget, SystemHealth
from orchestrator.monitoring.slo import WindowCounts
from orchestrator.monitoring.stats import (
    LATENCY_BOUNDS_MS,
    OVERFLOW,
    assess_health,
    availability_fields,
    bucket_index,
    client_label,
    count_above,
    flag_clients,
    parse_fields,
    quantile,
    run_fields,
    run_figures,
    sum_fields,
    window_counts,
)
from orchestrator.store.monitoring import window_slots
from orchestrator.store.telemetry import delegation_ms


def idx(ms: float) -> int:
    return LATENCY_BOUNDS_MS.index(ms)


def test_bounds_are_increasing_and_hold_the_exporter_bounds():
    assert list(LATENCY_BOUNDS_MS) == sorted(set(LATENCY_BOUNDS_MS))
    for exact in (0.1, 1, 2.5, 5, 10, 250, 1000, 5000, 50_000, 1e8):
        assert exact in LATENCY_BOUNDS_MS
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BOUNDS_MS)]
    assert max(ratios) <= 1.34


@pytest.mark.parametrize(
    "value,expected",
    [
        (0.0, 0),
        (-3.0, 0),
        (0.1, 0),
        (0.11, 1),
        (1.0, idx(1.0)),
        (1.01, idx(1.25)),
        (999.9, idx(1000.0)),
        (1000.0, idx(1000.0)),
        (1e8, OVERFLOW - 1),
        (1e9, OVERFLOW),
    ],
)
def test_bucket_index(value, expected):
    assert bucket_index(value) == expected


@pytest.mark.parametrize(
    "hist,q,expected",
    [
        ({}, 0.5, None),
        ({idx(100.0): 10}, 0.5, 90.0),  # bucket (80, 100]: halfway
        ({idx(100.0): 10}, 1.0, 100.0),
        ({idx(100.0): 10}, 0.0, 80.0),
        ({0: 10}, 0.5, 0.05),  # first bucket starts at 0
        ({idx(10.0): 95, idx(1000.0): 5}, 0.95, 10.0),
        ({idx(10.0): 94, idx(1000.0): 6}, 0.95, 800 + 200 * (1 / 6)),
        ({OVERFLOW: 3}, 0.99, 1e8),
    ],
)
def test_quantile(hist, q, expected):
    got = quantile(hist, q)
    assert got == (None if expected is None else pytest.approx(expected))


def test_quantile_rejects_q_outside_0_1():
    with pytest.raises(ValueError):
        quantile({0: 1}, 1.5)


@pytest.mark.parametrize(
    "hist,threshold,expected",
    [
        ({idx(100.0): 10}, 100.0, 0.0),
        ({idx(100.0): 10}, 80.0, 10.0),
        ({idx(100.0): 10}, 90.0, 5.0),
        ({idx(10.0): 90, idx(5000.0): 10}, 1000.0, 10.0),
        ({OVERFLOW: 2}, 5000.0, 2.0),
        ({}, 1.0, 0.0),
    ],
)
def test_count_above(hist, threshold, expected):
    assert count_above(hist, threshold) == pytest.approx(expected)


def test_run_fields_round_trip_through_parse():
    buckets = [
        run_fields("echo", "ok", 12.0, 3.0),
        run_fields("echo", "fail", 600.0, None, recovering=True),
        run_fields("sleep", "ok", 2000.0, 10.0),
        availability_fields([(["echo"], True), (["echo", "sleep"], False)]),
    ]
    stats = parse_fields(sum_fields(buckets))
    echo = stats.of("echo")
    assert (echo.ok, echo.fail, echo.rec, echo.runs) == (1, 1, 1, 2)
    assert echo.latency == {bucket_index(12.0): 1, bucket_index(600.0): 1}
    assert echo.delegation == {bucket_index(3.0): 1}
    assert echo.lsum == 612_000 and echo.dsum == 3000
    every = stats.of(None)
    assert (every.ok, every.fail, every.runs) == (2, 1, 3)
    assert stats.of("missing").runs == 0
    assert stats.availability == {"*": (1, 2), "echo": (1, 2), "sleep": (0, 1)}


def test_parse_ignores_unknown_fields():
    stats = parse_fields({"echo|ok": 2, "echo|weird": 5, "~avail|x": 1, "echo|l|x": 3})
    assert stats.of("echo").ok == 2 and stats.availability == {}


def test_run_fields_rejects_unknown_outcome():
    with pytest.raises(ValueError):
        run_fields("echo", "maybe", 1.0, None)


def target(sli, objective, task_type=None):
    return SLATarget(name="t", sli=sli, objective=objective, task_type=task_type)


def stats_with(ok=0, fail=0, fast=0, slow=0, avail=None):
    fields = {"echo|ok": ok, "echo|fail": fail, "other|ok": 100}
    if fast:
        fields[f"echo|l|{bucket_index(50.0)}"] = fast
    if slow:
        fields[f"echo|l|{bucket_index(5000.0)}"] = slow
    for cap, (good, total) in (avail or {}).items():
        fields[f"~avail|{cap}|good"], fields[f"~avail|{cap}|total"] = good, total
    return parse_fields(fields)


@pytest.mark.parametrize(
    "t,stats,expected",
    [
        # higher is better: floors
        (
            target("success_rate", 0.99, "echo"),
            stats_with(ok=98, fail=2),
            WindowCounts(good=98, total=100),
        ),
        (
            target("success_rate", 0.99),
            stats_with(ok=98, fail=2),
            WindowCounts(good=198, total=200),
        ),
        (
            target("availability", 0.999),
            stats_with(avail={"*": (9, 10)}),
            WindowCounts(good=9, total=10),
        ),
        (
            target("availability", 0.999, "echo"),
            stats_with(avail={"*": (9, 10), "echo": (4, 4)}),
            WindowCounts(good=4, total=4),
        ),
        # lower is better: ceilings
        (
            target("error_rate", 0.05, "echo"),
            stats_with(ok=90, fail=10),
            WindowCounts(good=90, total=100),
        ),
        (
            target("latency_p95_ms", 1000, "echo"),
            stats_with(fast=90, slow=10),
            WindowCounts(
                good=90,
                total=100,
                value=quantile({bucket_index(50.0): 90, bucket_index(5000.0): 10}, 0.95),
            ),
        ),
        (
            target("latency_p99_ms", 1000, "echo"),
            stats_with(),
            WindowCounts(good=0, total=0, value=None),
        ),
    ],
)
def test_window_counts(t, stats, expected):
    assert window_counts(t, stats) == expected


def test_run_figures():
    stats = stats_with(ok=90, fail=10, fast=100)
    fig = run_figures(stats.of("echo"), 50.0)
    assert (fig.succeeded, fig.failed, fig.error_rate, fig.throughput_per_s) == (90, 10, 0.1, 2.0)
    assert 40 < fig.p50 <= 50 and fig.p95 <= 50 and fig.delegation_p95 == 0.0
    idle = run_figures(stats_with().of("echo"), 60.0)
    assert (idle.error_rate, idle.throughput_per_s, idle.p95) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "metrics,severities,expected",
    [
        ({"agents_active": 2}, [], SystemHealth.HEALTHY),
        ({"agents_active": 0}, [], SystemHealth.CRITICAL),
        ({"agents_active": 2}, ["critical"], SystemHealth.CRITICAL),
        ({"agents_active": 2}, ["warning"], SystemHealth.DEGRADED),
        ({"agents_active": 2, "error_rate": 0.06}, [], SystemHealth.DEGRADED),
        ({"agents_active": 2, "error_rate": 0.05}, [], SystemHealth.HEALTHY),
        ({"agents_active": 2, "parked_tasks": 1}, [], SystemHealth.DEGRADED),
        ({"agents_active": 2, "circuits_open": 1}, [], SystemHealth.DEGRADED),
    ],
)
def test_assess_health(metrics, severities, expected):
    assert assess_health(ProductionMetrics(**metrics), severities) is expected


def test_flag_clients():
    assert flag_clients({"a": 3, "b": 2, "c": 9}, 3) == {"a": 3, "c": 9}
    assert flag_clients({}, 1) == {}


@pytest.mark.parametrize(
    "attempt,submitted,started,expected",
    [
        (1, 1000.0, 1000.1, pytest.approx(100.0)),
        # a retry says nothing about how fast the task was handed out
        (2, 1000.0, 1000.1, None),
        (1, None, 1000.1, None),
        # clocks of two machines a little apart never give a negative time
        (1, 1000.2, 1000.1, 0.0),
    ],
)
def test_delegation_ms(attempt, submitted, started, expected):
    assert delegation_ms(attempt, submitted, started) == expected


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, "anonymous"),
        ("svc-1", "svc-1"),
        ("a b", "invalid"),
        (3, "invalid"),
        ("x" * 200, "invalid"),
    ],
)
def test_client_label(value, expected):
    assert client_label(value) == expected


@pytest.mark.parametrize(
    "window,now,expected",
    [
        (300, 1000.5, ("m", 12, 16)),
        (60, 1200.0, ("m", 20, 20)),
        (21_600, 36_000.0, ("m", 241, 600)),
        (259_200, 3_600_000.0, ("h", 929, 1000)),
        (10**9, 3_600_000.0, ("h", 1000 - 31 * 24 + 1, 1000)),
    ],
)
def test_window_slots(window, now, expected):
    assert window_slots(window, now) == expected


def test_nan_free_defaults():
    assert not math.isnan(run_figures(stats_with().of(None), 0.0).throughput_per_s)
