"""A Redis unfit to keep work: refused at start, reported by the security loop, full without loss.

With an evicting maxmemory-policy a full Redis deletes queued tasks, records and locks, and
acknowledged work vanishes: every role refuses to start on one, in one line naming the policy
and the fix, unless ORCH_ALLOW_EVICTING_REDIS=true (a warning then), and the security loop
reports it. With noeviction a full Redis refuses writes instead: each submission is then either
accepted and ends (succeeded, or failed with a reason) or refused with StoreUnavailable naming
the memory limit, and every process rides it out and serves again once memory frees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from orchestrator.config import load_settings
from orchestrator.runtime.celeryconf import MONITORING_QUEUE, create_app
from orchestrator.store.keys import EVENTS, SECURITY_CHECKED
from tests.integration.conftest import agent_args, control_args
from tests.support import RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "orchestrator.cli"]
EVICTING_LINE = (
    "hive-orchestrator: ORCH_REDIS_URL: the Redis at 127.0.0.1:{port} has maxmemory-policy "
    "allkeys-lru (maxmemory 20mb): when full it deletes keys, queued tasks, task records and "
    "locks among them, so acknowledged work vanishes; set maxmemory-policy noeviction "
    "(redis.conf, or CONFIG SET), or ORCH_ALLOW_EVICTING_REDIS=true to run anyway"
)


@pytest.fixture(scope="module")
def evicting_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        workdir=tmp_path_factory.mktemp("redis-lru"),
        extra_args=["--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru"],
    )
    with server:
        yield server


@pytest.fixture
def evicting_env(evicting_redis: RedisServer, orch_env: dict[str, str]) -> dict[str, str]:
    with evicting_redis.client() as admin:
        admin.flushall()
    return {**orch_env, "ORCH_REDIS_URL": evicting_redis.url}


def security_events(client: redis.Redis) -> list[dict[str, Any]]:
    """The `security.threat` events' data, each with the event's severity."""
    return [
        {**json.loads(fields["data"]), "severity": fields["severity"]}
        for _, fields in client.xrange(EVENTS)
        if fields["type"] == "security.threat"
    ]


def test_every_role_refuses_an_evicting_redis_in_one_line(celery_procs, evicting_env):
    port = evicting_env["ORCH_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    agent_env = {
        **evicting_env,
        "ORCH_AGENT_ID": "a1",
        "ORCH_AGENT_CAPABILITIES": "echo",
        "ORCH_HANDLERS": "tests.handlers",
    }
    roles = [
        celery_procs(control_args(), evicting_env, name="control"),
        celery_procs(agent_args("a1"), agent_env, name="agent"),
        celery_procs(["beat", "-l", "info"], evicting_env, name="beat"),
        celery_procs(
            ["flower", f"--port={free_port()}", "--address=127.0.0.1"], evicting_env, name="flower"
        ),
        celery_procs(["exporter", "--port", "0"], evicting_env, name="exporter", argv=CLI),
        celery_procs(["control"], evicting_env, name="orchestrator-control", argv=CLI),
    ]
    for proc in roles:
        assert proc.wait(timeout=60) == 2, f"{proc.name}: {proc.log_text()}"
        log = proc.log_text()
        assert EVICTING_LINE.format(port=port) in log.splitlines(), f"{proc.name}: {log}"
        assert "Traceback" not in log, f"{proc.name}: {log}"


def test_allowed_an_evicting_redis_starts_with_a_warning_and_is_a_finding(
    celery_procs, evicting_env, evicting_redis
):
    allowed = {**evicting_env, "ORCH_ALLOW_EVICTING_REDIS": "true"}
    control = celery_procs(control_args(), allowed, name="control")
    log = control.wait_for_log("ready.", timeout=60)
    warned = [line for line in log.splitlines() if "maxmemory-policy allkeys-lru" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], log
    assert "(allowed by ORCH_ALLOW_EVICTING_REDIS)" in warned[0]
    assert any("appendonly no" in line and "WARNING" in line for line in log.splitlines())

    app = create_app(load_settings(redis_url=evicting_redis.url), with_tasks=False)
    with evicting_redis.client(decode_responses=True) as r:
        try:
            app.send_task("orchestrator.monitor.security", queue=MONITORING_QUEUE)
            wait_for(lambda: r.get(SECURITY_CHECKED), timeout=60, message="no security run")
        finally:
            app.close()
        done = subprocess.run(
            [*CLI, "security", "--json"], env=allowed, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        findings = {f["id"]: f for f in json.loads(done.stdout)["findings"]}
        evicting = findings["redis_evicting:broker+results+state"]
        assert evicting["severity"] == "warning"
        assert "maxmemory-policy allkeys-lru" in evicting["summary"]
        assert findings["redis_no_aof:broker+results+state"]["severity"] == "warning"
        kinds = {e["kind"]: e for e in security_events(r)}
        assert kinds["redis_evicting"]["policy"] == "allkeys-lru"
        assert kinds["redis_evicting"]["maxmemory"] == 20 << 20


def test_an_evicting_policy_set_while_running_is_a_critical_finding(
    start_control, redis_client, redis_url
):
    """A Redis made evicting after the roles started (CONFIG SET): the security loop says so,
    as a critical finding (the SecurityThreat alert's) and one `security.threat` event."""
    start_control()
    app = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    redis_client.config_set("maxmemory-policy", "volatile-lru")
    try:
        app.send_task("orchestrator.monitor.security", queue=MONITORING_QUEUE)
        wait_for(lambda: redis_client.get(SECURITY_CHECKED), timeout=60, message="no run")
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
        app.close()
    (event,) = [e for e in security_events(redis_client) if e["kind"] == "redis_evicting"]
    assert event["severity"] == "critical" and event["policy"] == "volatile-lru"
    assert "ORCH_ALLOW_EVICTING_REDIS=true" in event["summary"]


def test_a_user_without_config_gets_a_note_not_a_refusal(
    celery_procs, orch_env, redis_server, redis_url
):
    with redis_server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "w", "reset", "on", ">pw", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "w", "-config")
    try:
        env = {**orch_env, "ORCH_REDIS_URL": redis_server.url_as("w", "pw")}
        control = celery_procs(control_args(), env, name="control")
        log = control.wait_for_log("ready.", timeout=60)
        (note,) = [line for line in log.splitlines() if "could not read the configuration" in line]
        assert "INFO" in note and "NOPERM" in note and "noeviction" in note
    finally:
        with redis_server.client() as admin:
            admin.execute_command("ACL", "DELUSER", "w")
