"""Reading the whole fleet only when needed, against a real redis-server.

A router's view of the fleet is shared between submissions while nothing changed, re-read
as soon as something routers must see changed (the fleet version), and expired by the clock
when a heartbeat goes stale: no decision grows with the fleet and none routes on a view that
lies. The sleep-wake loop reads nothing more than the statuses while sleep is off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.config import load_settings
from orchestrator.models import AgentStatus, RegisteredAgent, parse_task
from orchestrator.routing.router import Router
from orchestrator.store import StateStore

pytestmark = pytest.mark.integration

TIMEOUT_S = 15.0  # ORCH_AGENT_TIMEOUT_S's default


class CountingStore(StateStore):
    """The real store, counting whole-fleet reads."""

    reads = 0

    def load_fleet(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().load_fleet(*args, **kwargs)


@pytest.fixture
def store(redis_url: str) -> Iterator[CountingStore]:
    s = CountingStore.from_url(redis_url)
    try:
        yield s  # type: ignore[misc]
    finally:
        s.r.close()


def register(store: StateStore, agent_id: str, now: float, caps: dict[str, float]) -> None:
    agent = RegisteredAgent(agent_id=agent_id, capabilities=caps, queue=f"agent.{agent_id}")
    store.register_agent(agent, now, source="test")


def router(store: StateStore) -> Router:
    settings = load_settings(redis_url="redis://unused:1/0", _env_file=None)
    return Router(store, settings, lambda *a, **k: None)


ECHO = parse_task({"type": "echo", "task_id": "t"}, 1 << 20)


def picks(r: Router, now: float, n: int) -> list[str]:
    out = []
    for _ in range(n):
        chosen = r.choose(ECHO, r.fleet(now), now)
        out.append(chosen.agent_id if chosen else "-")
    return out


def test_submissions_share_one_view_while_only_heartbeats_move(store):
    now = 1_000.0
    for agent_id in ("a", "b"):
        register(store, agent_id, now, {"echo": 1.0})
    r = router(store)
    assert picks(r, now, 4) == ["a", "b", "a", "b"]
    for step in range(1, 20):  # 19 s of beats, a decision every second
        t = now + step
        for agent_id in ("a", "b"):
            store.heartbeat(agent_id, t)
        picks(r, t, 1)
    # Views expire by the clock (FLEET_MAX_AGE_S, 5 s): about four re-reads in 19 s, not one
    # per decision (20) nor one per 0.2 s.
    assert 2 <= store.reads <= 6, store.reads


def test_a_registration_or_status_change_is_seen_at_the_next_version_check(store):
    now = 1_000.0
    register(store, "a", now, {"echo": 1.0})
    r = router(store)
    assert picks(r, now, 2) == ["a", "a"]
    register(store, "b", now + 0.1, {"echo": 1.0})
    # Within the same 0.2 s the view stands; at the next check the version moved.
    assert picks(r, now + 0.15, 1) == ["a"]
    assert set(picks(r, now + 0.5, 2)) == {"a", "b"}
    store.set_status("b", status=AgentStatus.OFFLINE, now=now + 0.6, source="test")
    assert picks(r, now + 0.9, 3) == ["a", "a", "a"]
    store.set_status("b", status=AgentStatus.ACTIVE, now=now + 1.0, source="test")
    store.heartbeat("b", now + 1.0)
    assert "b" in picks(r, now + 1.3, 2)


def test_an_agent_whose_heartbeat_goes_stale_drops_out_without_a_version_change(store):
    now = 1_000.0
    register(store, "a", now - 12, {"echo": 1.0})  # last beat 12 s ago: stale at now + 3
    register(store, "b", now, {"echo": 1.0})
    r = router(store)
    assert sorted(picks(r, now, 2)) == ["a", "b"]
    version = store.fleet_version()
    # 3.1 s later, well inside the view's 5 s maximum age, and nobody told the routers.
    assert picks(r, now + 3.1, 3) == ["b", "b", "b"]
    assert store.fleet_version() == version


def test_a_breaker_opening_is_seen_at_the_next_version_check(store):
    settings = load_settings(redis_url="redis://unused:1/0", _env_file=None)
    cfg = settings.circuit_config()
    now = 1_000.0
    for agent_id in ("a", "b"):
        register(store, agent_id, now, {"echo": 1.0})
    r = router(store)
    picks(r, now, 2)
    for i in range(cfg.failure_threshold):
        store.record_outcome("a", ok=False, latency_ms=10.0, circuit_cfg=cfg, now=now + 0.01 * i)
    assert store.circuit("a").state.value == "open"
    assert picks(r, now + 0.3, 4) == ["b", "b", "b", "b"]


def test_sleep_wake_reads_no_fleet_while_sleep_is_off_and_nobody_sleeps(store, redis_url):
    """With ORCH_SLEEP_AFTER_IDLE_S 0 and no ORCH_SLEEP_WINDOWS (the defaults) the sleep-wake
    tick has nothing to decide unless someone put an agent to sleep by hand: it costs one
    read of the statuses, not the whole fleet every 15 s."""
    from orchestrator.monitoring.loops import LoopContext
    from orchestrator.scaling.sleepwake import run_sleep_wake
    from orchestrator.store.monitoring import MonitoringStore

    settings = load_settings(redis_url=redis_url, _env_file=None)
    ctx = LoopContext(settings, store, MonitoringStore(store.r))
    now = 1_000.0
    for agent_id in ("a", "b"):
        register(store, agent_id, now, {"echo": 1.0})
    assert run_sleep_wake(ctx, now) == {"slept": 0, "woken": 0, "recycled": 0}
    assert store.reads == 0
    assert store.fall_asleep(
        store.load_fleet().by_id()["b"], now=now, reason="by hand", source="test"
    )
    store.reads = 0
    run_sleep_wake(ctx, now + 1)
    assert store.reads == 1  # a sleeper may need waking: the whole tick runs
