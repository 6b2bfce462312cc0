"""Who sleeps, who wakes, who is recycled, and when a sleep window is: table tests.

The pure decisions of orchestrator.scaling.sleep and the windows of orchestrator.scaling.windows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import AgentStatus
from orchestrator.scaling.sleep import AgentView, Decision, SleepPolicy, plan, wake_for
from orchestrator.scaling.windows import SleepWindow, active_window, parse_windows

ACTIVE, SLEEPING, OFFLINE = AgentStatus.ACTIVE, AgentStatus.SLEEPING, AgentStatus.OFFLINE
POLICY = SleepPolicy(idle_after_s=60, min_awake=1, target_backlog=5)


def view(agent_id: str, caps: str = "echo", status: AgentStatus = ACTIVE, **kw) -> AgentView:
    return AgentView(agent_id, frozenset(caps.split(",")), status, **kw)


def acts(decisions: list[Decision]) -> list[tuple[str, str, str]]:
    return [(d.action, d.agent_id, d.reason) for d in decisions]


@pytest.mark.parametrize(
    ("agents", "backlog", "expected"),
    [
        # idle long enough: the longest idle sleeps, one stays awake (min 1)
        ([view("a", idle_s=61), view("b", idle_s=90)], {}, [("sleep", "b", "idle")]),
        # not idle long enough, or busy: nobody
        ([view("a", idle_s=59), view("b", idle_s=10)], {}, []),
        ([view("a"), view("b", idle_s=100)], {}, [("sleep", "b", "idle")]),
        ([view("a"), view("b")], {}, []),
        # the last awake agent of a capability stays awake
        ([view("a", idle_s=100)], {}, []),
        # an agent with two capabilities keeps both above the minimum
        (
            [view("ab", "x,y", idle_s=100), view("a", "x", idle_s=100)],
            {},
            [("sleep", "a", "idle")],
        ),
        # the agents left awake would be over the wake threshold: nobody sleeps
        ([view("a", idle_s=100), view("b")], {"echo": 6}, []),
        ([view("a", idle_s=100), view("b")], {"echo": 5}, [("sleep", "a", "idle")]),
        # offline and sleeping agents are not counted as awake
        ([view("a", idle_s=100), view("b", status=OFFLINE)], {}, []),
    ],
)
def test_sleep_decisions(agents, backlog, expected):
    assert acts(plan(agents, backlog, {}, POLICY)) == expected


def test_sleep_is_off_outside_windows_when_idle_after_is_zero():
    off = SleepPolicy(idle_after_s=0, min_awake=1, target_backlog=5)
    assert plan([view("a", idle_s=1e6), view("b", idle_s=1e6)], {}, {}, off) == []


def test_min_awake_zero_lets_a_capability_sleep_entirely_and_two_keeps_two():
    agents = [view(x, idle_s=100) for x in "abc"]
    none = SleepPolicy(idle_after_s=60, min_awake=0, target_backlog=5)
    assert [d.agent_id for d in plan(agents, {}, {}, none)] == ["a", "b", "c"]
    asleep = [view(x, status=SLEEPING) for x in "abc"]
    assert plan(asleep, {}, {}, none) == []  # and nobody is woken to keep one awake
    two = SleepPolicy(idle_after_s=60, min_awake=2, target_backlog=5)
    assert [d.agent_id for d in plan(agents, {}, {}, two)] == ["a"]


@pytest.mark.parametrize(
    ("agents", "backlog", "parked", "expected"),
    [
        # backlog over the threshold per awake agent wakes as many as it needs
        (
            [view("a"), view("s1", status=SLEEPING), view("s2", status=SLEEPING)],
            {"echo": 6},
            {},
            [("wake", "s1", "backlog")],
        ),
        (
            [view("a"), view("s1", status=SLEEPING), view("s2", status=SLEEPING)],
            {"echo": 11},
            {},
            [("wake", "s1", "backlog"), ("wake", "s2", "backlog")],
        ),
        # at the threshold: nobody wakes
        ([view("a"), view("s1", status=SLEEPING)], {"echo": 5}, {}, []),
        # none awake and one task waiting
        ([view("s1", status=SLEEPING)], {"echo": 1}, {}, [("wake", "s1", "backlog")]),
        # a parked task needing what only a sleeper offers
        (
            [view("a"), view("r", "rare,echo", status=SLEEPING)],
            {},
            {frozenset({"rare"}): 1},
            [("wake", "r", "parked")],
        ),
        # ... needing two capabilities: only a sleeper with both helps
        (
            [view("x", "x", status=SLEEPING), view("xy", "x,y", status=SLEEPING)],
            {},
            {frozenset({"x", "y"}): 3},
            [("wake", "xy", "parked")],
        ),
        # parked, but an awake agent can take it (it is routed at the next sweep)
        ([view("a"), view("s", status=SLEEPING)], {}, {frozenset({"echo"}): 1}, []),
        # an awake agent died: the minimum is made up again
        (
            [view("s1", status=SLEEPING), view("s2", status=SLEEPING)],
            {},
            {},
            [("wake", "s1", "minimum awake")],
        ),
        ([view("a"), view("s", status=SLEEPING)], {}, {}, []),
        ([view("s", status=SLEEPING, slept_for="manual")], {}, {}, []),  # put to sleep by hand
        # a task routed to it as it fell asleep
        ([view("a"), view("s", status=SLEEPING, waiting=1)], {}, {}, [("wake", "s", "queued")]),
    ],
)
def test_wake_decisions(agents, backlog, parked, expected):
    assert acts(plan(agents, backlog, parked, POLICY)) == expected


def test_a_woken_agent_is_not_put_back_to_sleep_in_the_same_tick():
    agents = [view("a", idle_s=1000), view("s", status=SLEEPING)]
    assert acts(plan(agents, {"echo": 6}, {}, POLICY)) == [("wake", "s", "backlog")]


def test_a_window_sleeps_idle_agents_at_once_then_wakes_them_when_it_ends():
    agents = [view("a", idle_s=0), view("b", idle_s=0), view("c")]
    decisions = plan(agents, {}, {}, POLICY, window="w1")
    assert ("sleep", "a", "window") in acts(decisions)
    assert ("sleep", "b", "window") in acts(decisions)
    later = [
        view("a", status=SLEEPING, slept_for="window"),
        view("b", status=SLEEPING, slept_for="idle"),
        view("c"),
    ]
    assert acts(plan(later, {}, {}, POLICY)) == [("wake", "a", "window ended")]
    assert plan(later, {}, {}, POLICY, window="w1") == [
        Decision("a", "recycle", "w1"),
    ]  # still inside: recycled, one per capability per tick (b waits for the next)


def test_recycling_is_once_per_window_and_never_takes_the_last_awake_agent():
    asleep = [
        view("s1", status=SLEEPING, recycled_in="w1"),
        view("s2", status=SLEEPING, recycled_in="w1"),
    ]
    # every sleeper done in w1; the lone awake agent (busy) is not recycled
    assert plan([*asleep, view("a")], {}, {}, POLICY, window="w1") == []
    # an idle awake agent with another awake one of its capability is
    awake = [view("a", idle_s=0), view("b")]
    got = plan([*asleep, *awake], {}, {}, POLICY, window="w1")
    assert ("recycle", "a", "w1") not in acts(got)  # it sleeps in the window instead
    assert ("sleep", "a", "window") in acts(got)
    two = [view("a", idle_s=0, recycled_in="w0"), view("b", idle_s=0), view("c")]
    keep3 = SleepPolicy(idle_after_s=60, min_awake=3, target_backlog=5)
    assert acts(plan(two, {}, {}, keep3, window="w1")) == [("recycle", "a", "w1")]
    # a new window occurrence recycles them again
    # (with nobody awake, one wakes to keep the minimum; the other is recycled)
    assert acts(plan(asleep, {}, {}, POLICY, window="w2")) == [
        ("wake", "s1", "minimum awake"),
        ("recycle", "s2", "w2"),
    ]


def test_wake_for_a_parked_task():
    agents = [view("a", "echo"), view("r", "rare", status=SLEEPING)]
    assert wake_for(frozenset({"rare"}), agents) == "r"
    assert wake_for(frozenset({"echo"}), agents) is None  # an awake agent can take it
    assert wake_for(frozenset({"other"}), agents) is None


def _ts(hour: int, minute: int, day: int = 4) -> float:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("raw", "at", "inside_since"),
    [
        ("02:00-03:00", _ts(2, 30), _ts(2, 0)),
        ("02:00-03:00", _ts(3, 0), None),
        ("02:00-03:00", _ts(1, 59), None),
        ("23:30-00:30", _ts(23, 45), _ts(23, 30)),
        ("23:30-00:30", _ts(0, 15, day=5), _ts(23, 30)),
        ("23:30-00:30", _ts(0, 30, day=5), None),
        # Berlin is UTC+1 in December: 02:00-03:00 there is 01:00-02:00 UTC
        ("02:00-03:00 Europe/Berlin", _ts(1, 30), _ts(1, 0)),
        ("02:00-03:00 Europe/Berlin", _ts(2, 30), None),
    ],
)
def test_windows(raw, at, inside_since):
    found = active_window(parse_windows(raw), at)
    assert (found[1] if found else None) == inside_since


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2-3", "expected HH:MM-HH:MM"),
        ("24:00-01:00", "hours are 00-23"),
        ("02:00-02:00", "must not be empty"),
        ("02:00-03:00 Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_windows_are_refused_naming_the_part(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_windows(raw)
    with pytest.raises(ConfigError, match="ORCH_SLEEP_WINDOWS"):
        load_settings(sleep_windows=raw)


def test_windows_parse_as_a_list():
    assert parse_windows("02:00-03:00 Europe/Berlin, 13:00-13:30") == [
        SleepWindow(120, 180, "Europe/Berlin"),
        SleepWindow(780, 810, "UTC"),
    ]
    assert str(SleepWindow(120, 180, "Europe/Berlin")) == "02:00-03:00 Europe/Berlin"
