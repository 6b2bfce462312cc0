"""Performance-driven allocation through real agents, beat and routers."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from tests.support import wait_for

pytestmark = pytest.mark.integration

FAST_OPTIMIZE = {"ORCH_PERFORMANCE_OPTIMIZATION_INTERVAL": "1", "ORCH_BEAT_MAX_INTERVAL_S": "1"}
PACE = {"seconds": 0.02, "slow_seconds": 0.3}
#: Room for 100 waiting tasks per agent: these tests are about the weights, which decide below
#: saturation (at saturation each agent's pace does: test_dispatch).
BELOW = {"ORCH_AGENT_PREFETCH": "100"}


def _share_of(client: OrchestratorClient, agent: str, n: int) -> float:
    """Route `n` tasks, in batches of 10 (each waited for), and return `agent`'s share."""
    seen: Counter[str] = Counter()
    for _ in range(n // 10):
        batch = [client.submit("pace", PACE) for _ in range(10)]
        seen.update(r.get(timeout=60)["agent"] for r in batch)
    return seen[agent] / n


def _score(redis_client, agent: str) -> float:
    return float(redis_client.hget("orch:perf:scores", f"{agent}|pace") or 1.0)


def _until_score(client, redis_client, agent: str, ok, message: str) -> None:
    """Keep work flowing (so the agents report) until the optimize loop's score of `agent`
    satisfies `ok`."""

    def check() -> bool:
        _share_of(client, agent, 10)
        return ok(_score(redis_client, agent))

    wait_for(check, timeout=120, message=message)


def test_share_moves_away_from_a_slowed_agent_and_back_when_it_recovers(
    start_control, start_agent, celery_procs, orch_env, redis_client, redis_url
):
    start_control(**FAST_OPTIMIZE, **BELOW)
    celery_procs(["beat", "-l", "info"], {**orch_env, **FAST_OPTIMIZE}, name="beat")
    start_agent("steady", "pace", **BELOW)
    start_agent("wobbly", "pace", **BELOW)
    with OrchestratorClient(
        settings=load_settings(redis_url=redis_url, agent_prefetch=100)
    ) as client:
        before = _share_of(client, "wobbly", 40)
        assert 0.3 <= before <= 0.7, before  # equal weights: about half

        redis_client.set("test:slow:wobbly", "1")  # 15 times slower from now on
        _until_score(
            client, redis_client, "wobbly", lambda s: s < 0.4, "the slow agent's score stayed"
        )
        slowed = _share_of(client, "wobbly", 60)
        assert slowed <= before / 2, (before, slowed)
        assert slowed > 0  # the floor: it is never starved

        redis_client.delete("test:slow:wobbly")
        _until_score(
            client, redis_client, "wobbly", lambda s: s > 0.8, "the recovered agent stayed low"
        )
        after = _share_of(client, "wobbly", 40)
        assert after >= 0.3, (before, slowed, after)


def test_with_intelligent_routing_off_every_weight_is_one(
    start_control, start_agent, redis_client, redis_url
):
    """A stored low score and a low proficiency weigh nothing: plain round-robin."""
    start_control(ORCH_INTELLIGENT_ROUTING_ENABLED="false", **BELOW)
    start_agent("strong", "pace=1.0", **BELOW)
    start_agent("weak", "pace=0.2", **BELOW)
    redis_client.hset("orch:perf:scores", mapping={"weak|pace": 0.1, "strong|pace": 1.0})
    off = load_settings(redis_url=redis_url, intelligent_routing_enabled=False, agent_prefetch=100)
    with OrchestratorClient(settings=off) as client:
        assert _share_of(client, "weak", 40) == 0.5
    with OrchestratorClient(
        settings=load_settings(redis_url=redis_url, agent_prefetch=100)
    ) as client:
        assert _share_of(client, "weak", 40) < 0.1  # 0.2 x 0.1 against 1.0 x 1.0
