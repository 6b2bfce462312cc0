"""The chaos history checker's verdicts, as tables of recorded facts -> judgement (no Redis)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.chaos.checker import _message_task_ids
from tests.chaos.verdict import Fate, Observation, judge, judge_one


def obs(**overrides: Any) -> Observation:
    """A clean success: one start, one completion, one event, a stored SUCCESS result."""
    fields: dict[str, Any] = {
        "task_id": "t1",
        "state": "succeeded",
        "agent": "a",
        "attempts": 1,
        "starts": 1,
        "dones": 1,
        "end_events": {"task.succeeded": 1},
        "result_status": "SUCCESS",
    }
    fields.update(overrides)
    return Observation(**fields)


DEAD = {
    "state": "dead_lettered",
    "error": "poison message: redelivery cap exceeded",
    "dones": 0,
    "starts": 3,
    "end_events": {"task.dead_lettered": 1},
    "result_status": "FAILURE",
    "in_dlq": True,
}
FAILED = {
    "state": "failed",
    "error": "PermanentError: disk on fire",
    "dones": 0,
    "end_events": {"task.failed": 1},
    "result_status": "FAILURE",
}
RERUN = (Fate.SUCCEEDED, False, True, None)
LATE = (Fate.SUCCEEDED, True, True, "started 1 time(s) after the task was recorded succeeded")
LATE_DEAD = (Fate.DEAD_LETTERED, True, True, "after the task was recorded dead_lettered")
NOTHING = {
    "state": None,
    "agent": None,
    "attempts": 0,
    "starts": 0,
    "dones": 0,
    "end_events": {},
    "result_status": None,
}


@pytest.mark.parametrize(
    ("facts", "fate", "duplicated", "re_executed", "problem"),
    [
        ({}, Fate.SUCCEEDED, False, False, None),
        ({"starts": 2, "attempts": 2}, Fate.SUCCEEDED, False, True, None),
        # Two completions, both begun before the end was recorded: an attempt killed after its
        # handler returned was re-run. At-least-once allows it.
        ({"dones": 2, "starts": 2, "start_times": (1.0, 2.0), "finished_at": 3.0}, *RERUN),
        # A run begun after the end was recorded: a stale copy was executed, not recognised.
        ({"starts": 2, "start_times": (1.0, 4.0), "finished_at": 3.0}, *LATE),
        ({**DEAD, "start_times": (1.0, 2.0, 4.0), "finished_at": 3.0}, *LATE_DEAD),
        ({"end_events": {"task.succeeded": 2}}, Fate.SUCCEEDED, True, False, "emitted 2 times"),
        (
            {"end_events": {"task.succeeded": 1, "task.dead_lettered": 1}},
            Fate.SUCCEEDED,
            True,
            False,
            None,
        ),
        (
            {**DEAD, "end_events": {"task.failed": 1, "task.dead_lettered": 1}},
            Fate.DEAD_LETTERED,
            True,
            True,
            "more than one end event",
        ),
        ({"state": "running", "end_events": {}, "dones": 0}, Fate.LOST, False, False, "running"),
        ({"state": "routed", "end_events": {}, "dones": 0}, Fate.LOST, False, False, "routed"),
        ({"state": "accepted", "starts": 0, "dones": 0}, Fate.LOST, False, False, "accepted"),
        (NOTHING, Fate.LOST, False, False, "vanished"),
        ({**NOTHING, "broker": ("unacked:orchestrator.routing",)}, Fate.LOST, False, False, None),
        ({**NOTHING, "submit_failed": True}, Fate.UNACCEPTED, False, False, None),
        (DEAD, Fate.DEAD_LETTERED, False, True, None),
        ({**DEAD, "in_dlq": False}, Fate.DEAD_LETTERED, False, True, "missing from orch:dlq"),
        ({**DEAD, "error": ""}, Fate.DEAD_LETTERED, False, True, "without a reason"),
        (FAILED, Fate.FAILED, False, False, None),
        ({**FAILED, "error": None}, Fate.FAILED, False, False, "without a reason"),
        ({**FAILED, "in_dlq": True}, Fate.FAILED, False, False, "in orch:dlq but"),
        ({"result_status": None}, Fate.SUCCEEDED, False, False, "would hang"),
        ({"result_status": "FAILURE"}, Fate.SUCCEEDED, False, False, "Celery result is FAILURE"),
        ({**FAILED, "result_status": "SUCCESS"}, Fate.FAILED, False, False, "result is SUCCESS"),
        ({"end_events": {}}, Fate.SUCCEEDED, False, False, "no task.succeeded event"),
        ({"dones": 0}, Fate.SUCCEEDED, False, False, "never completed"),
    ],
)
def test_verdict_per_id(
    facts: dict[str, Any], fate: Fate, duplicated: bool, re_executed: bool, problem: str | None
) -> None:
    verdict = judge_one(obs(**facts))
    assert (verdict.fate, verdict.duplicated, verdict.re_executed) == (
        fate,
        duplicated,
        re_executed,
    )
    if problem is None:
        assert verdict.problems == () or duplicated or fate is Fate.LOST, verdict.problems
    else:
        assert any(problem in p for p in verdict.problems), verdict.problems


@pytest.mark.parametrize(
    ("facts", "missing_ledger_is_lost", "fate"),
    [
        # Redis stayed up: an acknowledged submission that left no trace was lost.
        (NOTHING, True, Fate.LOST),
        # Redis crashed: no ledger, no message, never ran -> the AOF's lost tail.
        (NOTHING, False, Fate.UNACCEPTED),
        # ...but one still sitting in the broker, or that ran, got in and was lost later.
        ({**NOTHING, "broker": ("orchestrator.routing",)}, False, Fate.LOST),
        ({**NOTHING, "starts": 1}, False, Fate.LOST),
        ({**NOTHING, "end_events": {"task.succeeded": 1}}, False, Fate.LOST),
        # A submission that raised at the client and left no trace is never lost.
        ({**NOTHING, "submit_failed": True}, True, Fate.UNACCEPTED),
        # One that raised at the client yet got in is judged like any other.
        ({"submit_failed": True}, True, Fate.SUCCEEDED),
        ({"submit_failed": True, "state": "routed", "end_events": {}}, True, Fate.LOST),
    ],
)
def test_missing_ledger_policy(
    facts: dict[str, Any], missing_ledger_is_lost: bool, fate: Fate
) -> None:
    assert judge_one(obs(**facts), missing_ledger_is_lost=missing_ledger_is_lost).fate is fate


def test_uncounted_handlers_are_not_asked_for_a_completion() -> None:
    assert judge_one(obs(dones=0, starts=0), counted=False).problems == ()
    assert judge_one(obs(dones=0, starts=0), counted=True).problems != ()


def test_a_completion_that_did_not_stick_is_a_note_not_a_problem() -> None:
    verdict = judge_one(obs(**{**DEAD, "dones": 1}))
    assert verdict.problems == ()
    assert verdict.notes == (
        "handler started 3 times",
        "handler completed 1 time(s) yet the task ended dead_lettered",
    )


def report_of(**by_id: dict[str, Any]):
    return judge({i: obs(task_id=i, **facts) for i, facts in by_id.items()}, name="chaos[t]")


def test_counts_put_each_id_in_one_end_state_and_flag_the_rest() -> None:
    report = report_of(
        ok={},
        again={"starts": 2},
        twice={"starts": 2, "start_times": (1.0, 4.0), "finished_at": 3.0},
        rerun={"dones": 2, "starts": 2, "start_times": (1.0, 2.0), "finished_at": 3.0},
        dead=DEAD,
        failed=FAILED,
        stuck={"state": "running", "end_events": {}, "dones": 0},
        hang={"result_status": None},
        never={**NOTHING, "submit_failed": True},
    )
    assert report.counts() == {
        "ids": 9,
        "succeeded": 5,
        "failed": 1,
        "dead_lettered": 1,
        "lost": 1,
        "duplicated": 1,
        "re_executed": 4,
        "re_completed": 1,
        "max_starts": 3,
        "inconsistent": 1,
        "unaccepted": 1,
        "submit_failed": 1,
    }
    assert report.lost == ["stuck"]
    assert report.duplicated == ["twice"]
    assert report.inconsistent == ["hang"]


def test_summary_is_one_line_with_the_counts_and_top_reasons() -> None:
    summary = report_of(ok={}, dead=DEAD).summary()
    assert "\n" not in summary
    assert summary.startswith("chaos[t]: 2 ids | succeeded 1, failed 0, dead_lettered 1 |")
    assert "LOST 0, DUPLICATED 0, re-executed 1 (max starts 3), re-completed 0" in summary
    assert "1x poison message: redelivery cap exceeded" in summary


def test_assert_nothing_lost_passes_a_clean_history() -> None:
    report_of(ok={}, again={"starts": 3}, dead=DEAD, failed=FAILED).assert_nothing_lost()


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"state": "routed", "agent": "b", "end_events": {}, "dones": 0, "broker": ("agent.b",)},
            ["LOST", "routed @b (broker: agent.b)", "not terminal: still routed"],
        ),
        (
            {"starts": 2, "start_times": (1.0, 4.0), "finished_at": 3.0},
            ["DUPLICATED", "started 1 time(s) after the task was recorded succeeded"],
        ),
        ({"result_status": None}, ["INCONSISTENT", "would hang"]),
    ],
)
def test_assert_nothing_lost_tells_the_story(facts: dict[str, Any], expected: list[str]) -> None:
    report = report_of(ok={}, bad=facts)
    with pytest.raises(AssertionError) as info:
        report.assert_nothing_lost()
    message = str(info.value)
    assert "bad:" in message and "ok:" not in message
    for text in expected:
        assert text in message


def _kombu_message(task: str, message_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    body = base64.b64encode(json.dumps([[], kwargs, {}]).encode()).decode()
    return {
        "body": body,
        "headers": {"id": message_id, "task": task},
        "properties": {"body_encoding": "base64"},
    }


@pytest.mark.parametrize(
    ("message", "ids"),
    [
        (_kombu_message("orchestrator.execute", "t1", {"type": "chaos"}), ["t1"]),
        (_kombu_message("orchestrator.submit", "m1", {"task_id": "mine"}), ["m1", "mine"]),
        (_kombu_message("orchestrator.submit", "m1", {"type": "echo"}), ["m1"]),
        (
            {"body": "not base64 json", "headers": {"id": "m2", "task": "orchestrator.submit"}},
            ["m2"],
        ),
        ({"headers": {}}, []),
    ],
)
def test_broker_messages_name_the_ids_they_carry(message: dict[str, Any], ids: list[str]) -> None:
    assert _message_task_ids(message) == ids
