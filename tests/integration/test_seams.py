"""Seams where work used to be lost or doubled, with real workers and a real Redis.

A countdown longer than the visibility timeout, and an agent queue emptied behind the
orchestrator's back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from orchestrator.config import load_settings
from orchestrator.runtime.celeryconf import create_app
from orchestrator.store.keys import history_key, task_key
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def sender(redis_url: str) -> Any:
    return create_app(load_settings(redis_url=redis_url), with_tasks=False)


def test_a_countdown_three_times_the_visibility_timeout_runs_once(
    start_control, start_agent, redis_url, redis_client, sender, tmp_path: Path
):
    """kombu would hand the held ETA message out again every visibility timeout, and each
    copy would fire at the ETA; the gate takes the ETA off the message and the task waits
    in Redis (`queued`, due), released by the dispatch sweep, so it runs once."""
    short = {"ORCH_VISIBILITY_TIMEOUT_S": "10", "ORCH_RETRY_MAX_DELAY_S": "5"}
    start_control(name="control0", wait=False, **short)
    start_control(name="control1", **short)
    start_agent("a", "record_run", **short)
    runs = tmp_path / "runs.txt"
    plain = Celery(broker=redis_url, backend=redis_url)
    try:
        sent = plain.send_task(
            "orchestrator.submit",
            kwargs={"type": "record_run", "payload": {"path": str(runs), "key": "eta-1"}},
            countdown=30,
        )
        wait_for(lambda: redis_client.hget(task_key(sent.id), "state") == "queued", timeout=20)
        assert float(redis_client.hget(task_key(sent.id), "due")) > redis_client.time()[0] + 20

        def ran() -> bool:
            sender.send_task("orchestrator.route_parked")  # beat's dispatch sweep, by hand
            return redis_client.hget(task_key(sent.id), "state") == "succeeded"

        wait_for(ran, timeout=90, interval=1.0)
        assert plain.AsyncResult(sent.id).get(timeout=30) == {"key": "eta-1"}
    finally:
        plain.close()
    assert runs.read_text().splitlines() == ["eta-1"]


def test_an_agent_queue_purged_by_hand_is_dispatched_again(
    start_control, start_agent, client, redis_client, sender, orch_env
):
    """`celery purge -Q agent.<id>` empties a queue the ledger still counts on: a task
    `routed` there whose message is in neither the queue nor the unacknowledged deliveries
    for ORCH_AGENT_TIMEOUT_S is dispatched again, once."""
    start_control()
    start_agent("alpha", "sleep,hold")
    # The first task holds the agent's one process until the queue was purged (a sleep of a
    # few seconds raced the purge's start-up on a loaded machine: the second was fetched).
    first = client.submit("hold", {"key": "purge", "max_s": 60})
    wait_for(lambda: redis_client.hget(task_key(first.id), "state") == "running", timeout=30)
    second = client.submit("sleep", {"seconds": 0.1})
    assert redis_client.hget(task_key(second.id), "state") == "routed"
    purge = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "orchestrator.app",
            "purge",
            "-f",
            "-Q",
            "agent.alpha",
        ],
        env=orch_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purge.returncode == 0, purge.stderr
    redis_client.set("test:release:purge", "1")

    def done() -> bool:
        sender.send_task("orchestrator.recovery.monitor")
        return redis_client.hget(task_key(second.id), "state") == "succeeded"

    wait_for(done, timeout=60, interval=1.0)
    assert second.get(timeout=10) == {"slept": 0.1}
    history = [json.loads(h) for h in redis_client.lrange(history_key(second.id), 0, -1)]
    assert [h.get("reason") for h in history].count("message lost") == 1
    assert [h["state"] for h in history].count("running") == 1
