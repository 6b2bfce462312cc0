"""Backups on a real redis-server: one point in time across keys, a manifest, no partial file.

Keys written together by one MULTI stay together in the backup while a writer runs beside
it; the manifest counts every kind; retention keeps exactly N; a backup process killed on
the way leaves nothing that `backup list` shows, and the next backup cleans up after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support import CLI, cli, cli_json, wait_for

pytestmark = pytest.mark.integration

PAIRS = 50  # counters a writer increments together, one MULTI per round


@pytest.fixture
def env(orch_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**orch_env, "ORCH_BACKUP_DIR": str(tmp_path / "backups")}


def fill(r: redis.Redis, n: int, size: int = 64) -> None:
    """`n` filler keys, so that a backup takes a while."""
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"orch:filler:{i}", f"{i:08d}" * (size // 8))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def test_keys_written_together_are_backed_up_together(env, redis_client, redis_url):
    fill(redis_client, 30_000)
    stop = threading.Event()

    def writer() -> None:
        with redis.Redis.from_url(redis_url) as r:
            while not stop.is_set():
                pipe = r.pipeline(transaction=True)
                for i in range(PAIRS):
                    pipe.incr(f"orch:together:{i * 997}")  # spread over the keyspace
                pipe.execute()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_for(lambda: redis_client.get("orch:together:0") is not None, timeout=10)
        manifest = cli_json(env, "backup", "create")
    finally:
        stop.set()
        thread.join(10)
    redis_client.flushall()
    cli(env, "backup", "restore", manifest["path"])
    values = {redis_client.get(f"orch:together:{i * 997}") for i in range(PAIRS)}
    assert len(values) == 1, f"one point in time, got {sorted(values)[:5]}..."
    assert manifest["kinds"]["other"] == 30_000 + PAIRS


def test_the_manifest_counts_every_kind(env, redis_client):
    for key in ("a", "b", "c"):
        cli(env, "submit", "count", "--payload", f'{{"key": "{key}"}}')
    redis_client.hset("orch:circuit:x", mapping={"state": "open"})
    manifest = cli_json(env, "backup", "create")
    assert manifest["format"] == "hive-orchestrator-backup" and manifest["version"] == 1
    assert manifest["kinds"]["tasks"] == 3 and manifest["kinds"]["breakers"] == 1
    # Both streams: task.submitted in the task stream, task.parked in orchestrator:events.
    assert manifest["kinds"]["parked"] == 1 and manifest["kinds"]["events"] == 2
    assert manifest["keys"] == sum(manifest["kinds"].values())
    verified = cli_json(env, "backup", "verify", manifest["path"])
    assert {k: verified[k] for k in manifest} == manifest
    assert "3 tasks" in cli(env, "backup", "verify", manifest["path"]).stdout


def test_retention_keeps_exactly_n(env):
    kept = {**env, "ORCH_BACKUP_RETENTION": "2"}
    made = [cli_json(kept, "backup", "create")["path"] for _ in range(4)]
    listed = [b["path"] for b in cli_json(kept, "backup", "list")]
    assert listed == made[-2:]
    assert sorted(os.listdir(env["ORCH_BACKUP_DIR"])) == sorted(
        [Path(p).name for p in made[-2:]] + [Path(p).name + ".sha256" for p in made[-2:]]
    )


def test_a_backup_killed_on_the_way_leaves_nothing_listed(env, redis_client):
    fill(redis_client, 150_000, size=256)
    folder = Path(env["ORCH_BACKUP_DIR"])
    proc = subprocess.Popen([*CLI, "backup", "create"], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: list(folder.glob("*.partial")), timeout=30, interval=0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, "killed before it finished"
    assert list(folder.glob("*.partial")), "the half-written file is there"
    assert cli_json(env, "backup", "list") == []
    assert "no backups" in cli(env, "backup", "list").stdout
    redis_client.flushall()  # a small backup now, so this one finishes quickly
    made = cli_json(env, "backup", "create")
    assert [b["path"] for b in cli_json(env, "backup", "list")] == [made["path"]]
    assert not list(folder.glob("*.partial")), "the next backup removed the partial file"


def test_status_and_backup_status_give_one_backup_age(env, redis_client):
    """With no backup yet, both say how long there has been none (since monitoring began),
    and the text says `none` instead of a bare number."""
    redis_client.set("orch:monitor:since", repr(time.time() - 882))
    status = cli_json(env, "status")
    dr = cli_json(env, "backup", "status")
    assert dr["last_backup_path"] is None
    assert abs(status["backup_age_s"] - dr["backup_age_s"]) < 5
    assert 880 <= dr["backup_age_s"] < 900
    assert "newest backup: none (none for 88" in cli(env, "backup", "status").stdout
