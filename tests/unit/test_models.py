"""The task spec's rules and the settings' validation."""

from __future__ import annotations

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError, InvalidTask
from orchestrator.models import OrchestrationTask, parse_task
from orchestrator.settings_parsers import parse_capabilities


def problems(fields, limit=1_048_576):
    with pytest.raises(InvalidTask) as info:
        parse_task(fields, limit)
    return info.value.problems


def test_defaults():
    task = parse_task({"type": "echo"}, 1024)
    assert task == OrchestrationTask(type="echo", required_capabilities=["echo"])
    assert (task.priority, task.timeout_s, task.max_retries, task.client_id) == (
        5,
        300.0,
        3,
        "anonymous",
    )
    assert task.payload == {} and task.task_id is None and task.affinity_key is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "type: is required"),
        ({"type": ""}, "type: must be 1-64 chars"),
        ({"type": "Echo"}, "type: must be 1-64 chars"),
        ({"type": "e" * 65}, "type: must be 1-64 chars"),
        ({"type": 3}, "type: must be 1-64 chars"),
        ({"type": "echo", "task_id": ""}, "task_id: must be 1-128 chars"),
        ({"type": "echo", "task_id": "a b"}, "task_id: must be 1-128 chars"),
        ({"type": "echo", "task_id": "x" * 129}, "task_id: must be 1-128 chars"),
        ({"type": "echo", "payload": [1]}, "payload: must be a JSON object (got list)"),
        ({"type": "echo", "payload": "x"}, "payload: must be a JSON object (got str)"),
        ({"type": "echo", "payload": {"x": float("nan")}}, "payload: must be JSON-encodable"),
        (
            {"type": "echo", "required_capabilities": "echo"},
            "required_capabilities: must be a list",
        ),
        ({"type": "echo", "required_capabilities": ["a"] * 17}, "at most 16 capabilities"),
        ({"type": "echo", "required_capabilities": ["Bad"]}, "required_capabilities: names"),
        ({"type": "echo", "priority": 99}, "priority: must be between 0 and 9 (got 99)"),
        ({"type": "echo", "priority": -1}, "priority: must be between 0 and 9 (got -1)"),
        ({"type": "echo", "priority": 5.5}, "priority: must be between 0 and 9 (got 5.5)"),
        ({"type": "echo", "priority": "5"}, "priority: must be between 0 and 9 (got '5')"),
        ({"type": "echo", "priority": True}, "priority: must be between 0 and 9 (got True)"),
        ({"type": "echo", "timeout_s": 0}, "timeout_s: must be a number with 0 < timeout_s"),
        ({"type": "echo", "timeout_s": 86401}, "timeout_s: must be a number"),
        ({"type": "echo", "max_retries": 21}, "max_retries: must be an integer between 0 and 20"),
        ({"type": "echo", "max_retries": -1}, "max_retries: must be an integer between 0 and 20"),
        ({"type": "echo", "affinity_key": ""}, "affinity_key: must be a string"),
        ({"type": "echo", "client_id": "a b"}, "client_id: must be 1-128 chars"),
        ({"type": "echo", "priorty": 1}, "priorty: unknown field (allowed: task_id, type,"),
    ],
)
def test_each_rule_names_the_field(fields, expected):
    assert any(expected in p for p in problems(fields)), problems(fields)


def test_every_offending_field_is_named_at_once():
    found = problems({"type": "X", "priority": 10, "max_retries": 50, "bogus": 1})
    assert [p.split(":")[0] for p in found] == ["type", "priority", "max_retries", "bogus"]
    assert "invalid task: type:" in str(InvalidTask(found))


def test_payload_size_limit_uses_the_configured_bytes():
    assert parse_task({"type": "echo", "payload": {"x": "y" * 10}}, 100)
    assert (
        "encoded size 18 bytes exceeds the limit of 17 bytes"
        in problems({"type": "echo", "payload": {"x": "y" * 10}}, 17)[0]
    )


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"priority": 0}, True),
        ({"priority": 9}, True),
        ({"timeout_s": 86400}, True),
        ({"timeout_s": 0.001}, True),
        ({"max_retries": 0}, True),
        ({"max_retries": 20}, True),
        ({"task_id": "A.b:c-d_1"}, True),
        ({"task_id": "x" * 128}, True),
        ({"required_capabilities": ["a"] * 16}, True),
        ({"affinity_key": "user-1"}, True),
    ],
)
def test_boundaries_accepted(fields, valid):
    assert parse_task({"type": "echo", **fields}, 1024)


def test_capabilities_are_deduplicated_and_sorted():
    task = parse_task({"type": "x", "required_capabilities": ["b", "a", "b"]}, 1024)
    assert task.required_capabilities == ["a", "b"]
    assert task.capability_key == "a,b"


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("", {}),
        ("echo", {"echo": 1.0}),
        ("echo=0.5, sleep", {"echo": 0.5, "sleep": 1.0}),
        ("a=1,b=0.01", {"a": 1.0, "b": 0.01}),
    ],
)
def test_parse_capabilities(raw, parsed):
    assert parse_capabilities(raw) == parsed


@pytest.mark.parametrize("raw", ["echo=0", "echo=1.5", "echo=x", "Echo=1", "a b=1"])
def test_parse_capabilities_rejects(raw):
    with pytest.raises(ValueError):
        parse_capabilities(raw)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ORCH_AGENT_CAPABILITIES": "echo=2"}, "ORCH_AGENT_CAPABILITIES"),
        ({"ORCH_ALERT_EVALUATION_INTERVAL": "soon"}, "ORCH_ALERT_EVALUATION_INTERVAL"),
        ({"ORCH_ALERT_EVALUATION_INTERVAL": "-1"}, "ORCH_ALERT_EVALUATION_INTERVAL"),
        ({"ORCH_LOAD_BALANCING_ALGORITHM": "random"}, "ORCH_LOAD_BALANCING_ALGORITHM"),
        ({"ORCH_REDIS_URL": "http://x"}, "ORCH_REDIS_URL"),
        ({"ORCH_MAX_PAYLOAD_BYTES": "many"}, "ORCH_MAX_PAYLOAD_BYTES"),
        ({"ORCH_CIRCUIT_BREAKER_ENABLED": "maybe"}, "ORCH_CIRCUIT_BREAKER_ENABLED"),
        ({"ORCH_HANDLERS": "not a module"}, "ORCH_HANDLERS"),
        (
            {"ORCH_AGENT_TIMEOUT_S": "1", "ORCH_AGENT_HEARTBEAT_INTERVAL_S": "5"},
            "ORCH_AGENT_TIMEOUT_S",
        ),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, env, named):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert named in str(info.value)


def test_settings_defaults_match_the_spec(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env; no ORCH_* either (the autouse fixture)
    s = load_settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.effective_broker_url == s.effective_result_backend == s.effective_state_url
    assert (s.agent_heartbeat_interval_s, s.agent_timeout_s) == (5, 15)
    assert (s.alert_evaluation_interval, s.sla_monitoring_interval) == (30.0, 60.0)
    assert (s.security_monitoring_interval, s.backup_interval_hours) == (30.0, 6)
    assert (s.anomaly_detection_interval, s.anomaly_detection_sensitivity) == (60.0, 2.0)
    assert s.event_processing_enabled and s.auto_recovery_enabled and s.circuit_breaker_enabled
    assert s.recovery_escalation_timeout == 300.0
    assert (
        s.circuit_failure_threshold,
        s.circuit_recovery_timeout_s,
        s.circuit_half_open_max_calls,
    ) == (5, 60, 3)
    assert s.intelligent_routing_enabled and s.performance_optimization_interval == 120.0
    assert s.load_balancing_algorithm == "weighted_round_robin"
    assert (s.max_payload_bytes, s.pending_timeout_s) == (1048576, 3600)
    assert (s.backup_dir, s.backup_retention) == ("./backups", 10)
    assert (s.alertmanager_url, s.alert_rules_file, s.sla_targets_file) == ("", "", "")
    assert (s.exporter_port, s.metrics_port) == (9808, 0)
    assert s.agent_capabilities == {} and s.handlers == [] and not s.is_agent


def test_backup_interval_accepts_a_float(monkeypatch):
    monkeypatch.setenv("ORCH_BACKUP_INTERVAL_HOURS", "0.5")
    assert load_settings().backup_interval_hours == 0.5


# --- found by the submission fuzzer (tests/integration/test_submit_fuzz.py) ---------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "echo\n"}, "type"),
        ({"type": "echo", "task_id": "t-1\n"}, "task_id"),
        ({"type": "echo", "client_id": "svc\n"}, "client_id"),
        ({"type": "echo", "required_capabilities": ["echo\n"]}, "required_capabilities"),
    ],
)
def test_a_trailing_newline_is_no_part_of_a_name(fields, field):
    """`re.match("^...$")` lets one trailing newline through; names must match in full."""
    assert [p.split(":")[0] for p in problems(fields)] == [field]


def test_invalid_task_keeps_its_message_when_celery_rebuilds_it():
    """A client with this package installed gets the rejection rebuilt from its stored
    args (Celery's own round trip), and must read the same message, prefixed once."""
    from celery import Celery

    backend = Celery(set_as_current=False).backend
    original = InvalidTask(["priority: must be between 0 and 9 (got 99)", "bogus: unknown"])
    rebuilt = backend.exception_to_python(backend.prepare_exception(original, "json"))
    assert type(rebuilt) is InvalidTask
    assert str(rebuilt) == str(original)
    assert str(rebuilt).startswith("invalid task: priority:")


def test_message_refused_survives_celery_rebuilding_it():
    """The gate stores MessageRefused as the refused message's result; Celery rebuilt it as
    `MessageRefused(message)`, which failed, so a client read a bare `Exception`."""
    from celery import Celery

    from orchestrator.errors import MessageRefused

    backend = Celery(set_as_current=False).backend
    original = MessageRefused("celery", "body nested deeper than 200 levels")
    rebuilt = backend.exception_to_python(backend.prepare_exception(original, "json"))
    assert type(rebuilt) is MessageRefused
    assert (rebuilt.queue, rebuilt.reason) == ("celery", "body nested deeper than 200 levels")
    assert str(rebuilt) == str(original)
    assert str(original).startswith("message refused by a worker of queue 'celery': body")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "echo", "payload": {"x": "\ud800"}}, "payload"),
        ({"type": "echo", "payload": {"\udfff": 1}}, "payload"),
        ({"type": "echo", "payload": {"x": [{"y": "a\udc80b"}]}}, "payload"),
        ({"type": "echo", "affinity_key": "user-\ud800"}, "affinity_key"),
    ],
)
def test_lone_surrogates_are_refused_where_they_could_not_be_stored(fields, field):
    """JSON can carry a lone surrogate (as a \\u escape) but UTF-8 cannot: the ledger's write
    failed with a UnicodeEncodeError after the spec had been accepted."""
    [problem] = problems(fields)
    assert problem.startswith(f"{field}: must be valid Unicode")


def test_characters_beyond_the_basic_plane_are_fine():
    task = parse_task(
        {"type": "echo", "payload": {"\U0001f600": "\U0001f600"}, "affinity_key": "\U0001f600"},
        1024,
    )
    assert task.payload == {"\U0001f600": "\U0001f600"}


def _nested(depth):
    """A payload `depth` levels deep: arrays inside, the object outermost."""
    value: list | dict = []
    for _ in range(depth - 2):
        value = [value]
    return {"d": value}


def test_payload_nesting_is_bounded():
    """Past ~255 levels pydantic cannot serialize the ledger entry, past ~500 the control
    worker's pool hand-over (pickle) dies: a bound on nesting keeps every accepted payload
    carriable, and the check itself must not recurse."""
    from orchestrator.models import MAX_PAYLOAD_DEPTH

    assert parse_task({"type": "echo", "payload": _nested(MAX_PAYLOAD_DEPTH)}, 10**6)
    for depth in (MAX_PAYLOAD_DEPTH + 1, 5000):
        [problem] = problems({"type": "echo", "payload": _nested(depth)}, 10**6)
        assert problem.startswith(f"payload: nested deeper than {MAX_PAYLOAD_DEPTH} levels")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("priorty", "priorty"),
        ("", "''"),
        ("a; type", "'a; type'"),
        ("a\nb", "'a\\nb'"),
        ("x: y", "'x: y'"),
        ("\ud800", "'\\ud800'"),
    ],
)
def test_an_unknown_field_is_named_even_when_its_name_is_odd(name, label):
    """An empty name was reported as `task`; a name with a newline or "; " broke the message
    into what looked like other problems."""
    [problem] = problems({"type": "echo", name: 1})
    assert problem.startswith(f"{label}: unknown field (allowed: task_id,")
