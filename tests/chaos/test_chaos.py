"""The chaos suite: real workers, real faults, and a history checker that judges.

Each scenario starts real `celery worker` / `celery beat` processes on a flushed Redis, runs
`chaos` tasks (count their start, sleep, count their completion; the task id is the counter
key), injects one fault, and hands every submitted id to tests/chaos/checker.py, which waits
until each is terminal (or a deadline) and then cross-checks the ledger, the events, the DLQ,
the result backend and the counters. Every scenario prints the checker's counts line, so CI
logs show lost / duplicated / re-executed even when the test passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from celery.exceptions import TimeoutError as CeleryTimeout

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.store.keys import DLQ, task_key
from tests.chaos.checker import (
    broker_holdings,
    check,
    counter_total,
    ledger_states,
    read_events,
)
from tests.chaos.cluster import Cluster, chaos_env, submit_chaos
from tests.chaos.verdict import ChaosReport
from tests.support import RedisServer, terminate_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

#: Far below kombu's 1-hour visibility timeout: recovery must not wait for it.
RECOVERY_BUDGET_S = 45.0


def report_of(report: ChaosReport) -> ChaosReport:
    """Print the counts line (CI logs show it even for a pass) and return the report."""
    print(report.summary())
    return report


def running_on(r: redis.Redis, ids: list[str], agent: str) -> int:
    return sum(1 for s, a in ledger_states(r, ids).values() if s == "running" and a == agent)


def running_task_on(r: redis.Redis, ids: list[str], agent: str) -> str | None:
    """One id whose handler is running on `agent` right now (the ledger says running there,
    its handler has recorded its pid and not yet its completion), if any."""
    for task_id, (state, where) in ledger_states(r, ids).items():
        started = r.exists(f"test:pid:{task_id}") and not r.exists(f"test:done:{task_id}")
        if (state, where) == ("running", agent) and started:
            return task_id
    return None


def test_sigkill_one_of_three_agents_mid_run(
    cluster: Cluster, chaos_client, redis_client, tmp_path
):
    """A host dies with its agent's queue full and a task running: the monitor notices the
    missing heartbeats, marks the agent offline and moves its queued and in-flight tasks to
    the other two, long before kombu's visibility timeout would have restored them."""
    cluster.control(wait=False)
    cluster.beat(tmp_path)
    for agent_id in "abc":
        cluster.agent(agent_id, "chaos", concurrency=2, wait=False)
    cluster.wait_controls_ready()
    cluster.wait_ready("abc")

    ids = submit_chaos(chaos_client, "kill-agent", 120, seconds=0.1)
    wait_for(
        lambda: (
            counter_total(redis_client, "test:done:", ids) >= 20
            and running_on(redis_client, ids, "b") >= 1
        ),
        timeout=30,
        interval=0.02,
        message="agent b never ran a task while others finished",
    )
    before = Counter(ledger_states(redis_client, ids).values())
    cluster.agents["b"].kill()
    killed_at = time.monotonic()
    print(f"killed agent b; ledger (state, agent) at the kill: {dict(before)}")

    report = report_of(
        check(redis_client, ids, timeout=RECOVERY_BUDGET_S, name="chaos[agent-sigkill]")
    )
    report.assert_nothing_lost()
    assert report.counts()["succeeded"] == len(ids)
    assert time.monotonic() - killed_at < 60, "recovery took longer than a minute"
    lost_events = [d for _, _, d in read_events(redis_client, ["agent.lost"])]
    assert any(d.get("agent_id") == "b" for d in lost_events), lost_events
    statuses = {a.agent_id: a.status.value for a in chaos_client.agents()}
    assert statuses.get("b") == "offline", statuses


def test_sigkill_a_pool_child_and_a_poison_task_is_dead_lettered(
    cluster: Cluster, chaos_client, redis_client, tmp_path
):
    """The OOM killer takes one pool child: its task is redelivered and runs again. A task that
    kills its child on every delivery is stopped by the redelivery cap and dead-lettered, and
    the other tasks finish meanwhile."""
    cluster.control(wait=False)
    cluster.beat(tmp_path)
    for agent_id in "ab":
        cluster.agent(agent_id, "chaos,suicide", concurrency=2, wait=False)
    cluster.wait_controls_ready()
    cluster.wait_ready("ab")

    poison = "oom-poison"
    poisoned = chaos_client.submit("suicide", {"key": poison}, task_id=poison)
    ids = submit_chaos(chaos_client, "oom", 100, seconds=0.25)
    victim = wait_for(
        lambda: (
            counter_total(redis_client, "test:done:", ids) >= 10
            and running_task_on(redis_client, ids, "a")
        ),
        timeout=30,
        interval=0.02,
        message="agent a never ran a chaos task",
    )
    pid = int(redis_client.get(f"test:pid:{victim}") or 0)
    children = cluster.agents["a"].child_pids()
    assert pid in children, f"{victim}'s pid {pid} is not a pool child of a {children}"
    os.kill(pid, signal.SIGKILL)
    print(f"SIGKILLed pool child {pid} of agent a while it ran {victim}")

    report = report_of(
        check(redis_client, [*ids, poison], timeout=RECOVERY_BUDGET_S, name="chaos[child-sigkill]")
    )
    report.assert_nothing_lost()
    assert report.verdicts[poison].fate.value == "dead_lettered", report.details([poison])
    assert [i for i in ids if report.verdicts[i].fate.value != "succeeded"] == []
    assert report.verdicts[victim].observation.starts >= 2, report.details([victim])
    assert redis_client.zscore(DLQ, poison) is not None
    with pytest.raises(Exception) as final:  # whatever the final failure is, it must raise
        poisoned.get(timeout=5)
    assert not isinstance(final.value, CeleryTimeout), "no final result was stored"
    listed = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "dlq", "list", "--json"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert [row["task_id"] for row in json.loads(listed.stdout)] == [poison]
    deliveries = int(redis_client.get(f"test:start:{poison}") or 0)
    assert 2 <= deliveries <= 20, f"poison message delivered {deliveries} times"
    assert cluster.agents["a"].alive and cluster.agents["b"].alive


def test_sigkill_the_control_worker_mid_run(cluster: Cluster, chaos_client, redis_client, tmp_path):
    """One of two control workers dies while a burst of submissions is being routed: the
    submissions it had taken are not stranded in kombu's unacked hash for an hour."""
    control1 = cluster.control("control1", wait=False)
    cluster.control("control2", wait=False)
    cluster.beat(tmp_path)
    for agent_id in "ab":
        cluster.agent(agent_id, "chaos", concurrency=2, wait=False)
    cluster.wait_controls_ready()
    cluster.wait_ready("ab")

    # The submissions go on in a thread while the control workers route them, so the kill
    # lands mid-run however fast routing is (it kept pace with one sender: all 300 were
    # routed by the time a poll after the sending loop looked).
    ids = [f"kill-control-{n:05d}" for n in range(300)]
    sender = threading.Thread(
        target=submit_chaos, args=(chaos_client, "kill-control", len(ids)), kwargs={"seconds": 0.02}
    )
    sender.start()
    try:
        wait_for(
            lambda: redis_client.exists(task_key(ids[40])),
            timeout=30,
            interval=0.002,
            message="routing never started",
        )
        control1.kill()
        accepted = sum(1 for s, _ in ledger_states(redis_client, ids).values() if s)
    finally:
        sender.join(timeout=60)
    held = broker_holdings(redis_client)
    stranded = sorted({w for where in held.values() for w in where if w.startswith("unacked:")})
    print(f"killed control1 with {accepted}/{len(ids)} accepted; unacked now holds {stranded}")
    assert accepted < len(ids), "routing finished before the kill: the scenario proved nothing"

    report = report_of(
        check(redis_client, ids, timeout=RECOVERY_BUDGET_S, name="chaos[control-sigkill]")
    )
    report.assert_nothing_lost()
    assert report.counts()["succeeded"] == len(ids)


def test_sigterm_every_agent_under_load_then_start_new_ones(
    cluster: Cluster, chaos_client, redis_client, tmp_path
):
    """A deploy: every agent gets a warm SIGTERM with work still queued for it, and new agents
    (new ids) come up. Tasks queued for the old agents are moved to the new ones."""
    cluster.control(wait=False)
    cluster.beat(tmp_path)
    old = [cluster.agent(agent_id, "chaos", concurrency=2, wait=False) for agent_id in "ab"]
    cluster.wait_controls_ready()
    cluster.wait_ready("ab")

    ids = submit_chaos(chaos_client, "deploy", 100, seconds=0.2)
    wait_for(
        lambda: counter_total(redis_client, "test:done:", ids) >= 15,
        timeout=30,
        interval=0.02,
        message="no progress before the deploy",
    )
    terminate_all(old, timeout=20)
    states = Counter(s for s, _ in ledger_states(redis_client, ids).values())
    print(f"old agents stopped (exit codes {[p.returncode for p in old]}); ledger: {dict(states)}")
    for agent_id in ("c", "d"):
        cluster.agent(agent_id, "chaos", concurrency=2, wait=False)
    cluster.wait_ready("cd")

    report = report_of(check(redis_client, ids, timeout=RECOVERY_BUDGET_S, name="chaos[deploy]"))
    report.assert_nothing_lost()
    assert report.counts()["succeeded"] == len(ids)


# Killing Redis under live clients leaves sockets that redis-py and kombu drop without closing
# (their connection objects die mid-error); that is the fault injected, not a leak of ours.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_redis_killed_and_restarted_with_aof_everysec(
    aof_redis: RedisServer, celery_procs, tmp_path: Path
):
    """Redis itself crashes while tasks run and comes back from its AOF (fsync every second).
    Submissions that raised at the client were never accepted; a submission whose last
    second of writes the AOF lost left no trace and is counted apart ("unaccepted"); every
    task with a ledger entry after the restart must still end properly."""
    env = chaos_env(aof_redis.url)
    with (
        redis.Redis.from_url(aof_redis.url, decode_responses=True) as r,
        OrchestratorClient(settings=load_settings(redis_url=aof_redis.url)) as client,
    ):
        cluster = Cluster(lambda args, e, name: celery_procs(args, e, name=name), env, r)
        cluster.control(wait=False)
        cluster.beat(tmp_path)
        for agent_id in "ab":
            cluster.agent(agent_id, "chaos", concurrency=2, wait=False)
        cluster.wait_controls_ready()
        cluster.wait_ready("ab")

        submitted: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def submit_steadily(total: int = 150, per_s: float = 40.0) -> None:
            for n in range(total):
                if stop.is_set():
                    return
                task_id = f"aof-{n:05d}"
                try:
                    client.submit("chaos", {"key": task_id, "seconds": 0.1}, task_id=task_id)
                except Exception:  # the broker is down: this submission was never accepted
                    failed.append(task_id)
                else:
                    submitted.append(task_id)
                time.sleep(1 / per_s)

        submitter = threading.Thread(target=submit_steadily, daemon=True)
        submitter.start()
        try:
            wait_for(
                lambda: counter_total(r, "test:done:", submitted) >= 20,
                timeout=30,
                message="no progress before the crash",
            )
            aof_redis.kill()
            crashed_with = len(submitted)
            # Down long enough for clients and workers to notice (a submission fails).
            wait_for(lambda: failed, timeout=15, message="no client noticed Redis was down")
            aof_redis.restart()
            submitter.join(timeout=30)
        finally:
            stop.set()
        print(f"Redis crashed after {crashed_with} submissions; {len(failed)} failed at the client")
        procs = [*cluster.controls.values(), *cluster.agents.values()]

        ids = submitted + failed
        report = report_of(
            check(
                r,
                ids,
                timeout=RECOVERY_BUDGET_S,
                name="chaos[redis-crash]",
                submit_failed=failed,
                missing_ledger_is_lost=False,
            )
        )
        dead = {p.name: p.returncode for p in procs if not p.alive}
        print(f"workers dead after the Redis restart: {dead or 'none'}")
        for line in cluster.logs_mentioning("Unrecoverable error"):
            print(line)
        report.assert_nothing_lost()
        accepted = len(ids) - len(report.unaccepted)
        assert report.counts()["succeeded"] == accepted, report.problems_text()
        assert dead == {}, f"workers died when Redis restarted: {dead}"


def test_handler_failing_on_one_agent_opens_its_circuit_and_it_closes_when_healed(
    cluster: Cluster, chaos_client, redis_client, tmp_path
):
    """Agent b's handler crashes: its tasks are rerouted to a and c and succeed; b's circuit
    opens and routing skips it; once b is healed, trials go through half-open and the circuit
    closes."""
    recovery_s = 2.0
    breaker = {
        "ORCH_CIRCUIT_FAILURE_THRESHOLD": "3",
        "ORCH_CIRCUIT_RECOVERY_TIMEOUT_S": str(recovery_s),
        "ORCH_CIRCUIT_HALF_OPEN_MAX_CALLS": "2",
        # The breaker alone: tasks already on b when its circuit opens fail too, and ten
        # failed attempts would quarantine b for 5 minutes (that tier: test_recovery_tiers).
        "ORCH_QUARANTINE_FAILURES": "1000",
    }
    cluster.env.update(breaker)
    cluster.control(wait=False)
    cluster.beat(tmp_path)
    for agent_id in "abc":
        cluster.agent(agent_id, "sometimes_fail_on", concurrency=2, wait=False)
    cluster.wait_controls_ready()
    cluster.wait_ready("abc")

    def submit(task_id: str) -> str:
        payload = {"key": task_id, "bad_agent": "b", "seconds": 0.02}
        chaos_client.submit("sometimes_fail_on", payload, task_id=task_id)
        return task_id

    def circuit_events(kind: str) -> list[dict]:
        return [d for _, _, d in read_events(redis_client, [kind]) if _agent_of(d) == "b"]

    first = [submit(f"circuit-{n:05d}") for n in range(60)]
    opened = wait_for(
        lambda: circuit_events("circuit.opened"),
        timeout=30,
        message="agent b's circuit never opened",
    )
    opened_ts = float(opened[0]["_ts"])
    # Submitted while b's circuit is open: routing must skip b until its recovery timeout.
    during = [submit(f"circuit-open-{n:05d}") for n in range(30)]
    early = report_of(
        check(
            redis_client,
            first + during,
            timeout=RECOVERY_BUDGET_S,
            name="chaos[circuit:broken]",
        )
    )
    early.assert_nothing_lost()
    assert early.counts()["succeeded"] == len(first + during), early.problems_text()
    failed_on_b = [
        i
        for i in first + during
        if any(
            h.get("agent") == "b" and h.get("error") for h in early.verdicts[i].observation.history
        )
    ]
    assert failed_on_b, "no task failed on b: the scenario proved nothing"
    assert all(early.verdicts[i].observation.agent != "b" for i in failed_on_b)

    # While open (before its recovery timeout), routing skips b: by the events and by the
    # ledger histories of the tasks submitted meanwhile.
    window = (opened_ts + 0.3, opened_ts + recovery_s - 0.1)
    routed_to_b = [
        d
        for _, _, d in read_events(redis_client, ["task.routed"])
        if _agent_of(d) == "b" and window[0] < d["_ts"] < window[1]
    ]
    routed_to_b += [
        (i, h)
        for i in during
        for h in early.verdicts[i].observation.history
        if h.get("state") == "routed"
        and h.get("agent") == "b"
        and window[0] < float(h.get("ts", 0)) < window[1]
    ]
    assert routed_to_b == [], routed_to_b
    first_hops = Counter(
        next(
            (h.get("agent") for h in early.verdicts[i].observation.history if h.get("agent")), None
        )
        for i in during
    )
    print(f"first agent of the tasks submitted while b was open: {dict(first_hops)}")
    others = [d for _, _, d in read_events(redis_client, ["circuit.opened"]) if _agent_of(d) != "b"]
    assert others == [], f"healthy agents' circuits opened: {others}"

    redis_client.set("test:healed:b", "1")
    healed_at = time.time()
    later: list[str] = []

    def trickle_until_closed() -> list[dict]:
        later.append(submit(f"circuit-healed-{len(later):05d}"))
        return [d for d in circuit_events("circuit.closed") if d["_ts"] >= healed_at]

    try:
        wait_for(
            trickle_until_closed,
            timeout=25,
            interval=0.1,
            message="agent b's circuit never closed after it was healed",
        )
    except AssertionError as exc:  # say what b looked like
        raise AssertionError(
            f"{exc}; b: status {redis_client.hget('orch:agent_status', 'b')}, breaker "
            f"{redis_client.hgetall('orch:circuit:b')}, quarantined "
            f"{circuit_events('agent.quarantined')}"
        ) from None
    final = report_of(
        check(redis_client, later, timeout=RECOVERY_BUDGET_S, name="chaos[circuit:healed]")
    )
    final.assert_nothing_lost()
    assert final.counts()["succeeded"] == len(later), final.problems_text()
    assert any(final.verdicts[i].observation.agent == "b" for i in later), "no trial ran on b"


def _agent_of(data: dict) -> str | None:
    return data.get("agent_id") or data.get("agent")
