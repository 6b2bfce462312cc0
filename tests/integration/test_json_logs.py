"""ORCH_LOG_FORMAT=json: every line each role writes is a JSON object, Celery's own included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import agent_args
from tests.support import CLI, free_port, hermetic_environ, kill_supervisor, terminate_all, wait_for

pytestmark = pytest.mark.integration

FIELDS = {"ts", "level", "logger", "message"}


def json_lines(text: str, who: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object with the four fields; fails naming the first
    line that is not one (a banner, a print, a plain warning)."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except ValueError:
            raise AssertionError(f"{who}, line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed, dict), f"{who}, line {number}: {line!r}"
        assert parsed.keys() >= FIELDS, f"{who}, line {number} lacks {FIELDS - parsed.keys()}"
        assert datetime.fromisoformat(parsed["ts"]).utcoffset() == timedelta(0)  # UTC
        records.append(parsed)
    assert records, f"{who} wrote nothing"
    return records


def find(records: list[dict[str, Any]], logger: str, words: str) -> dict[str, Any]:
    found = [r for r in records if r["logger"] == logger and words in r["message"]]
    assert found, f"no line of {logger} saying {words!r}"
    return found[0]


def test_worker_agent_beat_and_exporter_write_only_json_lines(
    start_agent, start_control, celery_procs, orch_env, client
):
    env = {**orch_env, "ORCH_LOG_FORMAT": "json"}
    agent = start_agent("json-agent", "say", ORCH_LOG_FORMAT="json")
    control = start_control(ORCH_LOG_FORMAT="json")
    beat = celery_procs(["beat", "-l", "info"], env, name="beat")
    port = free_port()
    exporter = celery_procs(
        ["exporter", "--port", str(port), "--address", "127.0.0.1"],
        env,
        name="exporter",
        argv=CLI,
    )
    sent = client.submit("say", {"words": "hello json"})
    assert sent.get(timeout=30) == {"words": "hello json"}
    # beat's schedule reaches the control worker (the recovery monitor runs every 2 s)
    control.wait_for_log("Task orchestrator.recovery.monitor", timeout=30)
    exporter.wait_for_log("exporter serving", timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
    agent.wait_for_log("handler caught hello json", timeout=10)
    procs = [agent, control, beat, exporter]
    terminate_all(procs)  # warm shutdown: its own lines must be JSON too
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    logs = {p.name: json_lines(p.log_text(), p.name) for p in procs}

    said = find(logs["json-agent"], "tests.handlers", "handler says hello json")
    assert (said["level"], said["task_id"], said["agent_id"]) == ("INFO", sent.id, "json-agent")
    caught = find(logs["json-agent"], "tests.handlers", "handler caught hello json")
    assert caught["task_id"] == sent.id and caught["level"] == "ERROR"
    assert caught["exc_info"].endswith("ValueError: hello json")
    # Celery's own lines: the banner, received/succeeded (with the task's id), ready, shutdown
    for name in ("json-agent", "control"):
        assert find(logs[name], "celery.apps.worker", "starting")["queues"]
        find(logs[name], "celery.apps.worker", "ready.")
        find(logs[name], "celery.apps.worker", "Warm shutdown")
    received = find(logs["json-agent"], "celery.worker.strategy", "received")
    assert (received["task_id"], received["agent_id"]) == (sent.id, "json-agent")
    assert find(logs["json-agent"], "celery.app.trace", "succeeded")["task_id"] == sent.id
    assert "agent_id" not in find(logs["control"], "celery.apps.worker", "ready.")
    assert find(logs["beat"], "celery.apps.beat", "starting")["scheduler"]
    find(logs["beat"], "celery.beat", "Sending due task")
    find(logs["exporter"], "orchestrator.cli.exporter", "exporter serving")
    find(logs["exporter"], "orchestrator.cli.exporter", "exporter stopped")


def test_an_unknown_log_format_stops_a_worker_naming_the_variable(celery_procs, orch_env):
    worker = celery_procs(["worker", "-l", "info"], {**orch_env, "ORCH_LOG_FORMAT": "yaml"})
    assert worker.wait(timeout=60) == 2
    assert "ORCH_LOG_FORMAT" in worker.log_text()


def test_an_agent_that_refuses_to_start_says_why_in_a_json_line(celery_procs, orch_env):
    agent = celery_procs(
        agent_args("json-refused"),
        {
            **orch_env,
            "ORCH_LOG_FORMAT": "json",
            "ORCH_AGENT_CAPABILITIES": "unhandled",
            "ORCH_HANDLERS": "tests.handlers",
        },
    )
    assert agent.wait(timeout=60) == 2
    records = json_lines(agent.log_text(), "json-refused")
    refused = find(records, "orchestrator", "agent refused to start")
    assert refused["level"] == "CRITICAL" and "unhandled" in refused["message"]


def test_dev_in_json_mode_says_everything_as_json_lines(tmp_path: Path):
    redis_port, exporter_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = hermetic_environ(
        {"ORCH_REDIS_URL": url, "ORCH_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    )
    run_dir, log_path = tmp_path / "run", tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [
                *[sys.executable, "-m", "orchestrator.cli", "dev", "--agents", "1"],
                *["--no-flower", "--exporter-port", str(exporter_port), "--run-dir", str(run_dir)],
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        wait_for(
            lambda: client.hexists("orch:agents", "agent-1"),
            timeout=90,
            ignore=(redis.RedisError,),
            message="the demo agent never registered",
        )
        wait_for(lambda: "Ctrl-C stops everything" in log_path.read_text(), timeout=30)
        os.killpg(dev.pid, signal.SIGINT)
        assert dev.wait(timeout=60) == 0
    finally:
        client.close()
        kill_supervisor(dev)
    said = json_lines(log_path.read_text(), "dev")
    assert "nothing answers at" in said[0]["message"] and said[0]["redis_url"] == url
    roles = {r["role"]: r for r in said if "role" in r}
    assert set(roles) == {"redis", "control", "agent-1", "beat", "exporter"}
    assert roles["exporter"]["address"] == f"http://127.0.0.1:{exporter_port}/metrics"
    assert roles["redis"]["address"] == url and roles["agent-1"]["capabilities"]
    assert said[-1]["message"] == "stopped"
    # the children inherit ORCH_LOG_FORMAT: their logs are JSON lines too
    for role in ("control", "agent-1", "beat", "exporter"):
        json_lines((run_dir / "logs" / f"{role}.log").read_text(), role)
