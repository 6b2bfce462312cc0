"""A task enqueued by name reaches the best capable agent; its id resolves to the result.

Every agent and router here is a real `celery worker` process on a private redis-server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import Counter

import psutil
import pytest

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.errors import InvalidTask
from orchestrator.models import OrchestrationTask
from orchestrator.runtime.celeryconf import ROUTING_QUEUE
from orchestrator.store import Acceptance, now_s
from orchestrator.store.codes import AcceptStatus
from orchestrator.store.keys import EVENTS
from tests.integration.conftest import ledger
from tests.support import REPO_ROOT, wait_for

pytestmark = pytest.mark.integration

#: The module's shared cluster (tests/integration/conftest.py): one control worker and one
#: agent with one process, so a task waits while another runs.
SHARED_AGENTS = {"a": ("echo,count,broken,flaky,sleep", 1)}


@pytest.mark.parametrize("path", ["client", "by-name"])
def test_three_agents_share_tasks_by_proficiency(
    path, start_control, start_agent, redis_url, redis_client
):
    """Below saturation, proficiencies 1.0 / 0.5 / 0.5 share 400 tasks about 50/25/25,
    whether the client routes them itself or `orchestrator.submit` does on two control
    workers (four router processes at once): the round-robin state is shared in Redis, not
    per process. (Room for 1,000 waiting tasks per agent keeps every agent below saturation,
    where the weighted sequence decides; at saturation each agent's pace does, see
    test_dispatch.)"""
    below = {"ORCH_AGENT_PREFETCH": "1000"}
    for i in range(2 if path == "by-name" else 1):
        start_control(concurrency=2, name=f"control{i}", wait=False, **below)
    start_agent("a", "echo=1.0", concurrency=2, wait=False, **below)
    start_agent("b", "echo=0.5", concurrency=2, wait=False, **below)
    start_agent("c", "echo=0.5", concurrency=2, **below)
    wait_for(lambda: redis_client.hlen("orch:agents") == 3, timeout=60)
    settings = load_settings(redis_url=redis_url, agent_prefetch=1000)
    with OrchestratorClient(settings=settings) as client:
        if path == "client":
            results = [client.submit("echo", {"i": i}) for i in range(400)]
        else:
            results = [
                client.app.send_task(
                    "orchestrator.submit", kwargs={"type": "echo", "payload": {"i": i}}
                )
                for i in range(400)
            ]
        assert [r.get(timeout=60) for r in results] == [{"i": i} for i in range(400)]

        shares = Counter(ledger(redis_client, r.id)["agent"] for r in results)
        assert sum(shares.values()) == 400
        assert 170 <= shares["a"] <= 230, shares
        assert 70 <= shares["b"] <= 130, shares
        assert 70 <= shares["c"] <= 130, shares


def test_by_name_submission_from_a_plain_celery_client(shared):
    """A service that never imports this project sends `orchestrator.submit` by name and
    `AsyncResult(id).get()` gives the handler's return value."""
    redis_url = shared.url
    script = textwrap.dedent(f"""
        import json, sys
        from celery import Celery
        app = Celery(broker={redis_url!r}, backend={redis_url!r})
        res = app.send_task("orchestrator.submit", kwargs={{"type": "echo", "payload": {{"x": 1}}}})
        value = res.get(timeout=30)
        own = app.send_task("orchestrator.submit",
                            kwargs={{"type": "echo", "payload": {{"y": 2}}, "task_id": "svc-42"}})
        tracked = app.AsyncResult("svc-42").get(timeout=30)
        by_message = own.get(timeout=30)  # the message's own id tells the same outcome
        leaked = [m for m in sys.modules if m.split(".")[0] in ("orchestrator", "workers")]
        print(json.dumps({{"value": value, "tracked": tracked, "by_message": by_message,
                          "leaked": leaked}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=True
    )
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply == {"value": {"x": 1}, "tracked": {"y": 2}, "by_message": {"y": 2}, "leaked": []}


def test_by_name_submissions_with_a_short_countdown_a_refusal_and_an_errback(shared):
    """A control worker routes by-name submissions in its consumer; what that path hands back
    to Celery's own still behaves as Celery's: a short countdown (the broker holds it) runs
    after it, a refusal is the message's failure and fires its link_error."""
    from celery import Celery, signature

    plain = Celery("foreign", broker=shared.url, backend=shared.url)
    plain.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    try:
        sent_at = now_s()
        later = plain.send_task(
            "orchestrator.submit",
            kwargs={"type": "echo", "payload": {"later": 1}},
            queue=ROUTING_QUEUE,
            countdown=1.5,
        )
        assert later.get(timeout=30) == {"later": 1}
        started = float(ledger(shared.redis, later.id)["started_at"])
        assert started >= sent_at + 1.5
        errback = signature(
            "orchestrator.submit",
            kwargs={"type": "count", "payload": {"key": "errback-1"}},
            queue=ROUTING_QUEUE,
        )
        refused = plain.send_task(
            "orchestrator.submit",
            kwargs={"type": "echo", "payload": [1]},
            queue=ROUTING_QUEUE,
            link_error=errback,
        )
        with pytest.raises(Exception, match="payload"):
            refused.get(timeout=30)
        wait_for(lambda: shared.redis.get("test:runs:errback-1") == "1", timeout=30)
    finally:
        plain.close()


def test_bad_input_is_rejected_naming_every_field_and_workers_keep_serving(shared):
    client, redis_client = shared.client, shared.redis
    by_name = client.app.send_task(
        "orchestrator.submit",
        kwargs={
            "type": "echo",
            "payload": {"x": 1},
            "priority": 99,
            "priorty": 3,
            "task_id": "mine-1",
        },
    )
    with pytest.raises(InvalidTask) as info:
        by_name.get(timeout=30)
    message = str(info.value)
    assert "priority: must be between 0 and 9 (got 99)" in message
    assert "priorty: unknown field" in message
    # The rejection is also the result of the client's own id, and nothing was routed.
    assert client.result("mine-1").state == "FAILURE"
    assert not redis_client.exists("orch:task:mine-1")
    events = [e.type for e in shared.events()]
    assert "task.rejected" in events and "task.routed" not in events

    # The Python client checks before anything is recorded, with the same message.
    with pytest.raises(InvalidTask, match=r"type: must be 1-64 chars"):
        client.submit("Not A Type")
    # One positional argument is a chain's previous result (payload["previous"]): the type
    # given that way (a common by-name mistake) is missing from the fields; more than one
    # positional argument is refused as such.
    positional = client.app.send_task("orchestrator.submit", args=["echo"])
    with pytest.raises(InvalidTask, match="type: is required"):
        positional.get(timeout=30)
    two = client.app.send_task("orchestrator.submit", args=["echo", 1], kwargs={"type": "echo"})
    with pytest.raises(InvalidTask, match="at most one positional argument"):
        two.get(timeout=30)
    assert shared.counter("rejected") == 4  # each announced too
    assert [e.type for e in shared.events()].count("task.rejected") == 4

    assert client.submit("echo", {"still": "serving"}).get(timeout=30) == {"still": "serving"}


def test_parked_task_runs_once_a_capable_agent_starts(
    start_control, start_agent, client, redis_client
):
    start_control()
    start_agent("a", "echo")
    parked = client.submit("rare", {"n": 7})
    wait_for(lambda: ledger(redis_client, parked.id).get("state") == "parked", timeout=30)
    assert parked.state == "PENDING"
    assert redis_client.zscore("orch:parked", parked.id) is not None

    start_agent("r", "rare")
    assert parked.get(timeout=30) == {"rare": True, "n": 7}
    # Celery stores the result first, then the agent records the success in the ledger.
    record = wait_for(
        lambda: (r := client.task(parked.id)).state.value == "succeeded" and r, timeout=10
    )
    assert [h["state"] for h in record.history] == [
        "accepted",
        "parked",
        "routed",
        "running",
        "succeeded",
    ]
    assert record.agent_id == "r"
    assert redis_client.zscore("orch:parked", parked.id) is None


def test_second_submission_with_an_accepted_id_runs_nothing_again(shared):
    client, redis_client = shared.client, shared.redis
    first = client.submit("count", {"key": "k1"}, task_id="once-1")
    assert first.get(timeout=30) == {"runs": 1}
    again = client.submit("count", {"key": "k1"}, task_id="once-1")
    # Prove the duplicate was processed (the router counted it) before judging it.
    wait_for(lambda: shared.counter("duplicates_ignored") == 1, timeout=30)
    assert again.get(timeout=5) == {"runs": 1}
    assert redis_client.get("test:runs:k1") == "1"
    assert client.task("once-1").attempts == 1


def test_a_submission_recorded_but_never_routed_runs_when_its_id_is_submitted_again(shared):
    """Redis failed over after the ledger recorded a submission and before it was routed; the
    client, told the store was unreachable, submits again under the same id: it runs, once."""
    client, redis_client = shared.client, shared.redis
    task = OrchestrationTask(task_id="half-1", type="count", payload={"key": "half"})
    outbox = ({"type": "count", "payload": {"key": "half"}, "task_id": "half-1"}, ROUTING_QUEUE)
    status, _ = client.store.accept(Acceptance(task, "lost-submit", now_s(), outbox))
    assert status is AcceptStatus.NEW and ledger(redis_client, "half-1")["state"] == "accepted"
    again = client.submit("count", {"key": "half"}, task_id="half-1")
    assert again.get(timeout=30) == {"runs": 1}
    assert redis_client.get("test:runs:half") == "1"
    assert redis_client.zscore("orch:outbox", "half-1") is None


def test_priority_nine_runs_before_waiting_lower_priorities(shared):
    client, redis_client = shared.client, shared.redis  # its one agent has one process
    blocker = client.submit("sleep", {"seconds": 2.0})
    wait_for(lambda: ledger(redis_client, blocker.id).get("state") == "running", timeout=30)
    low = [client.submit("echo", {"n": i}, priority=0) for i in range(3)]
    high = client.submit("echo", {"urgent": True}, priority=9)
    waiting = ("routed", "queued")  # in the agent's queue (its one prefetch slot) or the backlog
    wait_for(
        lambda: all(ledger(redis_client, r.id).get("state") in waiting for r in [*low, high]),
        timeout=30,
    )
    assert ledger(redis_client, blocker.id)["state"] == "running", "blocker ended too early"
    for r in [blocker, *low, high]:
        r.get(timeout=30)
    started = {r.id: float(ledger(redis_client, r.id)["started_at"]) for r in [*low, high]}
    assert started[high.id] < min(started[r.id] for r in low)


def test_a_result_a_client_sees_is_already_the_ledgers_success(shared):
    """The result and the ledger's `succeeded` are written in one step: a client woken by
    its result never reads the task as still running (nor the in-flight slot as held), by
    its own id or by an alias (the message id of a submission by name with a task_id)."""
    client, redis_client = shared.client, shared.redis
    for i in range(40):
        result = client.submit("echo", {"i": i})
        assert result.get(timeout=30) == {"i": i}
        assert ledger(redis_client, result.id)["state"] == "succeeded", f"task {i} of 40"
    from celery import Celery

    plain = Celery("foreign", broker=shared.url, backend=shared.url)
    plain.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    try:
        sent = plain.send_task(
            "orchestrator.submit",
            kwargs={"type": "echo", "payload": {"alias": 1}, "task_id": "aliased-1"},
            queue=ROUTING_QUEUE,
        )
        assert sent.get(timeout=30) == {"alias": 1}  # the message id resolves to the outcome
        assert ledger(redis_client, "aliased-1")["state"] == "succeeded"
        meta = json.loads(redis_client.get(f"celery-task-meta-{sent.id}"))
        assert (meta["task_id"], meta["status"], meta["result"]) == (
            sent.id,
            "SUCCESS",
            {"alias": 1},
        )
        own = json.loads(redis_client.get("celery-task-meta-aliased-1"))
        assert own["task_id"] == "aliased-1" and own["date_done"] == meta["date_done"]
    finally:
        plain.close()


def test_handler_failures_are_recorded_with_a_reason(shared):
    client = shared.client
    failed = client.submit("broken", {"message": "disk on fire"})
    with pytest.raises(Exception, match="disk on fire"):
        failed.get(timeout=30)
    record = client.task(failed.id)
    assert record.state.value == "failed" and "disk on fire" in (record.error or "")

    flaky = client.submit("flaky", {"key": "f1", "fail_times": 1}, max_retries=2)
    assert flaky.get(timeout=30) == {"runs": 2}
    assert client.task(flaky.id).attempts == 2


def test_agent_refuses_to_start_without_a_handler(celery_procs, orch_env):
    proc = celery_procs(
        ["worker", "-n", "bad@%h", "--without-gossip", "--without-mingle"],
        {**orch_env, "ORCH_AGENT_CAPABILITIES": "echo,teleport", "ORCH_HANDLERS": "tests.handlers"},
        name="bad",
    )
    assert proc.wait(timeout=60) != 0
    assert "capabilities ['teleport'] have no handler" in proc.log_text()


def test_invalid_setting_stops_the_worker_naming_the_variable(celery_procs, orch_env):
    proc = celery_procs(
        ["worker", "--without-gossip", "--without-mingle"],
        {**orch_env, "ORCH_AGENT_CAPABILITIES": "echo=7"},
        name="bad",
    )
    assert proc.wait(timeout=60) == 2
    assert "ORCH_AGENT_CAPABILITIES: proficiency of 'echo' must be in (0, 1]" in proc.log_text()


def test_agent_consumes_only_its_own_queue_and_deregisters_on_warm_shutdown(
    start_agent, redis_client
):
    agent = start_agent("a", "echo")
    log = agent.log_text()
    assert "agent.a" in log and "orchestrator.routing" not in log
    agent.terminate()
    # It stays listed, as offline, so that whatever waited in its queue can be moved away.
    assert redis_client.hget("orch:agent_status", "a") == "offline"
    types = [f["type"] for _, f in redis_client.xrange(EVENTS)]
    assert types.count("agent.registered") == 1 and types.count("agent.deregistered") == 1


def test_cli_reports_agents_and_a_task_ledger_as_json(start_control, start_agent, orch_env):
    start_control()
    start_agent("a", "echo=0.8")
    cli = [sys.executable, "-m", "orchestrator.cli"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*cli, *args], env=orch_env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    submitted = json.loads(run("submit", "echo", "--payload", '{"k": "v"}', "--wait", "--json"))
    assert submitted["state"] == "succeeded" and submitted["result"] == {"k": "v"}
    record = wait_for(
        lambda: (
            (r := json.loads(run("task", submitted["task_id"], "--json")))["state"] == "succeeded"
            and r
        ),
        timeout=30,
    )
    assert record["state"] == "succeeded" and record["agent_id"] == "a"
    assert record["attempts"] == 1 and record["history"][0]["state"] == "accepted"
    agents = json.loads(run("agents", "--json"))
    assert [(a["agent_id"], a["capabilities"], a["status"], a["circuit"]) for a in agents] == [
        ("a", {"echo": 0.8}, "active", "closed")
    ]
    assert agents[0]["performance_score"] == pytest.approx(1.0)
    # Piped, the table is tab-separated lines: a header, then one whole row per agent.
    header, row = run("agents").splitlines()
    columns = header.split("\t")
    assert dict(zip(columns, row.split("\t"), strict=True))[columns[0]] == "a", (header, row)

    bad = subprocess.run(
        [*cli, "submit", "echo", "--payload", "{nope"],
        env=orch_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--payload" in bad.stderr
    bad = subprocess.run(
        [*cli, "submit", "echo", "--priority", "12"],
        env=orch_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "priority: must be between 0 and 9 (got 12)" in bad.stderr


def test_closing_a_client_closes_every_connection_it_opened(shared):
    """A service that closes its client leaks no socket: the state store's, the publisher's
    and the result backend's (a result waited on subscribes a pub/sub connection)."""
    redis_url, port = shared.url, shared.cluster.server.port

    def ours() -> list:
        return [
            c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port
        ]

    before = len(ours())
    client = OrchestratorClient(settings=load_settings(redis_url=redis_url))
    other = OrchestratorClient(settings=load_settings(redis_url=redis_url))
    assert client.submit("echo", {"n": 1}).get(timeout=30) == {"n": 1}
    client.route_locally = False  # through a control worker: the publisher's pool too
    assert client.submit("echo", {"n": 2}).get(timeout=30) == {"n": 2}
    assert other.submit("echo", {"n": 3}).get(timeout=30) == {"n": 3}
    client.close()
    # Another client of the same Redis in the same process keeps working, and so does a new one.
    other.route_locally = False
    assert other.submit("echo", {"n": 4}).get(timeout=30) == {"n": 4}
    other.close()
    with OrchestratorClient(settings=load_settings(redis_url=redis_url)) as again:
        again.route_locally = False
        assert again.submit("echo", {"n": 5}).get(timeout=30) == {"n": 5}
    assert len(ours()) == before, ours()


def test_the_readmes_python_examples_run_as_shown(shared):
    """README.md's Python examples (by name, a chain, the client), run as one script against
    a real cluster with only the Redis URL changed: what a new user copies works."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    clients = [b for b in blocks if "send_task" in b or "chain(" in b or "OrchestratorClient(" in b]
    assert len(clients) == 3, clients
    script = "\n".join(clients).replace("redis://127.0.0.1:6390/0", shared.url)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "{'x': 1}",
        "{'note': 'after the sleep', 'previous': {'slept': 0.2}}",
        "{'x': 1}",
    ], out.stdout
