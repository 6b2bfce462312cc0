"""Event processing's pure half as tables: the registry, markers, verdicts, the rules."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import ConfigError
from orchestrator.events.registry import (
    MIN_CLAIM_IDLE_S,
    EventRegistry,
    Mark,
    Outcome,
    Verdict,
    before_run,
    claim_idle_s,
    handler_name,
    mark_of,
    running_mark,
    settle,
)
from orchestrator.events.rules import (
    agent_of,
    alert_to_push,
    circuit_still_open,
    loss_applies,
    needs_dead_letter,
    task_of,
)
from orchestrator.models import (
    AlertState,
    CircuitBreakerState,
    OrchestrationEvent,
    ProductionAlert,
    ProductionEventSeverity,
)

RAN, RAISED, SKIPPED, BUSY = Outcome.RAN, Outcome.RAISED, Outcome.SKIPPED, Outcome.BUSY
CRITICAL, WARNING = ProductionEventSeverity.CRITICAL, ProductionEventSeverity.WARNING


def event(type_: str = "agent.lost", ts: float = 100.0, **data: Any) -> OrchestrationEvent:
    return OrchestrationEvent(type=type_, ts=ts, data=data, id="1-0")


# --- the registry --------------------------------------------------------------------------


def first(event: OrchestrationEvent, ctx: Any) -> None:
    pass


def second(event: OrchestrationEvent, ctx: Any) -> None:
    pass


def test_a_handler_registers_for_each_of_its_types_in_order():
    registry = EventRegistry()
    registry.on_event("agent.lost", "circuit.opened")(first)
    registry.on_event("agent.lost")(second)
    assert registry.handlers_for("agent.lost") == [
        (handler_name(first), first),
        (handler_name(second), second),
    ]
    assert registry.handlers_for("circuit.opened") == [(handler_name(first), first)]
    assert registry.handlers_for("task.submitted") == []
    assert registry.types() == {
        "agent.lost": [f"{__name__}.first", f"{__name__}.second"],
        "circuit.opened": [f"{__name__}.first"],
    }


def test_registering_the_same_function_twice_is_harmless():
    registry = EventRegistry()
    registry.on_event("agent.lost")(first)
    registry.on_event("agent.lost")(first)
    assert registry.handlers_for("agent.lost") == [(handler_name(first), first)]


def test_two_functions_of_one_name_for_one_type_are_refused():
    registry = EventRegistry()
    registry.on_event("agent.lost")(first)

    def impostor(event: OrchestrationEvent, ctx: Any) -> None:
        pass

    impostor.__qualname__ = "first"
    with pytest.raises(ConfigError, match="two handlers named"):
        registry.on_event("agent.lost")(impostor)


@pytest.mark.parametrize("types", [(), ("",), ("has space",), ("x" * 129,), (3,)])
def test_a_bad_event_type_is_refused_at_the_decorator(types: tuple[Any, ...]):
    with pytest.raises(ConfigError):
        EventRegistry().on_event(*types)


def test_the_package_exports_the_process_registry_decorator():
    from orchestrator import on_event
    from orchestrator.events.registry import REGISTRY

    assert on_event == REGISTRY.on_event


# --- markers and a delivery's verdict ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mark", "before"),
    [
        (None, Mark.FREE, None),
        (running_mark("ctl@h:12:abc"), Mark.RUNNING, BUSY),
        ("done", Mark.DONE, SKIPPED),
        ("failed", Mark.FAILED, SKIPPED),
        ("something else", Mark.DONE, SKIPPED),  # a stray key never wedges an entry
    ],
)
def test_a_marker_decides_whether_a_delivery_runs_the_handler(value, mark, before):
    assert mark_of(value) is mark
    assert before_run(mark) is before


@pytest.mark.parametrize(
    ("outcomes", "deliveries", "cap", "verdict"),
    [
        ({}, 1, 3, Verdict(ack=True)),
        ({"a": RAN}, 1, 3, Verdict(ack=True)),
        ({"a": RAN, "b": SKIPPED}, 2, 3, Verdict(ack=True)),
        # Raised before the cap: left pending, delivered again later.
        ({"a": RAN, "b": RAISED}, 1, 3, Verdict(ack=False, retry=("b",))),
        ({"a": RAISED}, 2, 3, Verdict(ack=False, retry=("a",))),
        # Raised on the last delivery allowed (or after it): acked and given up on.
        ({"a": RAISED}, 3, 3, Verdict(ack=True, give_up=("a",))),
        ({"a": RAISED, "b": RAISED}, 5, 3, Verdict(ack=True, give_up=("a", "b"))),
        ({"a": RAISED, "b": RAN}, 1, 1, Verdict(ack=True, give_up=("a",))),
        # Another delivery runs it: that one acks (or, if it dies, a later claim runs it).
        ({"a": BUSY}, 2, 3, Verdict(ack=False)),
        ({"a": BUSY, "b": RAN}, 9, 3, Verdict(ack=False)),
        ({"a": BUSY, "b": RAISED}, 3, 3, Verdict(ack=False, give_up=("b",))),
    ],
)
def test_a_delivery_is_acked_when_every_handler_is_done_or_given_up_on(
    outcomes, deliveries, cap, verdict
):
    assert settle(outcomes, deliveries, cap) == verdict


@pytest.mark.parametrize(
    ("agent_timeout_s", "idle_s"), [(15.0, 15.0), (4.0, 4.0), (0.5, MIN_CLAIM_IDLE_S)]
)
def test_the_claim_time_follows_the_agent_timeout_with_a_floor(agent_timeout_s, idle_s):
    assert claim_idle_s(agent_timeout_s) == idle_s


# --- the built-in handlers' rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "agent", "task"),
    [
        ({"agent_id": "a", "task_id": "t"}, "a", "t"),
        ({}, None, None),
        ({"agent_id": "", "task_id": 7}, None, None),
    ],
)
def test_the_subject_of_an_event_is_read_from_its_data(data, agent, task):
    assert agent_of(event(**data)) == agent
    assert task_of(event(**data)) == task


@pytest.mark.parametrize(
    ("event_ts", "registered_at", "applies"),
    [
        (100.0, 50.0, True),  # registered before the loss
        (100.0, 100.0, True),
        (100.0, 0.0, True),  # registered without a time (a record written by hand)
        (100.0, 150.0, False),  # came back after the event: a stale loss
        (100.0, None, False),  # nobody of that id
    ],
)
def test_a_loss_applies_to_the_life_of_the_agent_it_was_written_about(
    event_ts, registered_at, applies
):
    assert loss_applies(event_ts, registered_at) is applies


@pytest.mark.parametrize(
    ("state", "moves"),
    [
        (CircuitBreakerState.OPEN, True),
        (CircuitBreakerState.HALF_OPEN, True),
        (CircuitBreakerState.CLOSED, False),
    ],
)
def test_an_open_circuit_event_moves_work_until_the_breaker_closes(state, moves):
    assert circuit_still_open(state) is moves


@pytest.mark.parametrize(
    ("state", "dead_letter"),
    [
        ("routed", True),
        ("running", True),
        ("recovering", True),
        ("parked", True),
        ("dead_lettered", False),  # the healer's own escalation: done already
        ("succeeded", False),
        ("failed", False),
        (None, False),  # no such task (or its ledger expired)
        ("", False),
        ("nonsense", False),
    ],
)
def test_an_escalation_dead_letters_only_a_task_that_has_not_ended(state, dead_letter):
    assert needs_dead_letter(state) is dead_letter


def stored(state: AlertState) -> ProductionAlert:
    return ProductionAlert(
        name="Disk", state=state, severity=CRITICAL, labels={"alertname": "Disk", "x": "1"}
    )


def firing(alert_severity: str | None = "critical", **extra: Any) -> OrchestrationEvent:
    data: dict[str, Any] = {"name": "Disk", "labels": {"team": "ops"}, **extra}
    if alert_severity is not None:
        data["alert_severity"] = alert_severity
    return OrchestrationEvent(type="alert.firing", ts=500.0, data=data, severity=WARNING)


@pytest.mark.parametrize(
    ("evt", "kept", "pushed"),
    [
        (firing("warning"), None, None),
        (firing("critical"), stored(AlertState.FIRING), stored(AlertState.FIRING)),
        (firing("critical"), stored(AlertState.RESOLVED), None),  # resolved since: stay quiet
        (firing("critical"), stored(AlertState.PENDING), None),
        (firing(None), None, None),  # no alert severity: the event's own (warning) decides
        (firing("critical", name=None), None, None),
    ],
)
def test_only_a_critical_alert_still_firing_is_pushed(evt, kept, pushed):
    assert alert_to_push(evt, kept, now=510.0, max_age_s=120.0) == pushed


@pytest.mark.parametrize(
    ("now", "kept", "pushed"),
    [
        (620.0, None, True),  # 120 s old: still within the life of a pushed alert
        (620.1, None, False),  # older: its sender stopped sending it, long ago
        (9999.0, stored(AlertState.FIRING), True),  # the loop still has it firing
    ],
)
def test_an_old_event_of_an_alert_nobody_stores_is_not_pushed(now, kept, pushed):
    assert (alert_to_push(firing("critical"), kept, now, max_age_s=120.0) is not None) is pushed


def test_an_alert_nobody_stores_is_pushed_as_its_event_describes_it():
    alert = alert_to_push(
        firing("critical", value="3.5", active_since=450.0), None, now=510.0, max_age_s=120.0
    )
    assert alert is not None
    assert alert.state is AlertState.FIRING and alert.severity is CRITICAL
    assert alert.labels == {"team": "ops", "alertname": "Disk", "severity": "critical"}
    assert alert.value == 3.5 and alert.active_since == 450.0 == alert.since
    bare = alert_to_push(
        OrchestrationEvent(type="alert.firing", ts=7.0, severity=CRITICAL, data={"name": "X"}),
        None,
        now=7.0,
        max_age_s=120.0,
    )
    assert bare is not None and bare.active_since == 7.0 and bare.value is None
