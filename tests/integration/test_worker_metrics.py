"""Each worker's own metrics (prefork-correct) and the exporter, as Prometheus reads."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboards import (
    dashboard_exprs,
    histogram_families,
    metric_names,
    rule_exprs,
    scaledobject_queries,
    served_names,
)
from tests.support import CLI, free_port, wait_for

pytestmark = pytest.mark.integration

CAPS = "echo,broken,flaky,sleep,hold"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def promtool_check(text: str) -> None:
    """`promtool check metrics` must be silent; skipped (with the reason) without promtool."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; make sysdeps)")
    out = subprocess.run(
        [binary, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout + out.stderr
    )


@contextmanager
def running_exporter(env: dict[str, str], log: Path) -> Iterator[int]:
    """`orchestrator exporter` on a free port (its port), stopped with Ctrl-C after."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "exporter", "--port", str(port), "--address", "127.0.0.1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: scrape(port), timeout=30, ignore=(OSError,), message="no exporter")
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def exporter(orch_env, tmp_path: Path) -> Iterator[int]:
    env = {**orch_env, "ORCH_SCALE_TARGET_BACKLOG": "5"}
    with running_exporter(env, tmp_path / "exporter.log") as port:
        yield port


def metrics_agent(start_agent, agent_id: str, concurrency: int = 2) -> int:
    port = free_port()
    start_agent(
        agent_id,
        CAPS,
        concurrency=concurrency,
        ORCH_METRICS_PORT=str(port),
        ORCH_METRICS_ADDRESS="127.0.0.1",
    )
    wait_for(lambda: scrape(port), timeout=30, ignore=(OSError,), message="no worker metrics")
    return port


def test_an_agent_with_two_pool_children_serves_every_run_once_in_one_scrape(
    start_control, start_agent, client
):
    start_control()
    port = metrics_agent(start_agent, "m1", concurrency=2)
    # Two one-second runs at once occupy both pool children, so both count.
    both = [client.submit("sleep", {"seconds": 1}) for _ in range(2)]
    n = 40
    results = [client.submit("echo", {"i": i}) for i in range(n)]
    assert [r.get(timeout=60) for r in results] == [{"i": i} for i in range(n)]
    assert [r.get(timeout=60) for r in both] == [{"slept": 1}, {"slept": 1}]
    with pytest.raises(Exception, match="broken on purpose"):
        client.submit("broken", {}).get(timeout=60)
    flaky = client.submit("flaky", {"key": "k", "fail_times": 1})  # fails once, then runs again
    assert flaky.get(timeout=60) is not None
    # A type no handler here runs (routed by an explicit capability) counts as `unknown`.
    with pytest.raises(Exception, match="no handler"):
        client.submit("made-up", {}, required_capabilities=["echo"]).get(timeout=60)

    # A run is counted by Celery's postrun signal, just after its result is stored: the last
    # run's count may trail its `.get()` by a moment.
    wait_for(
        lambda: value(scrape(port), "orchestrator_worker_tasks_failed_total", type="unknown"),
        timeout=10,
        message="the last run was never counted",
    )
    text = scrape(port)  # one scrape of the parent: every child's counts are in it
    assert value(text, "orchestrator_worker_tasks_executed_total", type="echo") == n
    assert value(text, "orchestrator_worker_task_run_seconds_count", type="echo") == n
    assert value(text, "orchestrator_worker_task_delegation_seconds_count", type="echo") == n
    assert value(text, "orchestrator_worker_tasks_executed_total", type="sleep") == 2
    assert value(text, "orchestrator_worker_tasks_failed_total", type="echo") == 0
    assert value(text, "orchestrator_worker_tasks_executed_total", type="broken") == 1
    assert value(text, "orchestrator_worker_tasks_failed_total", type="broken") == 1
    assert value(text, "orchestrator_worker_tasks_retried_total", type="broken") == 0
    assert value(text, "orchestrator_worker_tasks_executed_total", type="flaky") == 2
    assert value(text, "orchestrator_worker_tasks_failed_total", type="flaky") == 1
    assert value(text, "orchestrator_worker_tasks_retried_total", type="flaky") == 1
    assert value(text, "orchestrator_worker_tasks_failed_total", type="unknown") == 1
    assert not any("made-up" in line for line in text.splitlines())
    assert value(text, "orchestrator_worker_tasks_in_flight") == 0
    assert value(text, "orchestrator_worker_info", agent="m1", role="agent") == 1
    folder = next(Path(tempfile.gettempdir(), "hive-orchestrator-metrics").glob("m1_*"))
    parent = folder.name.rsplit("-", 1)[1]
    children = {f.stem.split("_")[1] for f in folder.glob("counter_*.db")} - {parent}
    assert len(children) == 2, children  # both pool children counted runs
    promtool_check(text)


def test_in_flight_forgets_a_pool_child_killed_mid_task(
    start_control, start_agent, client, redis_client: redis.Redis
):
    start_control()
    port = metrics_agent(start_agent, "m2", concurrency=2)
    held = client.submit("hold", {"key": "k2", "max_s": 60}, task_id="held-1")
    wait_for(
        lambda: value(scrape(port), "orchestrator_worker_tasks_in_flight") == 1,
        timeout=30,
        message="the held task never showed in flight",
    )
    # The gauge counts from Celery's prerun signal; the child's pid reaches the ledger a moment
    # later, when the run takes its attempt.
    pid = wait_for(
        lambda: int(redis_client.hget("orch:task:held-1", "pid") or 0),
        timeout=30,
        message="the held task's attempt never recorded its pid",
    )
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would: no shutdown signal runs
    redis_client.set("test:release:k2", "1")
    assert held.get(timeout=60) is not None  # delivered again and run by a live child
    wait_for(
        lambda: value(scrape(port), "orchestrator_worker_tasks_in_flight") == 0,
        timeout=15,
        message="a killed child's in-flight count stayed",
    )


def test_every_name_the_dashboard_rules_and_keda_read_is_served(
    start_control, start_agent, client, exporter, redis_client: redis.Redis
):
    control_port = free_port()
    start_control(ORCH_METRICS_PORT=str(control_port), ORCH_METRICS_ADDRESS="127.0.0.1")
    agent_port = metrics_agent(start_agent, "m3", concurrency=1)
    assert client.submit("echo", {"x": 1}).get(timeout=60) == {"x": 1}
    # A backlog across priorities behind a busy agent, and parked tasks no agent can take.
    held = client.submit("hold", {"key": "k3", "max_s": 60})
    # Busy first: the agent's one process would otherwise take a priority-9 echo before it.
    wait_for(lambda: redis_client.hget(f"orch:task:{held.id}", "state") == "running", timeout=30)
    waiting = [client.submit("echo", {"i": i}, priority=i % 10) for i in range(12)]
    parked = [client.submit("rare", {"i": i}) for i in range(3)]

    def scaled() -> bool:
        text = scrape(exporter)
        return (
            value(text, "orchestrator_capability_backlog", capability="echo") == 13
            and value(text, "orchestrator_desired_agents", capability="echo") == 3
        )

    try:
        wait_for(scaled, timeout=30)
    except AssertionError:
        shown = [line for line in scrape(exporter).splitlines() if "capability=" in line]
        raise AssertionError(
            "backlog or desired agents not as expected:\n" + "\n".join(shown)
        ) from None
    text = scrape(exporter)
    assert value(text, "orchestrator_capability_agents", capability="echo") == 1
    assert value(text, "orchestrator_capability_backlog", capability="rare") == 3
    assert value(text, "orchestrator_desired_agents", capability="rare") == 1
    assert value(text, "orchestrator_capability_agents", capability="rare") == 0
    promtool_check(text)

    exposed = text + scrape(agent_port) + scrape(control_port)
    served, histograms = served_names(exposed), histogram_families(exposed)
    for expr in [*dashboard_exprs(), *rule_exprs(), *scaledobject_queries()]:
        missing = metric_names(expr, histograms) - served
        assert not missing, f"{expr!r} reads {sorted(missing)}, which nothing serves"
    promtool_check(scrape(control_port))

    redis_client.set("test:release:k3", "1")
    assert held.get(timeout=60) is not None
    assert len([w.get(timeout=60) for w in waiting]) == 12
    assert all(p.state == "PENDING" for p in parked)
