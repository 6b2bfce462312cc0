"""docker-compose.yml's app services, run here as local processes with their exact commands.

There is no Docker engine on CI, so the compose file is proven the other way round: every
app service's `command` and `environment` from the file start a real process here (only the
Redis address and the published ports are swapped for free local ones), and the stack
serves a task end to end, Flower answers with authentication, and the exporter serves
metrics.
"""

from __future__ import annotations

import base64
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port, hermetic_environ, wait_for

pytestmark = pytest.mark.integration

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
APP_SERVICES = ("control", "worker", "beat", "flower", "exporter")


def _service_env(service: dict[str, Any], redis_url: str) -> dict[str, str]:
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    env["ORCH_REDIS_URL"] = redis_url
    env.pop("ORCH_ALERTMANAGER_URL", None)  # no Alertmanager in this test
    env.pop("ORCH_BACKUP_DIR", None)
    return env


def _local(command: list[str], port_map: dict[str, str]) -> tuple[str, list[str]]:
    """('celery' | 'orchestrator', args) with published ports swapped for free ones."""
    args = [port_map.get(a, a) for a in command[1:]]
    return command[0], args


def test_compose_app_services_run_as_local_processes_and_serve_a_task(
    celery_procs, redis_url, client, tmp_path
):
    spec = yaml.safe_load(COMPOSE.read_text())
    flower_port, exporter_port = free_port(), free_port()
    port_map = {"--port=5555": f"--port={flower_port}", "--address=0.0.0.0": "--address=127.0.0.1"}
    started = {}
    for name in APP_SERVICES:
        service = spec["services"][name]
        program, args = _local(service["command"], port_map)
        env = hermetic_environ(_service_env(service, redis_url))
        env["FLOWER_BASIC_AUTH"] = "ops:secret"
        if "ORCH_FLOWER_URL" in env:  # compose names the flower service; here it is local
            env["ORCH_FLOWER_URL"] = f"http://127.0.0.1:{flower_port}"
        if "ORCH_METRICS_PORT" in env:  # every worker on 9809 in compose; one host here
            env.update(ORCH_METRICS_PORT=str(free_port()), ORCH_METRICS_ADDRESS="127.0.0.1")
        if name == "exporter":
            env.update(ORCH_EXPORTER_PORT=str(exporter_port), ORCH_EXPORTER_ADDRESS="127.0.0.1")
        if program == "celery":
            assert args[:2] == ["-A", "orchestrator.app"], args
            started[name] = celery_procs(args[2:], env, name=name)
        else:
            assert program == "orchestrator"
            started[name] = celery_procs(
                args, env, name=name, argv=[sys.executable, "-m", "orchestrator.cli"]
            )
    wait_for(lambda: len(client.agents()) == 1, timeout=60, message="the worker never registered")
    assert client.submit("echo", {"compose": True}).get(timeout=60) == {"compose": True}

    auth = "Basic " + base64.b64encode(b"ops:secret").decode()

    def flower_ok() -> bool:
        req = urllib.request.Request(
            f"http://127.0.0.1:{flower_port}/api/workers", headers={"Authorization": auth}
        )
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status == 200

    wait_for(flower_ok, timeout=60, ignore=(OSError,), message="Flower never answered")

    def metrics() -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{exporter_port}/metrics", timeout=5
        ) as reply:
            return reply.read().decode()

    text = wait_for(metrics, timeout=60, ignore=(OSError,), message="no exporter")
    assert "orchestrator_up 1.0" in text
    assert all(proc.alive for proc in started.values())
