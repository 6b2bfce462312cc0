"""Redis Sentinel failover under load: SIGKILL the primary, every accepted task still runs once.

One primary, one replica and three sentinels on loopback ports (tests/sentinel.py); a control
worker, an agent and beat reach them through a sentinel-form ORCH_REDIS_URL. Tasks are
submitted throughout, half routed by the client and half by name through the control worker;
the primary is killed in the middle. Every task whose submission returned ends succeeded, and
its handler ran once (counted in a file: the counters in Redis are what a failover may lose).
Submissions made while no primary answers fail with a clear error and are tried again with
the same task id, as a service would.
"""

from __future__ import annotations

import gc
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.errors import OrchestratorError
from orchestrator.store.connect import redis_client
from tests.chaos.cluster import Cluster, chaos_env
from tests.sentinel import SentinelGroup
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

BEFORE, AFTER = 60, 60  # submissions before the kill, and after the failover
#: What a submission may raise while no primary answers (StoreUnavailable is an
#: OrchestratorError; the by-name path's publish raises kombu's OperationalError).
UNREACHABLE = (OrchestratorError, OperationalError, OSError)


@pytest.fixture
def group() -> SentinelGroup:
    with SentinelGroup(replicas=1, sentinels=3, down_after_ms=1000) as g:
        yield g


def test_killing_the_primary_loses_no_accepted_task_and_runs_none_twice(
    group, celery_procs, tmp_path: Path
):
    marks = tmp_path / "marks"
    marks.touch()
    state = redis_client(group.url, decode_responses=True, socket_timeout=2)
    env = chaos_env(group.url, ORCH_SUBMIT_WAIT_REPLICAS="1")
    cluster = Cluster(lambda args, e, name: celery_procs(args, e, name=name), env, state)
    cluster.control("control", concurrency=2)
    cluster.agent("m1", "mark", concurrency=2)
    beat = cluster.beat(tmp_path)
    beat.wait_for_log("beat: Starting", timeout=60)
    wait_for(lambda: state.exists("redbeat::lock"), timeout=30, message="beat holds no lock")
    settings = load_settings(redis_url=group.url, submit_wait_replicas=1)
    local = OrchestratorClient(settings=settings, route_locally=True)
    by_name = OrchestratorClient(settings=settings, route_locally=False)
    try:
        run_under_failover(group, cluster, state, local, by_name, marks)
    finally:
        # Results dropped by the submissions unsubscribe when collected: now, while a master
        # answers, not in a later test after this group is gone.
        gc.collect()
        local.close()
        by_name.close()
        state.close()


def run_under_failover(group, cluster, state, local, by_name, marks: Path) -> None:

    accepted: list[str] = []
    failures: list[str] = []
    unexpected: list[str] = []
    stop = threading.Event()

    def submit(n: int) -> None:
        task_id = f"sf-{n:04d}"
        client = local if n % 2 else by_name
        while not stop.is_set():
            try:
                client.submit("mark", {"key": task_id, "file": str(marks)}, task_id=task_id)
                accepted.append(task_id)
                return
            except UNREACHABLE as exc:  # no primary: try again, same id
                failures.append(f"{task_id}: {type(exc).__name__}: {exc}")
                time.sleep(0.05)
            except Exception:
                unexpected.append(traceback.format_exc())
                return

    for n in range(BEFORE):
        submit(n)
    old_primary = group.primary.port
    load = threading.Thread(target=lambda: [submit(n) for n in range(BEFORE, BEFORE + 40)])
    load.start()
    time.sleep(0.1)
    group.primary.kill()
    failover_s = group.wait_failover(old_primary)
    load.join(60)
    for n in range(BEFORE + 40, BEFORE + 40 + AFTER):
        submit(n)
    stop.set()
    assert unexpected == [], "\n".join(unexpected)
    assert len(accepted) == BEFORE + 40 + AFTER

    def unfinished() -> list[str]:
        return [t for t in accepted if state.hget(f"orch:task:{t}", "state") != "succeeded"]

    try:
        wait_for(lambda: not unfinished(), timeout=90, interval=0.5)
    except AssertionError:
        states = {t: state.hgetall(f"orch:task:{t}") for t in unfinished()}
        seen = {t: cluster.logs_mentioning(t) for t in states}
        outbox = state.zrange("orch:outbox", 0, -1, withscores=True)
        raise AssertionError(
            f"{len(states)} tasks not finished: {states}; outbox {outbox}; logs {seen}; "
            f"ran {marks.read_text().split().count(next(iter(states)))}"
        ) from None
    runs = Counter(marks.read_text().split())
    assert sorted(runs) == sorted(accepted), "every accepted task ran"
    assert [t for t, n in runs.items() if n > 1] == [], "none ran twice"
    print(
        f"failover {failover_s:.2f} s; {len(failures)} submissions refused while no primary "
        f"answered (retried with the same id); {len(accepted)} tasks, each run once"
    )
    for proc in [*cluster.controls.values(), *cluster.agents.values()]:
        assert proc.alive, f"{proc.name} exited"
