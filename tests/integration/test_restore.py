"""`orchestrator backup restore` on a real redis-server and workers: nothing lost, nothing twice.

A flushed Redis gets its agents, breakers, dead letters and parked tasks back as they were,
and an unfinished task runs once; a live Redis that accepted work since the snapshot loses
none of it; a damaged, truncated or wrong-version file is refused and Redis stays as it was.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backup.archive import sha256_file
from tests.support import cli, cli_json, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def env(orch_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**orch_env, "ORCH_BACKUP_DIR": str(tmp_path / "backups")}


def view(r) -> dict[str, Any]:
    """What must come back identical after a flush and a restore."""
    ledgers = {k: {f: v for f, v in r.hgetall(k).items()} for k in r.scan_iter("orch:task:*")}
    return {
        "agents": (r.hgetall("orch:agents"), r.hgetall("orch:agent_status")),
        "circuit": r.hgetall("orch:circuit:b"),
        "dlq": r.zrange("orch:dlq", 0, -1, withscores=True),
        "parked": sorted(r.zrange("orch:parked", 0, -1)),
        "ledgers": ledgers,
    }


def submit_counted(env: dict[str, str], key: str) -> str:
    return cli_json(env, "submit", "count", "--payload", json.dumps({"key": key}))["task_id"]


def test_a_flushed_redis_comes_back_and_unfinished_tasks_run_once(
    env, redis_client, start_agent, start_control
):
    start_control()
    echo = start_agent("b", "echo")
    echo.terminate()  # deregistered: listed, offline, and nothing writes while we compare
    wait_for(lambda: redis_client.hget("orch:agent_status", "b") == "offline", timeout=30)
    ids = [submit_counted(env, k) for k in ("k1", "k2", "k3")]  # no `count` agent: parked
    wait_for(lambda: redis_client.zcard("orch:parked") == 3, timeout=30)
    redis_client.hset("orch:circuit:b", mapping={"state": "open", "failures": "5"})
    redis_client.hset("orch:task:dead-1", mapping={"state": "dead_lettered", "type": "echo"})
    redis_client.zadd("orch:dlq", {"dead-1": 1234.5})
    # k1 as a snapshot taken while it was routed to an agent: its message dies with the flush.
    redis_client.hset(f"orch:task:{ids[0]}", mapping={"state": "routed", "agent": "b"})
    redis_client.zrem("orch:parked", ids[0])
    agents_before = cli_json(env, "agents")
    before = view(redis_client)
    path = cli_json(env, "backup", "create")["path"]

    redis_client.flushall()
    dry = cli_json(env, "backup", "restore", path, "--dry-run")
    assert dry["dry_run"] and dry["parked_again"] == [ids[0]]
    # The running control worker's kombu may re-declare its bindings (`_kombu.*`) meanwhile.
    written = [k for k in redis_client.keys("*") if not k.startswith("_kombu.")]
    assert written == [], "a dry run writes nothing"
    table = cli(env, "backup", "restore", path, "--dry-run").stdout
    assert "would change" in table and "tasks" in table

    report = cli_json(env, "backup", "restore", path)
    status = cli_json(env, "backup", "status")
    assert status["last_restore_path"] == path and status["last_restore_at"] is not None
    assert report["parked_again"] == [ids[0]]
    assert report["kinds"]["tasks"]["restore"] == 4 and report["kinds"]["tasks"]["park_again"] == 1
    after = view(redis_client)
    assert cli_json(env, "agents") == agents_before
    assert (after["agents"], after["circuit"], after["dlq"]) == (
        before["agents"],
        before["circuit"],
        before["dlq"],
    )
    assert after["parked"] == sorted(ids)  # k2, k3 as they were, and k1 parked again
    assert after["ledgers"][f"orch:task:{ids[0]}"]["state"] == "parked"
    assert {k: v for k, v in after["ledgers"].items() if ids[0] not in k} == {
        k: v for k, v in before["ledgers"].items() if ids[0] not in k
    }

    start_agent("a", "count")  # registering triggers the parked sweep
    for i, key in zip(ids, ("k1", "k2", "k3"), strict=True):
        wait_for(lambda i=i: redis_client.hget(f"orch:task:{i}", "state") == "succeeded", 60)
        assert redis_client.get(f"test:runs:{key}") == "1"
    time.sleep(1)
    assert [redis_client.get(f"test:runs:{k}") for k in ("k1", "k2", "k3")] == ["1"] * 3


def test_a_live_redis_loses_nothing_accepted_since_the_snapshot(env, redis_client):
    old = [submit_counted(env, k) for k in ("o1", "o2")]
    path = cli_json(env, "backup", "create")["path"]
    new = [submit_counted(env, k) for k in ("n1", "n2")]
    # Since the snapshot o1 has succeeded and left the parked set.
    redis_client.hset(f"orch:task:{old[0]}", mapping={"state": "succeeded"})
    redis_client.zrem("orch:parked", old[0])
    redis_client.hset("orch:counters", "submitted", 99)
    redis_client.delete(f"orch:task:{old[1]}", f"orch:history:{old[1]}")
    redis_client.zrem("orch:parked", old[1])  # o2 lost from the live Redis

    report = cli_json(env, "backup", "restore", path)
    assert report["parked_again"] == []
    assert redis_client.hget(f"orch:task:{old[0]}", "state") == "succeeded", "the live one wins"
    assert sorted(redis_client.zrange("orch:parked", 0, -1)) == sorted([old[1], *new])
    assert redis_client.hget(f"orch:task:{old[1]}", "state") == "parked"
    assert redis_client.hget("orch:counters", "submitted") == "99"
    assert all(redis_client.hget(f"orch:task:{t}", "state") == "parked" for t in new)


def damaged(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncated(path: Path) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(lines[:-1])))
    Path(f"{path}.sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


def wrong_version(path: Path) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    header = json.loads(lines[0]) | {"version": 99}
    path.write_bytes(gzip.compress(json.dumps(header).encode() + b"\n" + b"".join(lines[1:])))
    Path(f"{path}.sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


@pytest.mark.parametrize(
    "spoil,message",
    [
        (damaged, "sha256 mismatch"),
        (truncated, "truncated"),
        (wrong_version, "format version 99; this orchestrator reads version 1"),
    ],
)
def test_a_bad_file_is_refused_and_redis_is_left_alone(env, redis_client, spoil, message):
    submit_counted(env, "x")
    path = Path(cli_json(env, "backup", "create")["path"])
    spoil(path)
    redis_client.flushall()
    redis_client.set("orch:marker", "live")
    done = cli(env, "backup", "restore", str(path), check=False)
    assert done.returncode != 0 and message in done.stderr
    assert redis_client.keys("*") == ["orch:marker"]
    verify = cli(env, "backup", "verify", str(path), check=False)
    assert verify.returncode != 0 and message in verify.stderr


def test_backup_status_judges_the_newest_verified_backup_against_the_rpo(env, redis_client):
    assert cli_json(env, "backup", "status")["rpo_met"] is False  # no backup yet
    created = cli_json(env, "backup", "create")
    status = cli_json(env, "backup", "status")
    assert status["last_backup_path"] == created["path"] and status["backups_kept"] == 1
    assert status["rpo_met"] and status["healthy"] and status["last_verified_at"] is not None
    assert status["rpo_s"] == 2 * 6 * 3600
    strict = cli_json({**env, "ORCH_BACKUP_RPO_S": "0.001"}, "backup", "status")
    assert strict["rpo_met"] is False and strict["rpo_s"] == 0.001
    assert "RPO" in cli(env, "backup", "status").stdout


def test_a_restore_moves_the_fleet_version_past_any_a_router_has_seen(env, redis_client):
    """Routers keep their view of the fleet until the fleet version moves; a restore brings
    the snapshot's version back, which a router that read the fleet then would take for
    "nothing changed" (routing/router.py)."""
    redis_client.set("orch:fleet:version", 7)
    path = cli_json(env, "backup", "create")["path"]
    redis_client.flushall()  # the test server (redis_url), never the machine's
    cli_json(env, "backup", "restore", path)
    assert int(redis_client.get("orch:fleet:version")) > 7
