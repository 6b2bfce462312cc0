"""Per-client limits and blocking, and the security loop's findings, on a real cluster.

Against a real redis-server and real celery workers (and a real Flower)."""

from __future__ import annotations

import json
import math
import random
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from celery import Celery

from orchestrator.client import OrchestratorClient
from orchestrator.config import Settings, load_settings
from orchestrator.errors import ClientBlocked, InvalidTask, RateLimited
from orchestrator.models import RegisteredAgent
from orchestrator.monitoring.loops import LoopContext, run_alerts, run_security
from orchestrator.routing.router import Router
from orchestrator.runtime.celeryconf import MONITORING_QUEUE, ROUTING_QUEUE, create_app
from orchestrator.security.policy import Bucket, take_token
from orchestrator.store import StateStore
from orchestrator.store.codes import RejectionReason
from orchestrator.store.keys import COUNTERS, EVENTS, POISON, POISON_MSG, SECURITY_CHECKED
from tests.integration.conftest import WORKER_FLAGS
from tests.support import free_port, wait_for
from tests.zygote import run_module

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("durable_redis")]

CLI = [sys.executable, "-m", "orchestrator.cli"]
BASE = 1_800_000_000.0
HOST = socket.gethostname()


def events(client: redis.Redis, kind: str = "security.threat") -> list[dict[str, Any]]:
    return [json.loads(f["data"]) for _, f in client.xrange(EVENTS) if f["type"] == kind]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = run_module("orchestrator.cli", args, env, timeout=60)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def env_settings(env: dict[str, str]) -> Settings:
    """The Settings a process started with `env` has (its ORCH_* variables)."""
    fields = {k.removeprefix("ORCH_").lower(): v for k, v in env.items() if k.startswith("ORCH_")}
    return load_settings(**fields)


def register(store: StateStore, agent_id: str, hostname: str = HOST) -> None:
    agent = RegisteredAgent(
        agent_id=agent_id, capabilities={"echo": 1.0}, queue=f"agent.{agent_id}", hostname=hostname
    )
    store.register_agent(agent, now=time.time(), source="test")


def run_security_task(app: Celery, redis_client: redis.Redis) -> dict[str, Any]:
    """Send the real `orchestrator.monitor.security` to the control worker and wait until the
    run has stored what it found."""
    before = redis_client.get(SECURITY_CHECKED)
    app.send_task("orchestrator.monitor.security", queue=MONITORING_QUEUE)
    wait_for(
        lambda: redis_client.get(SECURITY_CHECKED) != before,
        timeout=60,
        message="the security loop never finished a run",
    )
    return json.loads(redis_client.get(SECURITY_CHECKED) or "{}")


@pytest.fixture
def ctx(redis_url: str):
    context = LoopContext.from_settings(
        load_settings(redis_url=redis_url, security_rejection_threshold=3)
    )
    yield context
    context.store.r.close()


# --- the Lua step ----------------------------------------------------------------------------


def test_the_lua_token_bucket_is_take_token(ctx):
    """scripts.ADMIT_CLIENT and security.take_token agree, verdict and retry time, over random
    sequences (clock jitter backwards included)."""
    rng = random.Random(8)
    for case in range(30):
        rate = rng.choice([0.1, 0.5, 1.0, 3.0, 50.0])
        burst = rng.randint(1, 5)
        client = f"c{case}"
        bucket: Bucket | None = None
        now = BASE
        for _ in range(40):
            now += rng.choice([0.0, 0.0, 0.01, 0.2, 1 / rate, -0.05, 3.0])
            allowed, bucket, retry = take_token(bucket, now, rate, burst)
            verdict, value = ctx.store.admit_client(
                client, now=now, rate=rate, burst=burst, check_block=False
            )
            assert verdict == ("ok" if allowed else "limited"), (case, now)
            assert value == pytest.approx(retry, abs=1e-9)
        # The bucket lives only until it would be full again.
        ttl = ctx.store.r.pttl(f"orch:rate:{client}")
        assert 0 < ttl <= math.ceil(burst / rate * 1000) + 1000


def test_a_block_is_a_key_with_a_ttl_and_the_same_lua_step_checks_it(ctx, redis_client):
    store = ctx.store
    assert store.admit_client("svc", now=BASE, rate=0.0, burst=1, check_block=True) == ("ok", 0.0)
    store.block_client("svc", BASE + 300, BASE)
    assert 0 < redis_client.pttl("orch:block:svc") <= 300_000
    assert store.admit_client("svc", now=BASE + 1, rate=0.0, burst=1, check_block=True) == (
        "blocked",
        BASE + 300,
    )
    # Blocking is checked only when asked (auto-block on), and before the bucket.
    assert store.admit_client("svc", now=BASE + 1, rate=0.0, burst=1, check_block=False) == (
        "ok",
        0.0,
    )
    assert (
        store.admit_client("svc", now=BASE + 1, rate=1.0, burst=1, check_block=True)[0] == "blocked"
    )
    assert not redis_client.exists("orch:rate:svc"), "a blocked submission takes no token"
    assert store.blocked_clients(BASE + 1) == {"svc": BASE + 300}
    assert store.blocked_clients(BASE + 301) == {}, "an ended block is not listed"
    assert store.unblock_client("svc") is True
    assert store.unblock_client("svc") is False
    assert store.admit_client("svc", now=BASE + 2, rate=0.0, burst=1, check_block=True) == (
        "ok",
        0.0,
    )


def test_with_both_limits_off_a_submission_makes_no_extra_redis_call(redis_url, redis_client):
    """The hot path is benchmarked: off (the default) costs nothing; on, one Lua call. (The
    agent has room for every task here: below saturation, where the hot path is.)"""
    calls = {}
    for name, extra in (("off", {}), ("on", {"client_rate_limit": 1000.0})):
        settings = load_settings(redis_url=redis_url, agent_prefetch=10, **extra)
        with OrchestratorClient(settings=settings) as client:
            register(client.store, "a")
            client.submit("echo", {}, task_id=f"warm-{name}")  # loads scripts and the fleet
            redis_client.config_resetstat()
            client.submit("echo", {"x": 1}, task_id=f"t-{name}")
            stats = redis_client.info("commandstats")
        calls[name] = {k: v["calls"] for k, v in stats.items() if "config" not in k}
    # The router re-checks its view of the fleet (one GET of its version) once FLEET_CACHE_S
    # has passed since it last did: by the clock, whatever the limits, so on a loaded machine
    # either run may show it.
    for run in calls.values():
        assert run.pop("cmdstat_get", 0) <= 1, run
    # (commandstats counts the commands inside a script too: those are not round trips)
    # One step accepts, picks, routes and publishes; the limits add one.
    assert calls["off"]["cmdstat_evalsha"] == 1
    assert calls["on"]["cmdstat_evalsha"] == 2
    inside = {"cmdstat_hmget": 1, "cmdstat_hset": 1, "cmdstat_pexpire": 1}
    assert {k: calls["on"][k] - calls["off"].get(k, 0) for k in calls["on"]} == {
        **dict.fromkeys(calls["off"], 0),
        **inside,
        "cmdstat_evalsha": 1,
    }


# --- rate limits on both submission paths ---------------------------------------------------


def test_a_client_over_its_rate_limit_is_refused_on_both_paths(
    start_control, start_agent, orch_env, redis_url, redis_client
):
    # One submission per 100 s after a burst of 2: the third in a row is refused for certain.
    limits = {"ORCH_CLIENT_RATE_LIMIT": "0.01", "ORCH_CLIENT_RATE_BURST": "2"}
    start_control(**limits)
    start_agent("a", "echo")
    settings = load_settings(redis_url=redis_url, client_rate_limit=0.01, client_rate_burst=2)

    # OrchestratorClient: refused at once, in the calling process.
    with OrchestratorClient(settings=settings) as client:
        ok = [client.submit("echo", {"i": i}, client_id="fast") for i in range(2)]
        with pytest.raises(RateLimited) as refused:
            client.submit("echo", {"i": 2}, client_id="fast", task_id="fast-3")
        assert refused.value.client_id == "fast"
        assert "0.01 submissions/s" in str(refused.value)
        assert 99 < refused.value.retry_after_s <= 100
        assert [r.get(timeout=30) for r in ok] == [{"i": 0}, {"i": 1}]
        # Another client has a bucket of its own.
        assert client.submit("echo", {}, client_id="calm").get(timeout=30) == {}

    # By name, through a control worker: the refusal is the result of the submit message's id
    # and of the task_id the sender chose.
    app = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    sent = [
        app.send_task(
            "orchestrator.submit",
            kwargs={"type": "echo", "payload": {"i": i}, "client_id": "byname"},
            queue=ROUTING_QUEUE,
        )
        for i in range(2)
    ]
    # The third is sent once the two have run: the control worker's two processes would
    # otherwise admit them in any order.
    assert [app.AsyncResult(s.id).get(timeout=30) for s in sent] == [{"i": 0}, {"i": 1}]
    third = app.send_task(
        "orchestrator.submit",
        kwargs={"type": "echo", "client_id": "byname", "task_id": "byname-3"},
        queue=ROUTING_QUEUE,
    )
    for task_id in (third.id, "byname-3"):
        with pytest.raises(RateLimited, match=r"'byname' is over its rate limit of 0\.01"):
            app.AsyncResult(task_id).get(timeout=30)
    # route_locally=False hands admission to the control worker: counted there, once.
    with OrchestratorClient(settings=settings, route_locally=False) as handing:
        handed = [handing.submit("echo", {}, client_id="handed") for _ in range(2)]
        assert [r.get(timeout=30) for r in handed] == [{}, {}]  # then the third, as above
        with pytest.raises(RateLimited, match="'handed'"):
            handing.submit("echo", {}, client_id="handed").get(timeout=30)
    app.close()

    # Each refusal is a rejection: counted, per client and minute, and announced.
    counters = redis_client.hgetall(COUNTERS)
    assert (counters["rejected"], counters["rate_limited"]) == ("3", "3")
    rejected = events(redis_client, "task.rejected")
    assert sorted(e["client_id"] for e in rejected) == ["byname", "fast", "handed"]
    assert all(e["reason"] == "rate_limited" for e in rejected)
    minute = LoopContext.from_settings(settings)
    try:
        now = time.time()
        assert minute.mon.rejections(300, now) == {"byname": 1, "fast": 1, "handed": 1}
        assert minute.mon.rejections(300, now, "rl") == {"byname": 1, "fast": 1, "handed": 1}
        # Below the threshold (20) they are rate-limited clients (warnings), not threats.
        summary = run_security(minute, now)
        assert summary["threats"] == []
        assert sorted(summary["new"]) == [
            "rate_limited:byname",
            "rate_limited:fast",
            "rate_limited:handed",
        ]
        assert minute.mon.threats() == {}
    finally:
        minute.store.r.close()


def test_a_client_hammering_past_its_limit_is_flagged_as_a_threat(ctx, redis_client):
    """Rate-limited refusals count toward the rejection threshold like invalid specs."""
    settings = ctx.settings.model_copy(update={"client_rate_limit": 0.001, "client_rate_burst": 1})
    router = Router(ctx.store, settings, publish=lambda *a, **k: None)
    now = time.time()
    router.validate({"type": "echo", "client_id": "hammer"}, "s0", now)
    for i in range(3):
        with pytest.raises(RateLimited):
            router.validate({"type": "echo", "client_id": "hammer"}, f"s{i + 1}", now)
    summary = run_security(ctx, now + 1)
    assert summary["threats"] == ["hammer"]
    assert set(summary["new"]) == {"rejected_submissions:hammer", "rate_limited:hammer"}
    assert set(ctx.mon.threats()) == {"rejected_submissions:hammer"}


def test_a_finding_stored_under_an_older_id_stays_the_same_finding(ctx, redis_client):
    """Before each id was made from its kind, a client's rejections were `rejections:<c>`.
    Read after an upgrade, it is the same finding: its `since` kept, not announced again, and
    (auto-block on) the client an operator unblocked is not blocked a second time."""
    settings = ctx.settings.model_copy(update={"security_auto_block": True})
    upgraded = LoopContext(settings, ctx.store, ctx.mon)
    router = Router(ctx.store, settings, publish=lambda *a, **k: None)
    now = time.time()
    for i in range(3):
        with pytest.raises(InvalidTask):
            router.validate({"type": "echo", "client_id": "old", "priorty": 1}, f"o{i}", now)
    run_security(upgraded, now + 1)
    first = ctx.mon.findings()["rejected_submissions:old"]
    ctx.store.unblock_client("old")  # the operator lifted the block
    stored = first.model_copy(update={"id": "rejections:old"}).model_dump_json()
    redis_client.delete("orch:security:threats")
    redis_client.hset("orch:security:threats", "rejections:old", stored)  # the older layout
    announced = len(events(redis_client))
    summary = run_security(upgraded, now + 2)
    assert "rejected_submissions:old" not in summary["new"]
    assert ctx.mon.findings()["rejected_submissions:old"].since == first.since
    assert len(events(redis_client)) == announced
    assert ctx.store.blocked_clients(now + 2) == {}


# --- blocking --------------------------------------------------------------------------------


def test_a_flagged_client_is_blocked_until_an_operator_lifts_it(
    start_control, start_agent, orch_env, redis_url, redis_client
):
    block = {
        "ORCH_SECURITY_AUTO_BLOCK": "true",
        "ORCH_SECURITY_BLOCK_S": "600",
        "ORCH_SECURITY_REJECTION_THRESHOLD": "3",
        "ORCH_SECURITY_INSPECT_TIMEOUT_S": "3",
    }
    env = {**orch_env, **block}
    start_control(**block)
    start_agent("a", "echo")
    settings = env_settings(env)
    app = create_app(settings, with_tasks=False)
    client = OrchestratorClient(settings=settings)
    try:
        for _ in range(3):
            with pytest.raises(InvalidTask, match="priority"):
                client.submit("echo", {}, priority=99, client_id="evil")
        assert client.submit("echo", {}, client_id="evil").get(timeout=30) == {}, "not yet"

        before = time.time()
        run_security_task(app, redis_client)
        (threat,) = [e for e in events(redis_client) if e["kind"] == "rejected_submissions"]
        assert (threat["client_id"], threat["rejections"]) == ("evil", 3)
        assert before + 600 <= threat["blocked_until"] <= time.time() + 600

        # Both paths refuse it now, naming the block's end and how to lift it.
        with pytest.raises(ClientBlocked) as refused:
            client.submit("echo", {}, client_id="evil")
        message = str(refused.value)
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(threat["blocked_until"]))
        assert f"'evil' is blocked until {end}" in message
        assert "s left)" in message and "orchestrator security unblock evil" in message
        assert 590 < refused.value.seconds_left <= 600
        by_name = app.send_task(
            "orchestrator.submit", kwargs={"type": "echo", "client_id": "evil"}, queue=ROUTING_QUEUE
        )
        with pytest.raises(ClientBlocked, match=f"blocked until {end}"):
            by_name.get(timeout=30)
        assert client.submit("echo", {}, client_id="other").get(timeout=30) == {}

        # The alert loop fires SecurityThreat on the critical finding.
        app.send_task("orchestrator.monitor.alerts", queue=MONITORING_QUEUE)
        wait_for(
            lambda: any(
                e["name"] == "SecurityThreat" for e in events(redis_client, "alert.firing")
            ),
            timeout=60,
            message="SecurityThreat never fired",
        )

        report = cli_json(env, "security")
        ids = {f["id"]: f for f in report["findings"]}
        assert ids["rejected_submissions:evil"]["severity"] == "critical"
        assert ids["client_blocked:evil"]["severity"] == "warning"
        assert set(ids["rejected_submissions:evil"]) == {
            "id",
            "kind",
            "severity",
            "summary",
            "since",
        }
        assert report["blocked"] == {"evil": threat["blocked_until"]}
        assert report["counters"]["clients_blocked"] == 1
        assert report["counters"]["refused_while_blocked"] == 2
        assert [t["client_id"] for t in report["threats"]] == ["evil"]

        # The real CLI lifts it; the next submission completes.
        assert cli_json(env, "security", "unblock", "evil") == {
            "client_id": "evil",
            "unblocked": True,
        }
        assert "evil was not blocked" in cli(env, "security", "unblock", "evil").stdout
        assert client.submit("echo", {"back": 1}, client_id="evil").get(timeout=30) == {"back": 1}

        # The finding still stands (its rejections are in the window): no second event, and
        # no second block, so the operator's decision holds.
        run_security_task(app, redis_client)
        assert [e["finding"] for e in events(redis_client)].count("rejected_submissions:evil") == 1
        assert client.submit("echo", {}, client_id="evil").get(timeout=30) == {}
        assert "client_blocked:evil" not in {f["id"] for f in cli_json(env, "security")["findings"]}
    finally:
        client.close()
        app.close()


# --- the findings ----------------------------------------------------------------------------

ROGUE_APP = """
import os
from celery import Celery

app = Celery("rogue", broker=os.environ["ORCH_REDIS_URL"])
app.conf.accept_content = ["json", "pickle"]
app.conf.task_default_queue = "rogue"
"""


def test_findings_one_event_each_across_runs(
    start_control, start_agent, celery_procs, orch_env, redis_url, redis_client, tmp_path
):
    """A consumer of agent.ghost that is no agent, a worker accepting pickle and poison
    messages refused in the window are each one finding and one event over several runs;
    a finding that goes away is dropped."""
    fast = {"ORCH_SECURITY_INSPECT_TIMEOUT_S": "3"}
    env = {**orch_env, **fast}
    start_control(**fast)
    start_agent("a", "echo")
    ghost = celery_procs(
        ["worker", "-n", "ghost@%h", "-Q", "agent.ghost", "-c", "1", *WORKER_FLAGS],
        env,
        name="ghost",
    )
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    (rogue_dir / "rogue_app.py").write_text(ROGUE_APP)
    rogue = celery_procs(
        ["worker", "-n", "rogue@%h", "-Q", "rogue", "-c", "1", "-P", "solo", *WORKER_FLAGS],
        {**env, "C_FORCE_ROOT": "true"},  # Celery refuses pickle as root otherwise
        name="rogue",
        app="rogue_app",
        cwd=rogue_dir,
    )
    ghost.wait_for_log("ready.", timeout=60)
    rogue.wait_for_log("ready.", timeout=60)
    # Two messages refused at an edge, as the poison store records them (one long ago).
    now = time.time()
    for pid, ts in (("poison/1", now - 5), ("poison/old", now - 3600)):
        redis_client.zadd(POISON, {pid: ts})
        redis_client.hset(POISON_MSG, pid, json.dumps({"id": pid, "queue": "celery", "ts": ts}))

    app = create_app(env_settings(env), with_tasks=False)
    try:
        for _ in range(3):
            checked = run_security_task(app, redis_client)
        assert {f"ghost@{HOST}", f"rogue@{HOST}", f"a@{HOST}"} <= set(checked["workers"])
        found = events(redis_client)
        by_finding: dict[str, list[dict[str, Any]]] = {}
        for e in found:
            by_finding.setdefault(e["finding"], []).append(e)
        ghost_id = f"unregistered_consumer:ghost@{HOST}:agent.ghost"
        rogue_id = f"worker_unsafe_content:rogue@{HOST}:pickle"
        assert set(by_finding) == {ghost_id, rogue_id, "poison_refused"}
        assert all(len(v) == 1 for v in by_finding.values()), by_finding
        assert by_finding[ghost_id][0]["queue"] == "agent.ghost"
        assert by_finding["poison_refused"][0]["refused"] == 1
        assert by_finding[rogue_id][0]["content_type"] == "pickle"

        report = cli_json(env, "security")
        severities = {f["id"]: f["severity"] for f in report["findings"]}
        assert severities == {rogue_id: "critical", ghost_id: "error", "poison_refused": "error"}
        assert report["counters"]["poison"] == 1
        assert report["checked_at"] == checked["ts"]
        table = cli(env, "security").stdout
        assert "agent.ghost" in table and "findings" in table

        # The ghost leaves: its finding is dropped, the others stand (no new events).
        ghost.terminate()
        run_security_task(app, redis_client)
        standing = {f["id"] for f in cli_json(env, "security")["findings"]}
        assert standing == {rogue_id, "poison_refused"}
        assert len(events(redis_client)) == 3
    finally:
        app.close()


def test_flower_without_authentication_is_a_finding(celery_procs, orch_env, ctx, redis_client):
    open_port, closed_port = free_port(), free_port()
    open_flower = celery_procs(
        ["flower", f"--port={open_port}", "--address=127.0.0.1"],
        {**orch_env, "FLOWER_UNAUTHENTICATED_API": "true"},
        name="flower-open",
    )
    closed_flower = celery_procs(
        ["flower", f"--port={closed_port}", "--address=127.0.0.1"],
        {**orch_env, "FLOWER_BASIC_AUTH": "ops:s3cret"},
        name="flower-closed",
    )
    open_flower.wait_for_log("Visit me at", timeout=60)
    closed_flower.wait_for_log("Visit me at", timeout=60)

    def flower_findings(port: int) -> list[str]:
        # Credentials in the URL are not used: the probe asks as a stranger would.
        url = f"http://ops:s3cret@127.0.0.1:{port}"
        ctx.settings = ctx.settings.model_copy(update={"flower_url": url})
        return [i for i in run_security(ctx, time.time())["findings"] if i.startswith("flower")]

    assert flower_findings(open_port) == ["flower_open"]
    assert flower_findings(closed_port) == []
    assert flower_findings(open_port) == ["flower_open"]
    # Unreachable is not checked: the finding stands as it was, and makes no new event.
    open_flower.terminate()
    assert flower_findings(open_port) == ["flower_open"]
    opened = [e for e in events(redis_client) if e["finding"] == "flower_open"]
    assert len(opened) == 2 and opened[0]["status"] == 200
    assert "s3cret" not in json.dumps(opened)


def test_the_alert_loop_fires_on_error_and_critical_findings_only(ctx, redis_client):
    now = time.time()
    for i in range(3):
        ctx.store.record_rejection(
            ["priority: bad"], submit_id=f"s{i}", now=now, client_id="bad-svc"
        )
    ctx.store.record_rejection(
        ["x"], submit_id="r", now=now, client_id="limited", reason=RejectionReason.RATE_LIMITED
    )
    run_security(ctx, now)
    assert set(ctx.mon.findings()) == {"rejected_submissions:bad-svc", "rate_limited:limited"}
    assert "SecurityThreat" in run_alerts(ctx, now)["firing"]
    # The window passes: the finding is dropped and the alert resolves.
    later = now + ctx.settings.security_window_s + 120
    run_security(ctx, later)
    assert ctx.mon.findings() == {}
    assert "SecurityThreat" not in run_alerts(ctx, later)["firing"]
    # A warning alone (a rate-limited client) is a finding, not a threat.
    ctx.store.record_rejection(
        ["x"], submit_id="r2", now=later, client_id="limited", reason=RejectionReason.RATE_LIMITED
    )
    run_security(ctx, later + 1)
    assert set(ctx.mon.findings()) == {"rate_limited:limited"} and ctx.mon.threats() == {}
    assert "SecurityThreat" not in run_alerts(ctx, later + 1)["firing"]


def test_poison_counts_only_the_window_and_is_read_only(ctx, redis_client):
    now = time.time()
    redis_client.zadd(POISON, {"p1": now - 10, "p2": now - 299, "p3": now - 301, "p4": now + 1})
    assert ctx.mon.poison_refused(300, now) == 2
    assert redis_client.zcard(POISON) == 4
