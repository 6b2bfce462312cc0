"""The monitoring loops' Redis edges against a real redis-server, with synthetic clocks.

No Celery process here: each loop body is called with a chosen `now`, over telemetry written
at chosen times, so hours of history take milliseconds. The beat-driven runs are in
test_monitoring.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
from pathlib import Path

import pytest
import redis

from orchestrator.backup.archive import list_backups, verify_backup
from orchestrator.config import load_settings
from orchestrator.models import AlertState, RegisteredAgent, TaskState
from orchestrator.monitoring.anomaly_loop import find_regressions, run_anomaly
from orchestrator.monitoring.loops import (
    LoopContext,
    run_alerts,
    run_backup,
    run_security,
    run_sla,
    sla_reports,
)
from orchestrator.monitoring.stats import run_fields, sum_fields
from orchestrator.runtime.celeryconf import create_app
from orchestrator.store import Settlement, StateStore
from orchestrator.store.keys import (
    ALERTS,
    METRICS_HISTORY,
    REGRESSIONS,
    SLO_ALERTS,
    events_key,
    task_key,
)
from tests.support import cli_json, worker_environ

pytestmark = pytest.mark.integration
BASE = 1_800_000_000.0  # a minute boundary


def events(client: redis.Redis, kind: str) -> list[dict]:
    stream = events_key(kind)
    return [json.loads(f["data"]) for _, f in client.xrange(stream) if f["type"] == kind]


@pytest.fixture
def ctx(redis_url: str, tmp_path: Path) -> LoopContext:
    settings = load_settings(
        redis_url=redis_url, backup_dir=str(tmp_path / "backups"), backup_retention=2
    )
    context = LoopContext.from_settings(settings)
    yield context
    context.store.r.close()


def runs(task_type: str, n: int, latency_ms: float, fail: int = 0, jitter: float = 0.0):
    rng = random.Random(n * 7919 + int(latency_ms))
    return sum_fields(
        run_fields(
            task_type,
            "fail" if i < fail else "ok",
            latency_ms * (1 + rng.uniform(-jitter, jitter)),
            None,
        )
        for i in range(n)
    )


def test_queue_depth_counts_every_priority_list_and_unacked_messages(ctx, redis_url):
    app = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    for priority in (0, 0, 3, 6, 9, 9):
        app.send_task("orchestrator.execute", queue="agent.x", priority=priority, kwargs={})
    app.send_task("orchestrator.execute", queue="agent.y", priority=5, kwargs={})
    raw = ctx.store.r
    assert raw.llen("agent.x") < 6, "priorities must spread over several lists"
    with app.connection_for_read() as conn:
        held = app.amqp.queues["agent.x"](conn.default_channel).get(no_ack=False)
        assert held is not None and raw.hlen("unacked") == 1
        depths = ctx.mon.queue_depths(["agent.x", "agent.y", "agent.z"])
        assert depths == {"agent.x": 6, "agent.y": 1, "agent.z": 0}
        held.ack()
    assert ctx.mon.queue_depths(["agent.x"]) == {"agent.x": 5}
    app.close()


def test_a_run_is_counted_with_the_state_that_ends_its_task_and_only_then(ctx):
    r = ctx.store.r
    r.hset(task_key("t1"), mapping={"state": "running", "type": "echo", "agent": "a"})
    r.sadd("orch:inflight:a", "t1")
    counts = run_fields("echo", "ok", 150.0, 510.0)
    ended, _fills = ctx.store.settle_run(
        Settlement("t1", "a", TaskState.SUCCEEDED, BASE + 0.2, 150.0, "echo", counts, result="{}")
    )
    assert ended
    ledger = r.hgetall(task_key("t1"))
    assert (ledger["state"], ledger["result"], ledger["latency_ms"]) == ("succeeded", "{}", "150.0")
    assert not r.sismember("orch:inflight:a", "t1") and r.ttl(task_key("t1")) > 0
    assert r.hget("orch:counters", "succeeded") == "1"
    assert events(ctx.store.r, "task.succeeded") == [
        {"task_id": "t1", "agent_id": "a", "error": None, "latency_ms": 150.0, "type": "echo"}
    ]
    stats, _ = ctx.mon.window(300, BASE + 1)
    echo = stats.of("echo")
    assert (echo.ok, echo.fail, sum(echo.latency.values())) == (1, 0, 1)
    assert echo.lsum == 150_000 and echo.dsum == 510_000
    # a second copy of the same task ending it again records and counts nothing
    again, _fills = ctx.store.settle_run(
        Settlement(
            "t1",
            "a",
            TaskState.FAILED,
            BASE + 5,
            1.0,
            "echo",
            run_fields("echo", "fail", 1.0, None),
        )
    )
    assert not again
    assert r.hget(task_key("t1"), "state") == "succeeded"
    assert ctx.mon.totals() == {k: v for k, v in counts.items()}


def test_anomaly_loop_pages_once_per_episode(ctx, redis_client):
    steady, spike = 244, 6  # past the detector's warm-up of 240 points
    for m in range(steady + spike):
        per_minute = 300 if m >= steady else 30 + (m % 3)
        ctx.mon.telemetry.add(runs("echo", per_minute, 20.0), BASE + m * 60 + 1)
        run_anomaly(ctx, BASE + (m + 1) * 60 + 2)  # the minute just completed
    found = events(redis_client, "anomaly.detected")
    assert sorted(e["series"] for e in found) == ["throughput", "throughput:echo"]
    assert {e["direction"] for e in found} == {"up"}
    assert all(e["ts"] == BASE + (steady + 1) * 60 for e in found), "paged at the first point"
    # ticks within the same minute feed nothing twice
    assert run_anomaly(ctx, BASE + (steady + spike) * 60 + 30) == {"fed": 0}
    states = ctx.mon.detector_states()
    assert states["throughput"]["slot"] == int(BASE // 60) + steady + spike - 1
    assert states["throughput"]["state"]["in_episode"] is True


def test_a_state_the_earlier_detector_stored_is_replaced_not_fatal(ctx, redis_client):
    old = {"params": {"window": 120, "min_run": 4, "baseline": "median"}, "window": [30.0] * 5}
    slot = int(BASE // 60)
    ctx.mon.save_detector_states({"throughput": {"slot": slot, "state": old}})
    ctx.mon.telemetry.add(runs("echo", 30, 20.0), BASE + 1)
    assert run_anomaly(ctx, BASE + 62)["fed"] == 1
    state = ctx.mon.detector_states()["throughput"]["state"]
    assert state["seen"] == 1 and "min_run" not in state["params"]


def test_regression_needs_a_large_and_significant_shift(ctx, redis_client):
    now = BASE + 400 * 60 + 5
    current = int(now // 60)
    for slot in range(current - 360, current):
        slow = slot >= current - 15
        ctx.mon.telemetry.add(runs("api", 5, 200.0 if slow else 100.0, jitter=0.1), slot * 60 + 1)
        ctx.mon.telemetry.add(runs("steady", 5, 50.0, jitter=0.1), slot * 60 + 2)
    series = ctx.mon.series([6 * 3600], now)
    assert set(find_regressions(ctx, series)) == {"api"}
    assert set(find_regressions(ctx, series)) == {"api"}  # still regressed: no second event
    found = events(redis_client, "regression.detected")
    assert [e["type"] for e in found] == ["api"]
    assert found[0]["shift"] > 0.5 and found[0]["p_value"] < 0.01
    assert json.loads(redis_client.hget(REGRESSIONS, "api"))["recent_median"] > 150


TARGETS = """
targets:
  - {name: api-success, sli: success_rate, objective: 0.99, task_type: api}
  - {name: api-errors, sli: error_rate, objective: 0.05, task_type: api}
  - {name: api-latency, sli: latency_p95_ms, objective: 100, task_type: api}
  - {name: good-success, sli: success_rate, objective: 0.99, task_type: good}
  - {name: good-latency, sli: latency_p95_ms, objective: 100, task_type: good}
"""


def test_sla_loop_judges_floors_and_ceilings_and_pages_on_burn(ctx, redis_client, tmp_path):
    rules = tmp_path / "targets.yaml"
    rules.write_text(TARGETS)
    ctx.settings = ctx.settings.model_copy(update={"sla_targets_file": str(rules)})
    for m in range(10):
        ctx.mon.telemetry.add(runs("api", 10, 500.0, fail=2), BASE + m * 60 + 1)
        ctx.mon.telemetry.add(runs("good", 10, 20.0), BASE + m * 60 + 2)
    now = BASE + 10 * 60
    summary = run_sla(ctx, now)
    # the built-in task-success target covers every type: 20 failures in 200 runs breach it too
    bad = {"api-success", "api-errors", "api-latency", "task-success"}
    assert set(summary["non_compliant"]) == bad
    assert {e["name"] for e in events(redis_client, "sla.breached")} == bad
    reports = {r.name: r for r in sla_reports(ctx, now)}
    assert reports["api-success"].value == pytest.approx(0.8)  # a floor, missed from below
    assert reports["api-errors"].value == pytest.approx(0.2)  # a ceiling, missed from above
    assert reports["api-latency"].value > 100 and not reports["api-latency"].compliant
    assert reports["good-latency"].compliant and reports["good-latency"].value < 100
    assert reports["good-success"].compliant and reports["good-success"].value == 1.0
    assert set(reports["api-success"].burn_rates) == {"5m", "30m", "1h", "6h", "3d"}
    assert reports["api-success"].burn_rates["1h"] == pytest.approx(20.0)
    firing = {n for n, a in ctx.mon.alerts(SLO_ALERTS).items() if a.state is AlertState.FIRING}
    assert "SLOBurnRate:api-success:1h:5m" in firing
    assert "SLOBurnRate:good-success:1h:5m" not in firing
    run_sla(ctx, now + 1)
    assert len(events(redis_client, "sla.breached")) == 4, "a breach is announced once"
    history = ctx.mon.history("orch:sla:history")
    assert len(history) == 2 and history[-1]["targets"]["api-success"]["compliant"] is False


def test_alert_loop_acks_and_history(ctx, redis_client):
    first = run_alerts(ctx, BASE)
    assert "NoActiveAgents" in first["firing"] and first["health"] == "critical"
    alert = ctx.mon.alerts(ALERTS)["NoActiveAgents"]
    ctx.mon.ack("NoActiveAgents", alert.active_since)
    run_alerts(ctx, BASE + 30)
    assert ctx.mon.alerts(ALERTS)["NoActiveAgents"].acknowledged
    assert [e["name"] for e in events(redis_client, "alert.firing")] == ["NoActiveAgents"]
    history = ctx.mon.history(METRICS_HISTORY)
    assert [h["alerts_firing"] for h in history] == [1, 1]
    assert history[-1]["health"] == "critical"


@pytest.mark.usefixtures("durable_redis")
def test_security_loop_flags_a_client_once_per_episode(ctx, redis_client):
    threshold = ctx.settings.security_rejection_threshold
    for i in range(threshold):
        ctx.store.record_rejection(
            ["priority: bad"], submit_id=f"s{i}", now=BASE + i, client_id="bad-svc"
        )
    ctx.store.record_rejection(
        ["priority: bad"], submit_id="s-fine", now=BASE, client_id="fine-svc"
    )
    assert run_security(ctx, BASE + 60)["threats"] == ["bad-svc"]
    assert run_security(ctx, BASE + 90)["threats"] == ["bad-svc"]
    found = events(redis_client, "security.threat")
    assert [(e["client_id"], e["rejections"]) for e in found] == [("bad-svc", threshold)]
    later = BASE + ctx.settings.security_window_s + 120
    assert run_security(ctx, later)["threats"] == []


def test_backup_files_restore_and_retention(ctx, redis_client, redis_url):
    redis_client.hset("orch:counters", mapping={"submitted": 3})
    redis_client.set("orch:affinity:k", "a", ex=600)
    redis_client.set("unrelated", "x")
    infos = [run_backup(ctx, BASE + i) for i in range(3)]
    kept = list_backups(ctx.settings.backup_dir)
    assert [b.path for b in kept] == [i["path"] for i in infos[1:]]
    checked = verify_backup(infos[-1]["path"])
    assert checked.sha256 == infos[-1]["sha256"] and checked.keys >= 2
    assert len(events(redis_client, "backup.completed")) == 3
    with gzip.open(infos[-1]["path"], "rt") as fh:
        lines = [json.loads(x) for x in fh]
    by_key = {entry["key"]: entry for entry in lines[1:-1]}
    assert "unrelated" not in by_key and 0 < by_key["orch:affinity:k"]["pttl"] <= 600_000
    binary = redis.Redis.from_url(redis_url)
    binary.restore("copy", 0, base64.b64decode(by_key["orch:counters"]["dump"]))
    assert binary.hget("copy", "submitted") == b"3"
    binary.close()


def test_queue_depth_reads_the_brokers_redis_when_the_state_store_is_another(
    redis_url, redis_client
) -> None:
    """The agent queues live in the broker's Redis: with ORCH_STATE_URL elsewhere (here
    another database), the snapshot still counts what waits in them."""
    state_url = redis_url.rsplit("/", 1)[0] + "/1"
    settings = load_settings(redis_url=redis_url, state_url=state_url, _env_file=None)
    store = StateStore.from_settings(settings)
    try:
        agent = RegisteredAgent(agent_id="x", capabilities={"echo": 1.0}, queue="agent.x")
        store.register_agent(agent, time.time(), "test")
    finally:
        store.r.close()
    redis_client.lpush("agent.x", "m1", "m2", "m3")  # database 0: the broker
    env = {**worker_environ(redis_url), "ORCH_STATE_URL": state_url}
    status = cli_json(env, "status")
    assert status["queue_depth"] == 3, status
