"""`orchestrator dev` (what `make run` starts): the whole stack, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
import redis

from tests.support import child_pids, free_port, hermetic_environ, kill_supervisor, wait_for

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    """Exited (or a zombie waiting to be reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_dev_starts_embedded_redis_and_every_role_and_stops_them_all_on_ctrl_c(tmp_path):
    redis_port, flower_port, exporter_port = free_port(), free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = hermetic_environ(
        {
            "ORCH_REDIS_URL": url,
            "PYTHONUNBUFFERED": "1",
            "ORCH_AGENT_HEARTBEAT_INTERVAL_S": "1",
            "ORCH_AGENT_TIMEOUT_S": "4",
        }
    )
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "dev",
                "--flower-port",
                str(flower_port),
                "--exporter-port",
                str(exporter_port),
                "--run-dir",
                str(tmp_path / "run"),
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
            lambda: client.hlen("orch:agents") == 3,
            timeout=90,
            ignore=(redis.RedisError,),
            message="the three demo agents never registered",
        )
        children = child_pids(dev.pid)
        assert len(children) >= 7  # redis, control, three agents, beat, flower, exporter
        banner = log_path.read_text()
        assert "nothing answers at" in banner and f"http://127.0.0.1:{flower_port}" in banner
        metrics_url = f"http://127.0.0.1:{exporter_port}/metrics"
        assert metrics_url in banner

        def scrape() -> str:
            with urllib.request.urlopen(metrics_url, timeout=5) as reply:
                return reply.read().decode()

        text = wait_for(scrape, timeout=30, ignore=(OSError,), message="no exporter")
        assert "orchestrator_up 1.0" in text
        assert 'orchestrator_agents{status="active"} 3.0' in text

        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "submit",
                "echo",
                "--payload",
                '{"hello": "dev"}',
                "--wait",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == {"hello": "dev"}
        caps = {
            a: json.loads(r)["capabilities"]["echo"]
            for a, r in client.hgetall("orch:agents").items()
        }
        assert len(set(caps.values())) == 3, caps  # three different proficiencies

        with urllib.request.urlopen(
            f"http://127.0.0.1:{flower_port}/healthcheck", timeout=10
        ) as reply:
            assert reply.status == 200

        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the foreground group
        assert dev.wait(timeout=60) == 0
        for pid in children:
            wait_for(lambda pid=pid: _gone(pid), timeout=30, message=f"child {pid} survived Ctrl-C")
    finally:
        client.close()
        kill_supervisor(dev)
