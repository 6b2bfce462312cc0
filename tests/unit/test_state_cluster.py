"""A Redis Cluster state store (ORCH_STATE_CLUSTER): key layout, settings, start-up refusals.

The three-node cluster itself: tests/integration/test_state_cluster.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, MovedError, ResponseError

from orchestrator import redis_urls
from orchestrator.errors import ConfigError
from orchestrator.redis_urls import cluster_problem, env_flag
from orchestrator.security.fitness import RedisConfig
from orchestrator.security.preflight import RedisTarget, check_fitness
from orchestrator.store.refusals import translated

REPO = Path(__file__).resolve().parents[2]

#: Prints every key name the store builds, in the layout ORCH_STATE_CLUSTER chose at import.
LAYOUT = """
import json, re
from orchestrator.models import TaskState
from orchestrator.store import keys
from orchestrator.store.codes import RejectionKind
names = [v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str)
         and (v.startswith("orch:") or v.startswith(("orchestrator:", "{")))]
builders = [keys.task_key("t"), keys.history_key("t"), keys.wrr_key("echo"),
            keys.affinity_key("k"), keys.circuit_key("a"), keys.inflight_key("a"),
            keys.failures_key("a"), keys.lock_key("alerts"), keys.telemetry_key("m", 1),
            keys.rate_key("c"), keys.block_key("c"), keys.event_mark_key("h", "1-0"),
            keys.event_mark_key("h", "1-0", keys.TASK_EVENTS), keys.backlog_queue("echo", 5, "c"),
            keys.backlog_clients("echo", 5), keys.rejections_key(1, RejectionKind.THRESHOLD)]
lua = [n + "x" if n.endswith(":") else n for n in re.findall(r'= "([^"]*)"', keys.lua_header())]
print(json.dumps({"prefix": keys.PREFIX, "streams": list(keys.EVENT_STREAMS),
                  "names": names + builders + [n for n in lua if n]}))
"""


def layout(cluster: bool) -> dict[str, object]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if cluster:
        env["ORCH_STATE_CLUSTER"] = "true"
    out = subprocess.run(
        [sys.executable, "-c", LAYOUT], env=env, cwd="/", capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_on_a_cluster_every_key_lies_in_the_slot_of_the_fixed_event_stream() -> None:
    tagged = layout(cluster=True)
    names = tagged["names"]
    assert isinstance(names, list) and len(names) > 60
    slot = key_slot(b"orchestrator:events")
    assert {n: key_slot(n.encode()) for n in names if key_slot(n.encode()) != slot} == {}
    assert tagged["prefix"] == "orch:{orchestrator:events}:"
    assert tagged["streams"] == ["orchestrator:events", "{orchestrator:events}:tasks"]
    assert all(n.startswith(("orch:", "orchestrator:events", "{")) for n in names)


def test_without_it_the_layout_is_unchanged() -> None:
    plain = layout(cluster=False)
    assert plain["prefix"] == "orch:"
    assert plain["streams"] == ["orchestrator:events", "orchestrator:events:tasks"]


def test_the_flag_is_read_from_the_environment_then_dot_env(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ORCH_STATE_CLUSTER", raising=False)
    monkeypatch.chdir(tmp_path)
    assert env_flag("ORCH_STATE_CLUSTER") is False
    (tmp_path / ".env").write_text("ORCH_STATE_CLUSTER=yes\n")
    assert env_flag("ORCH_STATE_CLUSTER") is True
    monkeypatch.setenv("orch_state_cluster", "0")  # the environment wins, whatever its case
    assert env_flag("ORCH_STATE_CLUSTER") is False


def test_the_setting_must_agree_with_the_layout_the_process_started_with() -> None:
    assert redis_urls.STATE_CLUSTER_LAYOUT is False  # the test process has none
    problem = cluster_problem(True, "redis://s:1/0", ("redis://b:1/0",))
    assert problem is not None
    assert problem.startswith("ORCH_STATE_CLUSTER is true here, but the key names of this")
    assert "before the process starts" in problem
    assert cluster_problem(False, "redis://s:1/0", ("redis://s:1/0",)) is None


@pytest.mark.parametrize(
    ("state", "others", "wait", "says"),
    [
        ("redis://s:1/0", ("redis://s:1/0", "redis://b:1/0"), 0, "ORCH_BROKER_URL and"),
        ("sentinel://s:26379/0", ("redis://b:1/0",), 0, "redis:// or rediss://"),
        ("unix:///tmp/r.sock", ("redis://b:1/0",), 0, "redis:// or rediss://"),
        ("redis://s:1/0", ("redis://b:1/0",), 1, "ORCH_SUBMIT_WAIT_REPLICAS"),
        ("redis://s:1/0", ("redis://b:1/0",), 0, None),
    ],
)
def test_a_cluster_state_store_needs_a_node_url_and_a_single_broker(
    monkeypatch, state, others, wait, says
) -> None:
    monkeypatch.setattr(redis_urls, "STATE_CLUSTER_LAYOUT", True)
    problem = cluster_problem(True, state, others, wait)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem


def test_the_start_up_check_refuses_a_cluster_node_where_it_cannot_serve() -> None:
    node = RedisConfig("noeviction", 0, True, "everysec", cluster=True)
    single = RedisConfig("noeviction", 0, True, "everysec", cluster=False)
    said = {"redis://n:1/0": node, "redis://s:2/0": single}

    def read(target: RedisTarget) -> RedisConfig:
        return said[target.url]

    with pytest.raises(ConfigError, match=r"^ORCH_BROKER_URL: the Redis at n:1 is a Redis Clus"):
        check_fitness([RedisTarget("ORCH_BROKER_URL", "redis://n:1/0")], read=read)
    with pytest.raises(ConfigError, match="only the state store can be one"):
        check_fitness([RedisTarget("ORCH_STATE_URL", "redis://n:1/0")], read=read)
    with pytest.raises(ConfigError, match=r"^ORCH_STATE_URL: ORCH_STATE_CLUSTER is true, but"):
        check_fitness([RedisTarget("ORCH_STATE_URL", "redis://s:2/0", cluster=True)], read=read)
    assert (
        check_fitness([RedisTarget("ORCH_STATE_URL", "redis://n:1/0", cluster=True)], read=read)
        == []
    )
    assert check_fitness([RedisTarget("ORCH_STATE_URL", "redis://s:2/0")], read=read) == []


@pytest.mark.parametrize(
    "reply",
    [
        ClusterCrossSlotError("Keys in request don't hash to the same slot"),
        MovedError("7957 127.0.0.1:51013"),
        ResponseError("Script attempted to access a non local key in a cluster node script"),
    ],
)
def test_a_cluster_nodes_refusal_names_the_setting_to_change(reply) -> None:
    """A process whose layout is not the cluster's, against a cluster node, hears what to set
    (the command then exits with status 2, as at any setting's fault)."""
    error = translated(reply, "load_fleet")
    assert isinstance(error, ConfigError)
    assert str(error).startswith("ORCH_STATE_CLUSTER: the state store's Redis is a Redis Clus")
    assert "step 'load_fleet'" in str(error)
