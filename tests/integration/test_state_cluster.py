"""The state store and routing on a local three-node Redis Cluster (ORCH_STATE_CLUSTER).

The broker and the result backend stay on one plain Redis (kombu and Celery's result backend
have no cluster client); a control worker, beat with every loop fast, and two agents run on
that split, and the shell and a Celery client submit. Every key of the state store lies on
the one node that holds the fixed event stream's slot.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from redis.cluster import RedisCluster

from tests.integration.conftest import FAST_LOOPS, agent_args, control_args
from tests.redis_cluster import RedisClusterNodes
from tests.support import CeleryProcess, RedisServer, cli, cli_json, wait_for, worker_environ

TAGGED = "orch:{orchestrator:events}:"


@dataclass
class Split:
    cluster: RedisClusterNodes
    broker: RedisServer
    env: dict[str, str]
    procs: dict[str, CeleryProcess]
    state: RedisCluster
    app: Celery


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    cluster = RedisClusterNodes().start()
    broker = RedisServer().start()
    logs = tmp_path_factory.mktemp("cluster-procs")
    env = {
        **worker_environ(broker.url),
        "ORCH_STATE_URL": cluster.url,
        "ORCH_STATE_CLUSTER": "true",
        "ORCH_BACKUP_DIR": str(logs / "backups"),
        **FAST_LOOPS,
    }
    procs: dict[str, CeleryProcess] = {}
    state = RedisCluster.from_url(cluster.url, decode_responses=True)
    app = Celery(broker=broker.url, backend=broker.url)
    try:
        procs["control"] = CeleryProcess(control_args(), env, name="control", log_dir=logs)
        procs["beat"] = CeleryProcess(["beat", "-l", "info"], env, name="beat", log_dir=logs)
        for agent in ("c1", "c2"):
            agent_env = {
                **env,
                "ORCH_AGENT_ID": agent,
                "ORCH_AGENT_CAPABILITIES": "echo,hold",
                "ORCH_HANDLERS": "tests.handlers",
            }
            procs[agent] = CeleryProcess(agent_args(agent), agent_env, name=agent, log_dir=logs)
        for proc in procs.values():
            proc.start()
        for name in ("control", "c1", "c2"):
            procs[name].wait_for_log("ready.", timeout=60)
        yield Split(cluster, broker, env, procs, state, app)
    finally:
        for proc in procs.values():
            proc.kill()
        gc.collect()  # results still subscribed unsubscribe now, while the broker answers
        state.close()
        app.close()
        broker.stop()
        cluster.stop()


def keys_by_node(split: Split) -> dict[int, list[str]]:
    out = {}
    for node in split.cluster.nodes:
        with redis.Redis(port=node.port, decode_responses=True) as one:
            out[node.port] = sorted(one.scan_iter(match="orch*", count=1000))
    return out


def test_a_task_from_the_shell_runs_with_its_ledger_and_events_on_the_cluster(split) -> None:
    done = cli(split.env, "submit", "echo", "--payload", '{"x": 1}', "--wait", "--json")
    submitted = json.loads(done.stdout)
    task_id = submitted["task_id"]
    assert submitted["result"] == {"x": 1}
    entry = cli_json(split.env, "task", task_id)
    assert entry["state"] == "succeeded" and entry["agent_id"] in ("c1", "c2")
    assert [h["state"] for h in entry["history"]][-1] == "succeeded"
    events = [json.loads(line) for line in cli(split.env, "events", "--json").stdout.splitlines()]
    assert {"task.submitted", "task.routed", "task.succeeded"} <= {
        e["type"] for e in events if e["data"].get("task_id") == task_id
    }
    # Every key of the state store is on the node of the event stream's slot, none elsewhere.
    home = split.state.get_node_from_key("orchestrator:events").port
    placed = keys_by_node(split)
    assert f"{TAGGED}task:{task_id}" in placed[home]
    assert {port: names for port, names in placed.items() if port != home and names} == {}
    assert all(k.startswith(TAGGED) or k.startswith("orchestrator:events") for k in placed[home])


def hold(split: Split, key: str) -> AsyncResult:
    """A by-name submission whose handler runs until `release(split, key)`."""
    kwargs = {"type": "hold", "payload": {"key": key, "max_s": 60}}
    return split.app.send_task("orchestrator.submit", kwargs=kwargs)


def release(split: Split, key: str) -> None:
    with redis.Redis.from_url(split.broker.url) as broker:
        broker.set(f"test:release:{key}", 1)


def test_by_name_submissions_wait_for_a_free_slot_and_all_run(split) -> None:
    """Six held tasks on two agents of one slot and one prefetched task each: four are
    dispatched, two wait in the backlog (the enqueue and fill steps), and every one ends
    succeeded once released."""
    sent = [hold(split, "backlog") for _ in range(6)]
    wait_for(
        lambda: cli_json(split.env, "backlog")["waiting"] == 2,
        timeout=30,
        message="two submissions never waited in the backlog",
    )
    release(split, "backlog")
    assert [r.get(timeout=60) for r in sent] == [{"held": "backlog"}] * 6
    states = [cli_json(split.env, "task", r.id)["state"] for r in sent]
    assert states == ["succeeded"] * 6
    assert cli_json(split.env, "backlog")["waiting"] == 0


def test_the_monitoring_loops_and_the_status_read_the_cluster(split) -> None:
    def ran() -> set[str]:
        runs = [json.loads(r) for r in split.state.lrange(f"{TAGGED}monitor:runs", 0, -1)]
        return {r["loop"] for r in runs if r.get("ran")}

    loops = {"alerts", "sla", "security", "anomaly", "backup"}
    wait_for(lambda: loops <= ran(), timeout=30, message=f"loops that ran: {ran()}")
    status = cli_json(split.env, "status")
    assert status["agents_total"] == 2 and status["agents_active"] == 2
    assert list(Path(split.env["ORCH_BACKUP_DIR"]).glob("orch-backup-*.jsonl.gz"))
    for name in ("control", "beat"):
        log = split.procs[name].log_text()
        assert "ERROR" not in log and "Traceback" not in log, log[-3000:]


def test_a_killed_agents_task_runs_on_the_other(split) -> None:
    held = hold(split, "kill")
    wait_for(
        lambda: cli_json(split.env, "task", held.id).get("state") == "running",
        timeout=30,
        message="the task never started",
    )
    holder = cli_json(split.env, "task", held.id)["agent_id"]
    split.procs[holder].kill()
    release(split, "kill")
    assert held.get(timeout=60) == {"held": "kill"}
    entry = cli_json(split.env, "task", held.id)
    assert entry["state"] == "succeeded" and entry["agent_id"] != holder


#: A handler's outbound breaker (pybreaker on the state store), opened by two failures.
OPEN_A_BREAKER = """
from orchestrator.recovery.outbound import circuit_breaker
breaker = circuit_breaker("payments", fail_max=2, reset_timeout_s=60)
def fail():
    raise RuntimeError("down")
for _ in range(3):
    try:
        breaker.call(fail)
    except Exception as exc:
        print(type(exc).__name__)
"""


def test_a_handlers_outbound_breaker_is_shared_through_the_cluster(split) -> None:
    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", OPEN_A_BREAKER],
            env=split.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.split()

    assert run() == ["RuntimeError", "CircuitBreakerError", "CircuitBreakerError"]
    assert run() == ["CircuitBreakerError"] * 3  # another process finds it open
    assert split.state.get(f"{TAGGED}handler_circuit:payments:pybreaker:state") == "open"


def test_a_worker_pointed_at_a_cluster_without_the_setting_refuses_to_start(split) -> None:
    env = {k: v for k, v in split.env.items() if k != "ORCH_STATE_CLUSTER"}
    refused = cli(env, "status", check=False)
    assert refused.returncode == 2
    assert "Error: ORCH_STATE_CLUSTER: the state store's Redis is a Redis Cluster" in refused.stderr
    broker_there = {**split.env, "ORCH_BROKER_URL": split.cluster.nodes[1].url}
    proc = CeleryProcess(control_args(name="misplaced"), broker_there, name="misplaced")
    proc.start()
    wait_for(lambda: not proc.alive, timeout=30, message="the worker did not stop")
    assert "ORCH_BROKER_URL: the Redis at" in proc.log_text()
    assert "is a Redis Cluster node" in proc.log_text()
