"""Ids that collided under the older key layout, through a real cluster; the layout's migration.

Task `X:history`'s ledger entry was task X's history list (`orch:task:X:history`): the
second of the two failed with a raw WRONGTYPE. Each per-id kind now owns its prefix
(store.keys), so every such pair runs; an older layout's history lists are renamed at the
control worker's start (StateStore.migrate_keys) and by a restore of an older backup."""

from __future__ import annotations

import json

import pytest

from orchestrator.config import load_settings
from orchestrator.store import StateStore
from orchestrator.store.keys import history_key, legacy_history_key, task_key
from tests.support import cli, cli_json

pytestmark = pytest.mark.integration

#: `X` and X with every suffix or prefix a key layout could have added to it.
COLLIDING = ["X", "X:history", "history:X", "X:task", "task:X", "X:history:history", "history"]


def states(redis_client, task_id: str) -> list[str]:
    return [json.loads(h)["state"] for h in redis_client.lrange(history_key(task_id), 0, -1)]


def test_ids_that_shared_a_key_all_run_and_show(start_control, start_agent, client, orch_env):
    start_control()
    start_agent("a", "echo")
    results = {tid: client.submit("echo", {"id": tid}, task_id=tid) for tid in COLLIDING}
    for tid, result in results.items():
        assert result.get(timeout=30) == {"id": tid}, tid
    for tid in COLLIDING:
        record = cli_json(orch_env, "task", tid)
        assert (record["task_id"], record["state"]) == (tid, "succeeded")
        states = [h["state"] for h in record["history"]]
        if "queued" in states:  # it waited in the backlog for the agent's slot first
            assert states.index("queued") == 1, tid
            states.remove("queued")
        assert states == ["accepted", "routed", "running", "succeeded"], tid


def planted_old_layout(redis_client, task_id: str, ttl: int = 600) -> list[str]:
    entries = [json.dumps({"ts": 1.0, "state": "accepted"}), json.dumps({"ts": 2.0, "state": "x"})]
    redis_client.hset(task_key(task_id), mapping={"state": "succeeded", "type": "echo"})
    redis_client.rpush(legacy_history_key(task_id), *entries)
    redis_client.expire(legacy_history_key(task_id), ttl)
    return entries


def test_the_migration_renames_old_history_lists_and_leaves_a_ledger_hash_alone(
    redis_url, redis_client
):
    old = planted_old_layout(redis_client, "old-1")
    newer = planted_old_layout(redis_client, "old-2")
    redis_client.rpush(history_key("old-2"), json.dumps({"ts": 3.0, "state": "succeeded"}))
    # Task `Y:history`'s ledger entry has the name an old history list of Y had: a hash.
    redis_client.hset(task_key("Y:history"), mapping={"state": "accepted", "type": "echo"})
    store = StateStore.from_settings(load_settings(redis_url=redis_url))
    try:
        assert store.migrate_keys(scan_count=2) == 2
        assert store.migrate_keys() == 0  # idempotent
    finally:
        store.r.close()
    assert redis_client.lrange(history_key("old-1"), 0, -1) == old
    assert 0 < redis_client.ttl(history_key("old-1")) <= 600
    # Written by an upgraded worker first: the older entries go in front of it.
    assert [json.loads(h)["ts"] for h in redis_client.lrange(history_key("old-2"), 0, -1)] == [
        1.0,
        2.0,
        3.0,
    ]
    assert json.loads(newer[0])["ts"] == 1.0
    assert not redis_client.exists(legacy_history_key("old-1"), legacy_history_key("old-2"))
    assert redis_client.type(task_key("Y:history")) == "hash"
    assert redis_client.hgetall(task_key("Y:history")) == {"state": "accepted", "type": "echo"}


def test_a_control_worker_migrates_old_history_lists_when_it_starts(
    start_control, redis_client, orch_env
):
    old = planted_old_layout(redis_client, "before-upgrade")
    start_control()
    assert redis_client.lrange(history_key("before-upgrade"), 0, -1) == old
    assert not redis_client.exists(legacy_history_key("before-upgrade"))
    record = cli_json(orch_env, "task", "before-upgrade")
    assert [h["state"] for h in record["history"]] == ["accepted", "x"]


def test_a_restore_of_an_older_snapshot_maps_old_history_names(redis_client, orch_env, tmp_path):
    env = {**orch_env, "ORCH_BACKUP_DIR": str(tmp_path / "backups")}
    old = planted_old_layout(redis_client, "snap-1")
    redis_client.hset(task_key("Z:history"), mapping={"state": "succeeded", "type": "echo"})
    path = cli_json(env, "backup", "create")["path"]
    redis_client.flushall()

    report = cli_json(env, "backup", "restore", path)
    assert report["kinds"]["task history"] == {"restore": 1}
    assert report["kinds"]["tasks"] == {"restore": 2}
    assert redis_client.lrange(history_key("snap-1"), 0, -1) == old
    assert not redis_client.exists(legacy_history_key("snap-1"))
    assert redis_client.hgetall(task_key("Z:history")) == {"state": "succeeded", "type": "echo"}
    assert cli(env, "task", "snap-1", "--json").returncode == 0
