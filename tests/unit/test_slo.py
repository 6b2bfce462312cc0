"""SLO arithmetic: compliance, error budgets, burn-rate alerts and the targets file."""

import pytest
from pydantic import ValidationError

from orchestrator.errors import ConfigError
from orchestrator.models import SLATarget
from orchestrator.monitoring.slo import (
    BUILTIN_TARGETS,
    BURN_RATE_POLICIES,
    THIRTY_DAYS,
    SLAReport,
    WindowCounts,
    allowed_bad_ratio,
    budget_consumed,
    burn_rate,
    error_budget_remaining,
    evaluate_burn_alerts,
    evaluate_target,
    is_compliant,
    load_targets,
    merge_targets,
    scaled_policies,
    window_burn_rate,
    window_label,
)

M5, M30, H1, H6, D3 = 300.0, 1800.0, 3600.0, 21_600.0, 259_200.0


def target(sli, objective, **kw):
    return SLATarget(name="t", sli=sli, objective=objective, **kw)


@pytest.mark.parametrize(
    "sli,objective,value,expected",
    [
        ("latency_p95_ms", 1000, 1500, False),
        ("latency_p95_ms", 1000, 500, True),
        ("latency_p95_ms", 1000, 1000, True),
        ("latency_p99_ms", 200, 201, False),
        ("success_rate", 0.99, 0.995, True),
        ("success_rate", 0.99, 0.98, False),
        ("success_rate", 0.99, 0.99, True),
        ("availability", 0.999, 0.9995, True),
        ("availability", 0.999, 0.998, False),
        ("error_rate", 0.05, 0.01, True),
        ("error_rate", 0.05, 0.06, False),
    ],
)
def test_is_compliant(sli, objective, value, expected):
    assert is_compliant(target(sli, objective), value) is expected


@pytest.mark.parametrize(
    "sli,objective,allowed",
    [
        ("success_rate", 0.99, 0.01),
        ("availability", 0.999, 0.001),
        ("error_rate", 0.05, 0.05),
        ("latency_p95_ms", 1000, 0.05),
        ("latency_p99_ms", 1000, 0.01),
    ],
)
def test_allowed_bad_ratio(sli, objective, allowed):
    assert allowed_bad_ratio(target(sli, objective)) == pytest.approx(allowed)


# SRE workbook, chapter 5 (99.9 % over 30 days).
@pytest.mark.parametrize(
    "error_ratio,objective,burn",
    [
        (0.0144, 0.999, 14.4),
        (0.006, 0.999, 6.0),
        (0.001, 0.999, 1.0),
        (0.0, 0.999, 0.0),
        (0.01, 0.99, 1.0),
        (1.0, 0.999, 1000.0),
    ],
)
def test_burn_rate(error_ratio, objective, burn):
    assert burn_rate(error_ratio, objective) == pytest.approx(burn)


def test_burn_rate_needs_a_budget():
    with pytest.raises(ValueError, match="no error budget"):
        burn_rate(0.1, 1.0)


@pytest.mark.parametrize(
    "burn,window_s,consumed",
    [(14.4, H1, 0.02), (6.0, H6, 0.05), (1.0, D3, 0.10), (1.0, THIRTY_DAYS, 1.0)],
)
def test_budget_consumed(burn, window_s, consumed):
    assert budget_consumed(burn, window_s) == pytest.approx(consumed)


@pytest.mark.parametrize(
    "bad,total,allowed,remaining",
    [
        (0, 100, 0.01, 1.0),
        (0.5, 100, 0.01, 0.5),
        (1, 100, 0.01, 0.0),
        (2, 100, 0.01, -1.0),
        (0, 0, 0.01, 1.0),
        # 43.2 minutes of full outage spends all of a 99.9 % budget over 30 days
        (43.2 * 60, THIRTY_DAYS, 0.001, 0.0),
        (21.6 * 60, THIRTY_DAYS, 0.001, 0.5),
    ],
)
def test_error_budget_remaining(bad, total, allowed, remaining):
    assert error_budget_remaining(bad, total, allowed) == pytest.approx(remaining, abs=1e-9)


@pytest.mark.parametrize(
    "seconds,label",
    [
        (M5, "5m"),
        (M30, "30m"),
        (H1, "1h"),
        (H6, "6h"),
        (D3, "3d"),
        (THIRTY_DAYS, "30d"),
        (90, "90s"),
        (5400, "90m"),
        (1.5, "1.5s"),
    ],
)
def test_window_label(seconds, label):
    assert window_label(seconds) == label


def test_policies_are_the_workbook_ones():
    got = [(p.severity, p.threshold, p.long_s, p.short_s) for p in BURN_RATE_POLICIES]
    assert got == [("page", 14.4, H1, M5), ("page", 6.0, H6, M30), ("ticket", 1.0, D3, H6)]


@pytest.mark.parametrize(
    "burns,expected",
    [
        pytest.param({H1: 15, M5: 15}, [("page", "1h")], id="fast burn pages"),
        pytest.param({H1: 15, M5: 2}, [], id="long window alone: already fixed"),
        pytest.param({H1: 2, M5: 100}, [], id="short window alone: a blip"),
        pytest.param({H1: 14.4, M5: 14.4}, [], id="at the threshold is not above"),
        pytest.param({H1: 15}, [], id="no short-window data"),
        pytest.param({H6: 7, M30: 7}, [("page", "6h")], id="slow burn pages"),
        pytest.param({H6: 7, M30: 5}, [], id="slow burn over"),
        pytest.param({D3: 1.5, H6: 1.5}, [("ticket", "3d")], id="ticket"),
        pytest.param(
            {M5: 20, M30: 20, H1: 20, H6: 20, D3: 20},
            [("page", "1h"), ("page", "6h"), ("ticket", "3d")],
            id="everything burns",
        ),
    ],
)
def test_evaluate_burn_alerts(burns, expected):
    alerts = evaluate_burn_alerts(burns)
    assert [(a.severity, a.long_window) for a in alerts] == expected


def test_burn_alert_reports_budget_spent():
    (alert,) = evaluate_burn_alerts({H1: 14.5, M5: 20}, now=123.0)
    assert (alert.short_window, alert.threshold, alert.short_burn, alert.at) == (
        "5m",
        14.4,
        20,
        123.0,
    )
    assert alert.budget_consumed == pytest.approx(14.5 / 720)


def test_scaled_policies():
    assert scaled_policies(THIRTY_DAYS) == BURN_RATE_POLICIES
    week = scaled_policies(7 * 86_400)
    assert [p.threshold for p in week] == pytest.approx([14.4 * 7 / 30, 6 * 7 / 30, 7 / 30])


@pytest.mark.parametrize(
    "sli,objective,counts,burn",
    [
        ("success_rate", 0.99, WindowCounts(good=98, total=100), 2.0),
        ("availability", 0.999, WindowCounts(good=9_856, total=10_000), 14.4),
        ("error_rate", 0.05, WindowCounts(good=90, total=100), 2.0),
        ("latency_p95_ms", 1000, WindowCounts(good=90, total=100, value=1400), 2.0),
        ("latency_p99_ms", 1000, WindowCounts(good=98, total=100, value=1100), 2.0),
        ("success_rate", 0.99, WindowCounts(good=0, total=0), 0.0),
    ],
)
def test_window_burn_rate(sli, objective, counts, burn):
    assert window_burn_rate(target(sli, objective), counts) == pytest.approx(burn)


@pytest.mark.parametrize(
    "sli,objective,counts,value,compliant,remaining",
    [
        ("latency_p95_ms", 1000, WindowCounts(good=80, total=100, value=1500), 1500, False, -3),
        ("latency_p95_ms", 1000, WindowCounts(good=99, total=100, value=500), 500, True, 0.8),
        ("latency_p95_ms", 1000, WindowCounts(good=99, total=100), None, True, 0.8),
        ("success_rate", 0.99, WindowCounts(good=995, total=1000), 0.995, True, 0.5),
        ("success_rate", 0.99, WindowCounts(good=980, total=1000), 0.98, False, -1.0),
        ("error_rate", 0.05, WindowCounts(good=990, total=1000), 0.01, True, 0.8),
        ("error_rate", 0.05, WindowCounts(good=900, total=1000), 0.1, False, -1.0),
        ("availability", 0.999, WindowCounts(good=0, total=0), None, True, 1.0),
    ],
)
def test_evaluate_target_compliance(sli, objective, counts, value, compliant, remaining):
    report = evaluate_target(target(sli, objective), {THIRTY_DAYS: counts}, now=0)
    assert report.value == (pytest.approx(value) if value is not None else None)
    assert report.compliant is compliant
    assert report.error_budget_remaining == pytest.approx(remaining)


def test_evaluate_target_burn_rates_and_alerts():
    # 99.9 %: a 2 % error ratio in the last hour is burn 20; the month is still fine.
    t = SLATarget(name="avail", sli="availability", objective=0.999)
    windows = {
        THIRTY_DAYS: WindowCounts(good=999_500, total=1_000_000),
        D3: WindowCounts(good=99_900, total=100_000),
        H6: WindowCounts(good=9_990, total=10_000),
        H1: WindowCounts(good=980, total=1000),
        M30: WindowCounts(good=495, total=500),
        M5: WindowCounts(good=98, total=100),
    }
    report = evaluate_target(t, windows, now=42)
    assert list(report.burn_rates) == ["5m", "30m", "1h", "6h", "3d", "30d"]
    assert report.burn_rates["1h"] == pytest.approx(20)
    assert report.burn_rates["30m"] == pytest.approx(10)
    assert report.compliant and report.error_budget_remaining == pytest.approx(0.5)
    assert [(a.severity, a.long_window, a.at) for a in report.alerts] == [("page", "1h", 42)]
    assert set(SLAReport.model_fields) == {
        "name",
        "sli",
        "objective",
        "value",
        "compliant",
        "error_budget_remaining",
        "burn_rates",
        "alerts",
    }


def test_evaluate_target_falls_back_to_longest_window():
    t = target("success_rate", 0.99)
    report = evaluate_target(
        t, {H1: WindowCounts(good=9, total=10), D3: WindowCounts(good=100, total=100)}, now=0
    )
    assert (report.value, report.compliant) == (1.0, True)


def test_window_counts_validation():
    with pytest.raises(ValidationError, match="cannot exceed total"):
        WindowCounts(good=2, total=1)


def test_builtin_targets():
    got = {(t.name, t.sli, t.objective, t.window_s) for t in BUILTIN_TARGETS}
    assert got == {
        ("task-success", "success_rate", 0.99, THIRTY_DAYS),
        ("task-latency-p95", "latency_p95_ms", 5000, THIRTY_DAYS),
        ("agent-availability", "availability", 0.999, THIRTY_DAYS),
    }


TARGETS_YAML = """
targets:
  - name: echo-latency
    sli: latency_p95_ms
    objective: 1000
    window_s: 2592000
    task_type: echo
  - name: task-success
    sli: success_rate
    objective: 0.995
"""


def test_load_and_merge_targets():
    custom = load_targets(TARGETS_YAML, "yaml")
    assert [(t.name, t.task_type) for t in custom] == [
        ("echo-latency", "echo"),
        ("task-success", None),
    ]
    merged = merge_targets(BUILTIN_TARGETS, custom)
    assert [t.name for t in merged] == [
        "task-success",
        "task-latency-p95",
        "agent-availability",
        "echo-latency",
    ]
    assert merged[0].objective == 0.995
    assert load_targets('{"targets": []}', "json") == []


def targets_yaml(*entries):
    return "targets:\n" + "".join(f"  - {e}\n" for e in entries)


@pytest.mark.parametrize(
    "entry,message",
    [
        ("{name: a, sli: success_rate, objective: 1.0}", "targets[1].objective: a success_rate"),
        ("{name: a, sli: availability, objective: 99.9}", "targets[1].objective: a availability"),
        ("{name: a, sli: error_rate, objective: 0}", "targets[1].objective:"),
        ("{name: a, sli: latency_p95_ms, objective: 0}", "targets[1].objective: a latency"),
        ("{name: a, sli: latency_p50_ms, objective: 5}", "targets[1].sli: Input should be"),
        ("{name: a, sli: error_rate, objective: 0.1, window_s: 0}", "targets[1].window_s:"),
        ("{name: a, sli: error_rate, objective: 0.1, task_type: Echo!}", "targets[1].task_type:"),
        ("{name: 'a b', sli: error_rate, objective: 0.1}", "targets[1].name: must match"),
        ("{name: a, sli: error_rate, objective: 0.1, slo: 1}", "targets[1].slo: unknown field"),
        ("{name: ok, sli: error_rate, objective: 0.1}", "targets[1].name: duplicate name 'ok'"),
    ],
)
def test_load_targets_errors(entry, message):
    text = targets_yaml("{name: ok, sli: error_rate, objective: 0.1}", entry)
    with pytest.raises(ConfigError, match=r"^sla\.yaml: ") as info:
        load_targets(text, "yaml", source="sla.yaml")
    assert message in str(info.value)
