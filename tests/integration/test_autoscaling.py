"""The decided agent count from a real backlog, end to end.

Served by the exporter and `orchestrator scale`, held by the cool-down, and carried out by
ORCH_SCALE_COMMAND.

The loop (`orchestrator.autoscale`) is sent to a real control worker by hand rather than
waiting for beat; `autoscale` below waits until that run has stored its decisions.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.models import AgentStatus, RegisteredAgent
from orchestrator.monitoring.loops import LoopContext
from orchestrator.runtime.celeryconf import MONITORING_QUEUE
from orchestrator.scaling.autoscale import run_autoscale
from orchestrator.scaling.decide import ScaleDecision
from orchestrator.store.keys import EVENTS, KOMBU_UNACKED, SCALE_DECISIONS, queue_lists
from tests.integration.test_worker_metrics import running_exporter, scrape
from tests.support import cli_json, wait_for

pytestmark = pytest.mark.integration

#: What every process of these tests shares: 5 tasks per agent, a long cool-down.
SCALE_ENV = {
    "ORCH_SCALE_TARGET_BACKLOG": "5",
    "ORCH_SCALE_COOLDOWN_S": "600",
    "ORCH_SCALE_INTERVAL_S": "1",
    "ORCH_AGENT_PREFETCH": "5",  # room for 5 waiting in the agent's queue, the rest in the backlog
}


@pytest.fixture
def prefetch_client(redis_url: str) -> Iterator[OrchestratorClient]:
    """A client whose routing knows the agents' room (ORCH_AGENT_PREFETCH of SCALE_ENV)."""
    prefetch = int(SCALE_ENV["ORCH_AGENT_PREFETCH"])
    with OrchestratorClient(
        settings=load_settings(redis_url=redis_url, agent_prefetch=prefetch)
    ) as c:
        yield c


def gauge(text: str, name: str, capability: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == {"capability": capability}:
                return s.value
    return None


@pytest.fixture
def exporter(orch_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    with running_exporter({**orch_env, **SCALE_ENV}, tmp_path / "exporter.log") as port:
        yield port


def decisions(redis_client: redis.Redis) -> dict[str, ScaleDecision]:
    raw = redis_client.hgetall(SCALE_DECISIONS)
    return {cap: ScaleDecision.model_validate_json(v) for cap, v in raw.items()}


def autoscale(app: Any, redis_client: redis.Redis) -> dict[str, ScaleDecision]:
    """Send the real `orchestrator.autoscale` to the control worker; wait for its decisions."""
    before = redis_client.hgetall(SCALE_DECISIONS)
    app.send_task("orchestrator.autoscale", queue=MONITORING_QUEUE)
    wait_for(
        lambda: redis_client.hgetall(SCALE_DECISIONS) not in ({}, before),
        timeout=60,
        message="the autoscaling loop never stored a decision",
    )
    return decisions(redis_client)


def scale_events(redis_client: redis.Redis) -> list[dict[str, Any]]:
    return [
        {**json.loads(f["data"]), "severity": f["severity"]}
        for _, f in redis_client.xrange(EVENTS)
        if f["type"] == "scale.executed"
    ]


def scale_rows(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {r["capability"]: r for r in cli_json({**env, **SCALE_ENV}, "scale")}


def test_a_backlog_across_priorities_and_prefetched_messages_sets_the_desired_count(
    start_control, start_agent, prefetch_client, exporter, redis_client: redis.Redis, orch_env
):
    client = prefetch_client
    start_control(**SCALE_ENV)
    start_agent(
        "s1", "echo,hold", concurrency=2, ORCH_AGENT_PREFETCH=SCALE_ENV["ORCH_AGENT_PREFETCH"]
    )
    held = [client.submit("hold", {"key": f"h{i}", "max_s": 60}, task_id=f"h{i}") for i in range(2)]
    wait_for(  # both pool children busy before the rest arrives, so none of it runs yet
        lambda: all(redis_client.hget(f"orch:task:h{i}", "state") == "running" for i in range(2)),
        timeout=30,
        message="the holding tasks never ran",
    )
    waiting = [client.submit("echo", {"i": i}, priority=i % 10) for i in range(15)]
    # 17 tasks for echo: two fetched and unacknowledged (running), five over the priority lists
    # of the agent's queue (its slots: 2 + 5), ten in the backlog.
    wait_for(
        lambda: gauge(scrape(exporter), "orchestrator_capability_backlog", "echo") == 17,
        timeout=30,
        message=lambda: scrape(exporter),
    )
    assert redis_client.hlen(KOMBU_UNACKED) >= 2
    assert sum(1 for q in queue_lists("agent.s1") if redis_client.llen(q)) >= 2
    assert redis_client.hget("orch:bl:n", "echo") == "10"
    # Before the loop has run, the exporter serves the need itself: ceil(17 / 5) = 4.
    assert gauge(scrape(exporter), "orchestrator_desired_agents", "echo") == 4

    decided = autoscale(client.app, redis_client)["echo"]
    assert (decided.current, decided.backlog, decided.desired) == (1, 17, 4)
    assert decided.action.value == "scale_up"
    text = scrape(exporter)
    assert gauge(text, "orchestrator_desired_agents", "echo") == 4
    assert gauge(text, "orchestrator_capability_agents", "echo") == 1
    row = scale_rows(orch_env)["echo"]
    assert (row["action"], row["current"], row["desired"], row["backlog"]) == (
        "scale_up",
        1,
        4,
        17,
    )
    assert row["decided_at"] == decided.decided_at

    # The backlog drains; the need falls to one agent, but the cool-down holds the count.
    for i in range(2):
        redis_client.set(f"test:release:h{i}", "1")
    assert [r.get(timeout=60) for r in waiting] == [{"i": i} for i in range(15)]
    assert all(r.get(timeout=60) for r in held)
    wait_for(
        lambda: gauge(scrape(exporter), "orchestrator_capability_backlog", "echo") == 0,
        timeout=30,
        message="the backlog never drained",
    )
    later = autoscale(client.app, redis_client)["echo"]
    assert (later.need, later.desired, later.low_max) == (1, 4, 1)
    assert later.changed_at == decided.changed_at
    assert gauge(scrape(exporter), "orchestrator_desired_agents", "echo") == 4
    row = scale_rows(orch_env)["echo"]
    assert (row["need"], row["desired"], row["action"]) == (1, 4, "scale_up")
    assert "holding 4" in row["reason"]


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_scale_command_is_run_with_the_desired_count_and_recorded(
    start_control, client, redis_client: redis.Redis, orch_env, tmp_path: Path
):
    calls = tmp_path / "calls"
    script = write_script(
        tmp_path / "scale.sh", f'echo "$1" >> {calls}\necho "scaled the pool to $1"\n'
    )
    start_control(**SCALE_ENV, ORCH_SCALE_COMMAND=f"{script} {{n}}")
    # Tasks no agent can take are parked; their capability asks for agents from zero.
    first = [client.submit("rare", {"i": i}) for i in range(7)]
    wait_for(lambda: redis_client.zcard("orch:parked") == 7, timeout=30, message="not parked")
    assert autoscale(client.app, redis_client)["rare"].desired == 2
    wait_for(lambda: calls.exists() and calls.read_text() == "2\n", timeout=30)
    wait_for(lambda: scale_events(redis_client), timeout=30, message="no scale.executed event")
    (event,) = scale_events(redis_client)
    assert (event["capability"], event["desired"], event["exit_code"]) == ("rare", 2, 0)
    assert event["argv"] == [str(script), "2"]
    assert event["output"] == "scaled the pool to 2"
    assert event["severity"] == "info"

    more = [client.submit("rare", {"i": i}) for i in range(7, 11)]
    wait_for(lambda: redis_client.zcard("orch:parked") == 11, timeout=30, message="not parked")
    assert autoscale(client.app, redis_client)["rare"].desired == 3
    wait_for(lambda: calls.read_text() == "2\n3\n", timeout=30)
    wait_for(lambda: len(scale_events(redis_client)) == 2, timeout=30)
    assert scale_rows(orch_env)["rare"]["executed"]["desired"] == 3
    assert len(first) + len(more) == 11


# --- the loop body against a real Redis, without Celery: failures are recorded, not raised ----


def loop_context(redis_url: str, command: str) -> LoopContext:
    settings = load_settings(
        redis_url=redis_url, scale_command=command, scale_cooldown_s=60, scale_interval_s=1
    )
    ctx = LoopContext.from_settings(settings)
    agent = RegisteredAgent(
        agent_id="a1", capabilities={"echo": 1.0}, queue="agent.a1", status=AgentStatus.ACTIVE
    )
    ctx.store.register_agent(agent, now=time.time(), source="test")
    return ctx


def test_a_missing_command_is_recorded_and_tried_again_only_after_the_cool_down(
    redis_url: str, redis_client: redis.Redis
):
    ctx = loop_context(redis_url, "/nonexistent/scale-it {n}")
    now = time.time()
    summary = run_autoscale(ctx, now)
    assert summary["desired"] == {"echo": 1}
    assert summary["executed"] == [{"capability": "echo", "desired": 1, "exit_code": 127}]
    (event,) = scale_events(redis_client)
    assert event["severity"] == "warning"
    assert "/nonexistent/scale-it" in event["output"]
    assert run_autoscale(ctx, now + 1)["executed"] == []  # same count, within the cool-down
    assert len(run_autoscale(ctx, now + 61)["executed"]) == 1  # a cool-down later: again
    assert len(scale_events(redis_client)) == 2


def test_a_failing_command_keeps_its_exit_code_and_output_and_an_unchanged_count_runs_once(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
):
    failing = write_script(tmp_path / "fail.sh", 'echo "no docker here: $1" >&2\nexit 3\n')
    ctx = loop_context(redis_url, f"{failing} {{n}}")
    now = time.time()
    (run,) = run_autoscale(ctx, now)["executed"]
    assert run["exit_code"] == 3
    (event,) = scale_events(redis_client)
    assert (event["severity"], event["output"]) == ("warning", "no docker here: 1")

    ok = write_script(tmp_path / "ok.sh", "exit 0\n")
    ctx = loop_context(redis_url, f"{ok} {{capability}} {{n}}")
    assert run_autoscale(ctx, now + 1)["executed"] == [
        {"capability": "echo", "desired": 1, "exit_code": 0}
    ]
    assert run_autoscale(ctx, now + 2)["executed"] == []  # the count did not change
    assert [e["argv"][1:] for e in scale_events(redis_client)] == [["1"], ["echo", "1"]]
