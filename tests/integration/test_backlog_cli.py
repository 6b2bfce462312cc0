"""Seeing and steering the backlog: `orchestrator backlog`, its metrics, `orchestrator cancel`.

The exporter's backlog and slot metrics, and a cancel of a queued, parked, keyed, routed and
running task (real Redis, real workers, the CLI as a subprocess).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from orchestrator.client import OrchestratorClient
from orchestrator.errors import Cancelled
from tests.integration.conftest import ledger
from tests.integration.test_worker_metrics import promtool_check, running_exporter, scrape, value
from tests.support import cli, cli_json, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def count(client: OrchestratorClient, key: str, client_id: str, priority: int, **fields: Any):
    return client.submit(
        "count", {"key": key}, task_id=key, client_id=client_id, priority=priority, **fields
    )


def backlog(env: dict[str, str]) -> dict[str, Any]:
    return cli_json(env, "backlog")


def by_set(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["capabilities"]: row for row in report["capability_sets"]}


def test_backlog_metrics_and_cancel_in_every_state(
    start_control, start_agent, client, redis_client, orch_env, tmp_path
):
    start_control()
    start_agent("a1", "hold,count,echo", concurrency=1)
    start_agent("a2", "echo", concurrency=1)
    # a1's two slots (concurrency 1 + prefetch 1): one running, one routed to its queue.
    blocker = client.submit("hold", {"key": "b1", "max_s": 90}, task_id="blocker")
    second = client.submit("hold", {"key": "b2", "max_s": 90}, task_id="second")
    wait_for(lambda: ledger(redis_client, "blocker").get("state") == "running", timeout=30)
    assert ledger(redis_client, "second")["state"] == "routed"

    t0 = time.time()
    waiting = {
        "w1": count(client, "w1", "alpha", 9),
        "w2": count(client, "w2", "alpha", 5),
        "w3": count(client, "w3", "beta", 5),
        "w4": count(client, "w4", "beta", 2),
        # Needs both capabilities: only a1 can take it; it counts toward each capability.
        "w5": client.submit(
            "echo",
            {"key": "w5"},
            task_id="w5",
            client_id="beta",
            priority=5,
            required_capabilities=["count", "echo"],
        ),
        "w6": count(client, "w6", "alpha", 2),
    }
    keyed = {
        key: count(client, key, "gamma", 5, concurrency_key="k1", concurrency_limit=1)
        for key in ("k-a", "k-b")
    }
    parked = client.submit("rare", {"key": "r1"}, task_id="r1", client_id="alpha")
    for key in [*waiting, *keyed]:
        assert ledger(redis_client, key)["state"] == "queued", key
    assert ledger(redis_client, "r1")["state"] == "parked"

    report = backlog(orch_env)
    sets = by_set(report)
    assert report["waiting"] == 8  # k-b waits for k1's permit, outside the rows
    assert sets["count"]["waiting"] == 6
    assert sets["count"]["by_priority"] == {"9": 1, "5": 3, "2": 2}
    assert sets["count"]["by_client"] == {"alpha": 3, "beta": 2, "gamma": 1}
    assert sets["count,echo"]["by_priority"] == {"5": 1}
    assert sets["count,echo"]["by_client"] == {"beta": 1}
    assert sets["rare"]["waiting"] == 1
    assert 0 < sets["count"]["oldest_s"] <= time.time() - t0 + 1
    assert sets["count"]["oldest_s"] >= sets["count,echo"]["oldest_s"] > 0
    assert report["concurrency_keys"] == {"k1": {"limit": 1, "holding": 1, "waiting": 1}}
    assert (report["parked"], report["deferred"]) == (1, 0)
    table = cli(orch_env, "backlog").stdout
    assert "count,echo" in table and "k1" in table and "parked: 1" in table

    with running_exporter(orch_env, tmp_path / "exporter.log") as port:
        text = scrape(port)
        expected = {
            ("count", "9"): 1,
            ("count", "5"): 4,  # w2, w3, k-a and w5 (which needs echo too)
            ("count", "2"): 2,
            ("echo", "5"): 1,
            ("rare", "5"): 1,
        }
        for (capability, priority), n in expected.items():
            got = value(
                text, "orchestrator_backlog_tasks", capability=capability, priority=priority
            )
            assert got == n, (capability, priority, got)
        assert value(text, "orchestrator_backlog_tasks", capability="hold", priority="5") == 0
        count_age = value(text, "orchestrator_backlog_oldest_seconds", capability="count")
        assert count_age >= value(text, "orchestrator_backlog_oldest_seconds", capability="echo")
        assert value(text, "orchestrator_backlog_oldest_seconds", capability="rare") > 0
        assert count_age > 0
        assert value(text, "orchestrator_agent_slots_free", agent="a1") == 0
        assert value(text, "orchestrator_agent_slots_free", agent="a2") == 2
        promtool_check(text)

    # A queued task: out of the backlog, its result fails with Cancelled, it never runs.
    done = cli_json(orch_env, "cancel", "w2")
    assert (done["cancelled"], done["state"], done["revoked"]) == (True, "queued", False)
    with pytest.raises(Cancelled) as caught:
        waiting.pop("w2").get(timeout=15)
    assert (caught.value.task_id, caught.value.state) == ("w2", "queued")
    assert ledger(redis_client, "w2")["state"] == "failed"
    assert by_set(backlog(orch_env))["count"]["by_priority"] == {"9": 1, "5": 2, "2": 2}
    # A parked task.
    assert cli_json(orch_env, "cancel", "r1")["state"] == "parked"
    with pytest.raises(Cancelled):
        parked.get(timeout=15)
    # A keyed task holding its key's permit: the permit passes to the task waiting for it.
    assert cli_json(orch_env, "cancel", "k-a")["state"] == "queued"
    with pytest.raises(Cancelled):
        keyed.pop("k-a").get(timeout=15)
    report = backlog(orch_env)
    assert "rare" not in by_set(report) and report["parked"] == 0
    assert report["concurrency_keys"] == {"k1": {"limit": 1, "holding": 1, "waiting": 0}}
    assert by_set(report)["count"]["by_client"] == {"alpha": 2, "beta": 2, "gamma": 1}

    # A routed task, its copy still in a1's queue: ended, not revoked (the ledger skips the
    # copy when it arrives, so its result stays Cancelled); its slot goes to the next task.
    done = cli_json(orch_env, "cancel", "second")
    assert (done["state"], done["revoked"]) == ("routed", False)
    wait_for(lambda: ledger(redis_client, "w1").get("state") == "routed", timeout=30)

    # A running task: its handler is terminated, its result fails with Cancelled.
    pid = int(ledger(redis_client, "blocker")["pid"])
    assert pid_alive(pid)
    done = cli_json(orch_env, "cancel", "blocker")
    assert (done["state"], done["revoked"], done["stopped"]) == ("running", True, True)
    wait_for(lambda: not pid_alive(pid), timeout=15, message="the handler was not stopped")
    with pytest.raises(Cancelled) as caught:
        blocker.get(timeout=15)
    assert caught.value.state == "running"
    assert ledger(redis_client, "blocker")["state"] == "failed"

    # Everything else runs on a1, as the freed slots take it; the cancelled never ran.
    results = {key: r.get(timeout=60) for key, r in {**waiting, **keyed}.items()}
    assert results["w5"] == {"key": "w5"}
    assert all(results[k] == {"runs": 1} for k in ("w1", "w3", "w4", "w6", "k-b"))
    assert redis_client.get("test:runs:w2") is None
    assert redis_client.get("test:runs:k-a") is None
    assert int(ledger(redis_client, "second").get("deliveries", 0)) == 0
    with pytest.raises(Cancelled):
        second.get(timeout=15)
    assert backlog(orch_env)["waiting"] == 0

    # Nothing to cancel: the state (or the missing entry) is named, exit status 1.
    again = cli(orch_env, "cancel", "blocker", check=False)
    assert again.returncode == 1 and "already ended (failed)" in again.stderr
    missing = cli(orch_env, "cancel", "no-such-task", "--json", check=False)
    assert missing.returncode == 1 and "no task 'no-such-task'" in missing.stderr
    assert '"cancelled": false' in missing.stdout
