"""Profiles: `dev` relaxes what pages an operator, `production` keeps every default.

A variable set explicitly wins over both.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.config import Settings, load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import AlertState
from orchestrator.models import ProductionEventSeverity as Sev
from orchestrator.monitoring.alerting import builtin_rules, evaluate_rule
from orchestrator.monitoring.slo import BUILTIN_TARGETS, builtin_targets, evaluate_target
from orchestrator.monitoring.stats import parse_fields, run_fields, window_counts
from orchestrator.profiles import PROFILES
from orchestrator.security.policy import counter_findings, threats

URL = "redis://127.0.0.1:6399/0"
WINDOWS = (300.0, 1800.0, 3600.0, 21_600.0, 259_200.0, 2_592_000.0)
QUIET: dict[str, Any] = {"rate_limited": {}, "blocked": {}, "blocked_refusals": {}}


def settings(**values: Any) -> Settings:
    return load_settings(redis_url=URL, **values)


def test_production_is_the_default_and_keeps_every_default_as_it_was():
    s = settings()
    assert s.profile == "production"
    assert s.pending_timeout_s == 3600.0
    assert s.profile_defaults.latency_p95_ms == 5000
    assert [(t.name, t.objective) for t in builtin_targets(5000)] == [
        (t.name, t.objective) for t in BUILTIN_TARGETS
    ]
    assert builtin_rules() == builtin_rules(latency_p95_ms=5000)


def test_dev_changes_the_defaults_it_names_and_no_other():
    dev, prod = settings(profile="dev"), settings()
    changed = {
        name
        for name in Settings.model_fields
        if name != "profile" and getattr(dev, name) != getattr(prod, name)
    }
    assert changed == set(PROFILES["dev"].settings) == {"pending_timeout_s"}
    assert dev.pending_timeout_s == 30.0


@pytest.mark.parametrize("profile", ["dev", "production"])
def test_a_variable_set_explicitly_wins_over_the_profile(monkeypatch, profile):
    monkeypatch.setenv("ORCH_PROFILE", profile)
    monkeypatch.setenv("ORCH_PENDING_TIMEOUT_S", "120")
    assert settings().pending_timeout_s == 120.0
    assert settings(pending_timeout_s=7).pending_timeout_s == 7.0


def test_the_profile_is_read_from_orch_profile(monkeypatch):
    monkeypatch.setenv("ORCH_PROFILE", "dev")
    assert (settings().profile, settings().pending_timeout_s) == ("dev", 30.0)
    monkeypatch.setenv("ORCH_PROFILE", "staging")
    with pytest.raises(ConfigError, match="ORCH_PROFILE"):
        settings()


def _twenty_second_task(latency_p95_ms: float) -> list[tuple[str, bool, int]]:
    """(target, compliant, burn alerts) of each built-in target after one 20 s demo task."""
    stats = parse_fields(run_fields("sleep", "ok", 20_000.0, 3.0))
    out = []
    for target in builtin_targets(latency_p95_ms):
        counts = {w: window_counts(target, stats) for w in WINDOWS}
        report = evaluate_target(target, counts, now=1_800_000_000.0)
        out.append((target.name, report.compliant, len(report.alerts)))
    return out


def test_a_20_s_task_breaches_and_burns_the_production_latency_slo_only():
    assert ("task-latency-p95", False, 3) in _twenty_second_task(5000)


def test_under_dev_a_20_s_task_breaches_nothing_and_burns_nothing():
    latency = settings(profile="dev").profile_defaults.latency_p95_ms
    assert all(compliant and alerts == 0 for _, compliant, alerts in _twenty_second_task(latency))


@pytest.mark.parametrize(("profile", "fires"), [("production", True), ("dev", False)])
def test_high_latency_alert_follows_the_profile(profile, fires):
    latency = settings(profile=profile).profile_defaults.latency_p95_ms
    rule = next(r for r in builtin_rules(latency_p95_ms=latency) if r.name == "HighLatencyP95")
    a = evaluate_rule(rule, None, 24_750.0, 0)  # the p95 of one 20 s task, bucketed
    a = evaluate_rule(rule, a, 24_750.0, rule.for_s)
    assert (a is not None and a.state is AlertState.FIRING) is fires


@pytest.mark.parametrize(
    ("profile", "poison", "rejected", "alerting"),
    [
        ("production", Sev.ERROR, Sev.CRITICAL, 2),
        ("dev", Sev.WARNING, Sev.WARNING, 0),
    ],
)
def test_refused_messages_and_rejected_submissions_are_warnings_under_dev(
    profile, poison, rejected, alerting
):
    """An unknown task name is a message refused at a worker's edge (poison); a client over
    the rejection threshold is `rejected_submissions`. Under dev neither is a threat, so the
    SecurityThreat alert (critical) does not fire and health stays healthy."""
    found = counter_findings(
        {"cli": 25},
        threshold=20,
        poison_refused=1,
        window_s=300,
        severities=settings(profile=profile).profile_defaults.finding_severities,
        **QUIET,
    )
    by_id = {f.id: f.severity for f in found}
    assert by_id == {"poison_refused": poison, "rejected_submissions:cli": rejected}
    assert len(threats(found)) == alerting


def test_dev_leaves_the_other_findings_as_they_are():
    found = counter_findings(
        {},
        threshold=20,
        poison_refused=0,
        window_s=300,
        rate_limited={"a": 1},
        blocked={"b": 2.0},
        blocked_refusals={},
        severities=PROFILES["dev"].finding_severities,
    )
    assert {f.id: f.severity for f in found} == {
        "rate_limited:a": Sev.WARNING,
        "client_blocked:b": Sev.WARNING,
    }


def test_every_profile_names_real_settings_and_findings():
    kinds = {"poison_refused", "rejected_submissions", "rate_limited", "client_blocked"}
    for defaults in PROFILES.values():
        assert set(defaults.settings) <= set(Settings.model_fields) - {"profile"}
        assert set(defaults.finding_severities) <= kinds
