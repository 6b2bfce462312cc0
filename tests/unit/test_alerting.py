"""The alert state machine and the rules files, as tables."""

import math

import pytest

from orchestrator.errors import ConfigError
from orchestrator.models import AlertRule, AlertState, ProductionAlert, ProductionMetrics
from orchestrator.monitoring.alerting import (
    BUILTIN_RULES,
    Transition,
    alertmanager_payload,
    builtin_rules,
    compare,
    detect_format,
    evaluate_rule,
    evaluate_rules,
    load_rules,
    merge_rules,
    rfc3339,
    to_alertmanager,
)

P, F, R = AlertState.PENDING, AlertState.FIRING, AlertState.RESOLVED


def make_rule(**kw):
    base = {"name": "TooHigh", "metric": "queue_depth", "op": ">", "threshold": 1}
    return AlertRule.model_validate({**base, **kw})


@pytest.mark.parametrize(
    "value,op,threshold,expected",
    [
        (2, ">", 1, True),
        (1, ">", 1, False),
        (1, ">=", 1, True),
        (0.9, ">=", 1, False),
        (0, "<", 1, True),
        (1, "<", 1, False),
        (1, "<=", 1, True),
        (1.1, "<=", 1, False),
        (1, "==", 1, True),
        (1.5, "==", 1, False),
        (2, "!=", 1, True),
        (1, "!=", 1, False),
    ],
)
def test_compare(value, op, threshold, expected):
    assert compare(value, op, threshold) is expected


def test_compare_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        compare(1, "=>", 1)


# Each step: (now, metric value, expected state or None for "no alert").
@pytest.mark.parametrize(
    "rule_kw,steps",
    [
        pytest.param({}, [(0, 5, F), (30, 5, F)], id="for_s=0 fires at once"),
        pytest.param(
            {"for_s": 60}, [(0, 5, P), (30, 5, P), (60, 5, F), (90, 5, F)], id="pending-to-firing"
        ),
        pytest.param(
            {"for_s": 60}, [(0, 5, P), (30, 0, None), (60, 5, P)], id="pending cleared vanishes"
        ),
        pytest.param({}, [(0, 5, F), (30, 0, R), (60, 0, None)], id="resolved kept once"),
        pytest.param(
            {"keep_firing_for_s": 120},
            [(0, 5, F), (30, 0, F), (90, 0, F), (120, 0, R), (150, 0, None)],
            id="keep_firing_for",
        ),
        pytest.param(
            {"for_s": 60},
            [(0, 5, P), (60, 5, F), (90, 0, R), (120, 5, P), (150, 5, P), (180, 5, F)],
            id="resolved comes back as pending",
        ),
        pytest.param(
            {"for_s": 60},
            [(0, 5, P), (30, 0, None), (60, 5, P), (90, 0, None), (120, 5, P), (150, 0, None)],
            id="flapping never outlasts for_s",
        ),
        pytest.param(
            {},
            [(0, 5, F), (30, 0, R), (60, 5, F), (90, 0, R)],
            id="flapping without hysteresis",
        ),
        pytest.param(
            {"keep_firing_for_s": 60},
            [(0, 5, F), (30, 0, F), (60, 5, F), (90, 0, F), (120, 5, F), (150, 0, F), (180, 0, R)],
            id="flapping held by keep_firing_for",
        ),
        pytest.param({}, [(0, 5, F), (30, None, R)], id="missing metric is false"),
        pytest.param({"op": "!=", "threshold": 1}, [(0, math.nan, None)], id="NaN is false"),
        pytest.param({"op": "<", "threshold": 1}, [(0, None, None), (30, 0, F)], id="missing"),
    ],
)
def test_evaluate_rule_sequence(rule_kw, steps):
    rule = make_rule(**rule_kw)
    alert = None
    for now, value, expected in steps:
        alert = evaluate_rule(rule, alert, value, now)
        assert (alert.state if alert else None) == expected, f"at t={now}"


def test_timestamps_follow_the_episode():
    rule = make_rule(for_s=60)
    a = evaluate_rule(rule, None, 5, 100)
    assert (a.since, a.active_since, a.last_true) == (100, 100, 100)
    a = evaluate_rule(rule, a, 5, 130)
    assert (a.state, a.since, a.active_since, a.last_true) == (P, 100, 100, 130)
    a = evaluate_rule(rule, a, 7, 160)
    assert (a.state, a.since, a.active_since, a.value) == (F, 160, 100, 7)
    a = evaluate_rule(rule, a, 0, 190)
    assert (a.state, a.since, a.resolved_at, a.last_true, a.active_since) == (R, 190, 190, 160, 100)


def test_labels_annotations_and_acknowledged():
    rule = make_rule(
        for_s=30, severity="critical", labels={"team": "ops"}, annotations={"summary": "s"}
    )
    a = evaluate_rule(rule, None, 5, 0)
    assert a.labels == {"team": "ops", "alertname": "TooHigh", "severity": "critical"}
    assert a.annotations == {"summary": "s"}
    a = a.model_copy(update={"acknowledged": True})
    a = evaluate_rule(rule, a, 5, 30)
    assert (a.state, a.acknowledged) == (F, True)
    a = evaluate_rule(rule, a, 0, 60)
    assert a.state is R
    a = evaluate_rule(rule, a, 5, 90)
    assert (a.state, a.acknowledged) == (P, False)  # a new episode needs a new ack


def events(transitions):
    return [(t.name, t.event_type) for t in transitions if t.event_type]


def test_evaluate_rules_transitions_and_drop():
    rules = [make_rule(name="A"), make_rule(name="B", metric="parked_tasks", for_s=60)]
    alerts, tr = evaluate_rules(rules, {}, {"queue_depth": 5, "parked_tasks": 3}, 0)
    assert {n: a.state for n, a in alerts.items()} == {"A": F, "B": P}
    assert events(tr) == [("A", "alert.firing")]
    alerts, tr = evaluate_rules(rules, alerts, {"queue_depth": 5, "parked_tasks": 3}, 60)
    assert events(tr) == [("B", "alert.firing")]  # A was already firing: no repeat event
    alerts, tr = evaluate_rules(rules, alerts, {"queue_depth": 0, "parked_tasks": 3}, 90)
    assert alerts["A"].state is R and events(tr) == [("A", "alert.resolved")]
    alerts, tr = evaluate_rules(rules, alerts, {"queue_depth": 0, "parked_tasks": 3}, 120)
    assert "A" not in alerts and events(tr) == []
    assert [(t.name, t.from_state, t.to_state) for t in tr] == [("A", R, None)]


def test_removed_rule_resolves_its_firing_alert():
    alerts, _ = evaluate_rules([make_rule(name="A")], {}, {"queue_depth": 5}, 0)
    alerts, tr = evaluate_rules([], alerts, {"queue_depth": 5}, 30)
    assert alerts["A"].state is R and alerts["A"].resolved_at == 30
    assert tr == [Transition(name="A", from_state=F, to_state=R, alert=alerts["A"])]
    alerts, _ = evaluate_rules([], alerts, {}, 60)
    assert alerts == {}


# name -> (a value that breaks the rule, a healthy value)
@pytest.mark.parametrize(
    "name,bad,good",
    [
        ("NoActiveAgents", 0, 1),
        ("ParkedTasks", 1, 0),
        ("HighErrorRate", 0.06, 0.05),
        ("HighLatencyP95", 5001, 5000),
        ("QueueBacklog", 1001, 1000),
        ("CircuitsOpen", 1, 0),
        ("BackupStale", 12 * 3600 + 1, 12 * 3600),
        ("SecurityThreat", 1, 0),
    ],
)
def test_builtin_rules(name, bad, good):
    rule = next(r for r in BUILTIN_RULES if r.name == name)
    assert evaluate_rule(rule, None, good, 0) is None
    a = evaluate_rule(rule, None, bad, 0)
    a = evaluate_rule(rule, a, bad, rule.for_s)
    assert a.state is F


@pytest.mark.parametrize(
    "name,for_s,severity",
    [
        ("NoActiveAgents", 0, "critical"),
        ("ParkedTasks", 60, "error"),
        ("HighErrorRate", 120, "warning"),
        ("HighLatencyP95", 300, "warning"),
        ("QueueBacklog", 300, "warning"),
        ("CircuitsOpen", 0, "warning"),
        ("BackupStale", 0, "warning"),
        ("SecurityThreat", 0, "critical"),
    ],
)
def test_builtin_rule_settings(name, for_s, severity):
    rule = next(r for r in BUILTIN_RULES if r.name == name)
    assert (rule.for_s, rule.severity.value) == (for_s, severity)


def test_backup_threshold_follows_interval():
    rule = next(r for r in builtin_rules(backup_interval_hours=1) if r.name == "BackupStale")
    assert rule.threshold == 7200


YAML_OK = """
rules:
  - name: NoActiveAgents
    metric: agents_active
    op: "<"
    threshold: 2
    severity: critical
    labels: {team: ops}
    annotations: {summary: "No agent is alive"}
  - name: DeadLetters
    metric: dead_letters
    op: ">="
    threshold: 10
    for_s: 60
"""
JSON_OK = (
    '{"rules": [{"name": "DeadLetters", "metric": "dead_letters", "op": ">", "threshold": 0}]}'
)


@pytest.mark.parametrize(
    "text,fmt,names",
    [
        (YAML_OK, "yaml", ["NoActiveAgents", "DeadLetters"]),
        (JSON_OK, "json", ["DeadLetters"]),
        ("", "yaml", []),
        ("rules: []", "yaml", []),
    ],
)
def test_load_rules_ok(text, fmt, names):
    assert [r.name for r in load_rules(text, fmt)] == names


def rules_yaml(*entries):
    return "rules:\n" + "".join(f"  - {e}\n" for e in entries)


GOOD = '{name: A, metric: queue_depth, op: ">", threshold: 1}'


@pytest.mark.parametrize(
    "text,fmt,message",
    [
        (
            rules_yaml(GOOD, GOOD.replace("A", "B"), GOOD.replace('">"', '"=>"')),
            "yaml",
            "rules[2].op: Input should be",
        ),
        (rules_yaml('{name: A, op: ">", threshold: 1}'), "yaml", "rules[0].metric: is required"),
        (rules_yaml(GOOD.replace("}", ", fro_s: 3}")), "yaml", "rules[0].fro_s: unknown field"),
        (rules_yaml(GOOD.replace("}", ", severity: loud}")), "yaml", "rules[0].severity:"),
        (rules_yaml(GOOD.replace("}", ", for_s: -1}")), "yaml", "rules[0].for_s:"),
        (rules_yaml(GOOD, GOOD), "yaml", "rules[1].name: duplicate name 'A'"),
        (
            rules_yaml(GOOD.replace("queue_depth", "queue_dept")),
            "yaml",
            "rules[0].metric: unknown metric 'queue_dept'",
        ),
        (
            rules_yaml(GOOD.replace("}", ", labels: {alertname: x}}")),
            "yaml",
            "rules[0].labels.alertname: reserved",
        ),
        (
            rules_yaml(GOOD.replace("}", ", labels: {bad-name: x}}")),
            "yaml",
            "rules[0].labels.bad-name: label names must match",
        ),
        (
            rules_yaml(GOOD.replace("threshold: 1", "threshold: .nan")),
            "yaml",
            "rules[0].threshold: must be a finite number",
        ),
        (rules_yaml("just a string"), "yaml", "rules[0]: must be a mapping"),
        ("rules: {name: A}", "yaml", "rules: must be a list"),
        ("alerts: []", "yaml", "alerts: unknown top-level key"),
        ("- a\n- b", "yaml", "the top level must be a mapping"),
        ("rules: [", "yaml", "not valid YAML"),
        ('{"rules": [}', "json", "not valid JSON"),
    ],
)
def test_load_rules_errors(text, fmt, message):
    with pytest.raises(ConfigError) as info:
        load_rules(text, fmt, source="rules.yaml")
    assert str(info.value).startswith("rules.yaml: ")
    assert message in str(info.value)


def test_load_rules_any_metric_when_unchecked():
    text = rules_yaml(GOOD.replace("queue_depth", "custom_metric"))
    assert load_rules(text, "yaml", known_metrics=None)[0].metric == "custom_metric"


def test_merge_rules():
    custom = load_rules(YAML_OK, "yaml")
    merged = merge_rules(BUILTIN_RULES, custom)
    names = [r.name for r in merged]
    assert names == [r.name for r in BUILTIN_RULES] + ["DeadLetters"]
    assert merged[0].threshold == 2 and merged[0].labels == {"team": "ops"}


@pytest.mark.parametrize(
    "path,fmt", [("rules.json", "json"), ("RULES.JSON", "json"), ("r.yaml", "yaml"), ("r", "yaml")]
)
def test_detect_format(path, fmt):
    assert detect_format(path) == fmt


@pytest.mark.parametrize(
    "ts,text",
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
    ],
)
def test_rfc3339(ts, text):
    assert rfc3339(ts) == text


def test_to_alertmanager():
    rule = make_rule(for_s=60, annotations={"summary": "s"})
    a = evaluate_rule(rule, None, 5, 0)
    with pytest.raises(ValueError, match="pending"):
        to_alertmanager(a, 0, "http://x")
    a = evaluate_rule(rule, a, 5, 60)
    body = to_alertmanager(a, 60, "http://x/alerts", eval_interval_s=30)
    assert body == {
        "labels": {"alertname": "TooHigh", "severity": "warning"},
        "annotations": {"summary": "s"},
        "startsAt": rfc3339(0),
        "endsAt": rfc3339(180),
        "generatorURL": "http://x/alerts",
    }
    a = evaluate_rule(rule, a, 0, 90)
    body = to_alertmanager(a, 95, "http://x/alerts")
    assert (body["startsAt"], body["endsAt"]) == (rfc3339(0), rfc3339(90))


def test_alertmanager_payload_skips_pending():
    alerts = [
        ProductionAlert(name="P", state=P, severity="info"),
        ProductionAlert(name="F", state=F, severity="info", labels={"alertname": "F"}),
        ProductionAlert(name="R", state=R, severity="info", labels={"alertname": "R"}),
    ]
    body = alertmanager_payload(alerts, 0, "u")
    assert [b["labels"]["alertname"] for b in body] == ["F", "R"]


def test_evaluate_rules_reads_a_snapshot_dump():
    metrics = ProductionMetrics(agents_active=0).model_dump()
    rules = [*BUILTIN_RULES, make_rule(name="Health", metric="health", op="==", threshold=0)]
    alerts, _ = evaluate_rules(rules, {}, metrics, 0)
    assert sorted(alerts) == ["NoActiveAgents"]  # non-numeric `health` reads as missing
