"""`orchestrator dev` (what `make run` starts): the stack, its own Redis, a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from orchestrator.store.keys import EVENTS, METRICS_HISTORY, SLA_HISTORY
from tests.support import (
    child_pids,
    cli,
    cli_json,
    free_port,
    hermetic_environ,
    kill_supervisor,
    wait_for,
)

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


def _start_dev(
    tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """`orchestrator dev <args>` in its own session, its output in a log file."""
    log_path = tmp_path / f"dev-{len(list(tmp_path.glob('dev-*.log')))}.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "dev", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    return dev, log_path


def _exported(banner: str) -> dict[str, str]:
    """The variables of the banner's `export ...` line, for a second terminal."""
    line = next(ln for ln in banner.splitlines() if ln.lstrip().startswith("export "))
    return dict(re.findall(r"(ORCH_[A-Z_]+)=(\S+)", line))


#: The monitoring loops every two seconds, so a test sees them judge what it did.
FAST_LOOPS = {
    "ORCH_SLA_MONITORING_INTERVAL": "2",
    "ORCH_SECURITY_MONITORING_INTERVAL": "2",
    "ORCH_ALERT_EVALUATION_INTERVAL": "2",
}


def test_without_orch_redis_url_dev_runs_its_own_redis_under_the_dev_profile(tmp_path):
    """No ORCH_REDIS_URL: the stack starts its own redis-server on its own port (never
    probing 6379), and the banner says which and what to export in a second terminal. Under
    the dev profile it sets, a typo in a task name (a message refused at a worker's edge) and
    a 20 s task are no page: no critical finding, no sla.breached, no alert, health healthy."""
    redis_port, flower_port, exporter_port = free_port(), free_port(), free_port()
    env = hermetic_environ({"PYTHONUNBUFFERED": "1", **FAST_LOOPS})
    dev, log_path = _start_dev(
        tmp_path,
        env,
        f"--redis-port={redis_port}",
        f"--flower-port={flower_port}",
        f"--exporter-port={exporter_port}",
        f"--run-dir={tmp_path / 'run'}",
    )
    url = f"redis://127.0.0.1:{redis_port}/0"
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        wait_for(
            lambda: client.hlen("orch:agents") == 3,
            timeout=90,
            ignore=(redis.RedisError,),
            message="the three demo agents never registered on the stack's own Redis",
        )
        banner = log_path.read_text()
        assert url in banner and "127.0.0.1:6379" not in banner, banner
        exported = _exported(banner)
        assert exported == {"ORCH_REDIS_URL": url, "ORCH_PROFILE": "dev"}, banner
        second_terminal = {**env, **exported}
        # What the typo and the task cause, after the start-up's own events.
        ((mark, _),) = client.xrevrange(EVENTS, count=1)

        sender = Celery(broker=url, backend=url)
        try:
            typo = sender.send_task("orchestrator.submitt", kwargs={"type": "echo"})
            with pytest.raises(Exception, match=r"unknown task 'orchestrator\.submitt'"):
                typo.get(timeout=30)
        finally:
            sender.close()
        done = cli_json(
            second_terminal, "submit", "sleep", "--payload", '{"seconds": 20}', "--wait"
        )
        assert done["result"] == {"slept": 20.0}, done

        def judged() -> dict[str, Any]:
            """The first metrics snapshot taken after the SLA loop counted the task and the
            security loop found the refused message (empty until there is one)."""
            sla = [json.loads(x) for x in client.lrange(SLA_HISTORY, 0, -1)]
            seen = [p for p in sla if p["targets"]["task-latency-p95"]["value"] is not None]
            findings = cli_json(second_terminal, "security")["findings"]
            poison = [f for f in findings if f["id"] == "poison_refused"]
            if not seen or not poison:
                return {}
            after = max(seen[0]["ts"], poison[0]["since"])
            snaps = [json.loads(x) for x in client.lrange(METRICS_HISTORY, 0, -1)]
            snap = next((m for m in snaps if m["ts"] > after), None)
            return {} if snap is None else {**snap, "poison": poison[0]}

        snap = wait_for(judged, timeout=60, message="the loops never judged the task and typo")
        assert snap["poison"]["severity"] == "warning"
        assert (snap["health"], snap["security_threats"], snap["alerts_firing"]) == (
            "healthy",
            0,
            0,
        ), snap
        latency = next(r for r in cli_json(second_terminal, "sla") if r["sli"] == "latency_p95_ms")
        assert (latency["objective"], latency["compliant"]) == (60_000, True), latency
        lines = cli(second_terminal, "events", "--since", mark, "--json").stdout.splitlines()
        kinds = [(e["type"], e["severity"]) for e in map(json.loads, lines)]
        assert not [k for k in kinds if k[0] in ("sla.breached", "alert.firing")], kinds
        assert not [k for k in kinds if k[1] in ("error", "critical")], kinds
        status = cli_json(second_terminal, "status")
        assert status["health"] == "healthy", status
    finally:
        client.close()
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=60)
        finally:
            kill_supervisor(dev)


def test_fresh_starts_the_embedded_redis_empty_and_never_wipes_a_redis_it_did_not_start(
    tmp_path, redis_url
):
    """The embedded Redis keeps its data in the run directory across runs; `--fresh` wipes it
    first. A Redis named by ORCH_REDIS_URL that answers is not the stack's to wipe: refused."""
    port = free_port()
    env = hermetic_environ({"PYTHONUNBUFFERED": "1"})
    light = ("--agents=0", "--no-beat", "--no-flower", f"--exporter-port={free_port()}")
    args = (f"--redis-port={port}", f"--run-dir={tmp_path / 'run'}", *light)
    client = redis.Redis(port=port, decode_responses=True)

    def run(*extra: str, write: str | None = None) -> str | None:
        dev, log_path = _start_dev(tmp_path, env, *args, *extra)
        try:
            wait_for(client.ping, timeout=30, ignore=(redis.RedisError,), message="no Redis")
            found = client.get("left:over")
            if write:
                client.set("left:over", write)
            os.killpg(dev.pid, signal.SIGINT)
            assert dev.wait(timeout=60) == 0, log_path.read_text()
            return found
        finally:
            kill_supervisor(dev)

    try:
        assert run(write="from the first run") is None
        assert run() == "from the first run"
        assert run("--fresh") is None
    finally:
        client.close()

    theirs = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        theirs.set("theirs", "kept")
        dev, log_path = _start_dev(tmp_path, {**env, "ORCH_REDIS_URL": redis_url}, "--fresh")
        try:
            assert dev.wait(timeout=30) == 2
        finally:
            kill_supervisor(dev)
        assert "--fresh" in log_path.read_text() and theirs.get("theirs") == "kept"
    finally:
        theirs.close()


def test_dev_help_says_what_fresh_wipes_and_which_redis_it_uses():
    text = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "dev", "--help"],
        env=hermetic_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    flat = " ".join(text.split())
    assert "--fresh" in flat and "--redis-port" in flat and "6390" in flat
    assert "ORCH_REDIS_URL" in flat and "ORCH_PROFILE" in flat
