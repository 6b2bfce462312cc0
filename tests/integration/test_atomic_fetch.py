"""The atomic fetch of runtime.transport, against real redis-servers and celery workers.

kombu BRPOPs a message and records it as unacknowledged in a second command: a Redis killed
in between keeps the pop and loses the record, and the message is gone. Here the pop and the
record are one Lua step, so a Redis crash at any instant leaves every popped message either
in its list or restorable from `unacked`; a fetch refused for lack of memory takes nothing,
and the worker waits it out instead of dying. Lua cannot block: an idle worker is woken by
Redis (CLIENT TRACKING of the lists its empty fetch read) instead of polling, and polls
where Redis refuses that.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Message, Queue

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.routing.weights import to_broker_priority
from orchestrator.runtime.celeryconf import BROKER_PRIORITY_STEPS, SUBMIT, create_app
from orchestrator.runtime.transport import (
    FETCH,
    INVALIDATE,
    TRANSPORT,
    Channel,
    captured_pushes,
    wake_delay,
    wake_refusal,
)
from orchestrator.store.keys import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, task_key
from tests.chaos.cluster import chaos_env, worker_args
from tests.support import RedisServer, wait_for

pytestmark = pytest.mark.integration

#: Pushes one entry even while Redis is out of memory (the test's producer, not a worker).
PUSH_ALLOW_OOM = "#!lua flags=allow-oom\nreturn redis.call('LPUSH', KEYS[1], ARGV[1])"


def submit_message(redis_url: str, key: str, path: Path, priority: int = 5) -> tuple[str, str]:
    """The list and entry of a by-name `orchestrator.submit` to `celery`, built but not sent."""
    app = create_app(load_settings(redis_url=redis_url), with_tasks=False)
    try:
        with captured_pushes() as pushes:
            app.send_task(
                SUBMIT,
                kwargs={"type": "record_run", "payload": {"key": key, "path": str(path)}},
                task_id=key,
                queue="celery",
                priority=to_broker_priority(priority),
            )
    finally:
        app.close()
    ((list_key, entry),) = pushes
    return list_key, entry


def fetch_keys(queue: str) -> list[str]:
    """kombu's consuming order for one queue under this project's priority steps."""
    return [queue if p == 0 else f"{queue}\x06\x16{p}" for p in range(10)]


def test_fetch_pops_and_records_in_one_step(redis_url: str, redis_client: redis.Redis, tmp_path):
    """One script call takes the most urgent entry and writes kombu's own record of it: the
    list has lost it and `unacked` holds it at the same instant (read in one MULTI); an
    entry of a no_ack list, or one that is no envelope, is taken without a record."""
    fetch = redis_client.register_script(FETCH)
    lists = fetch_keys("celery")
    calm_key, calm = submit_message(redis_url, "calm", tmp_path / "runs", priority=0)
    urgent_key, urgent = submit_message(redis_url, "urgent", tmp_path / "runs", priority=9)
    assert (urgent_key, calm_key) == ("celery", "celery\x06\x169")
    redis_client.lpush(calm_key, calm)
    redis_client.lpush(urgent_key, urgent)
    keys, records = lists, [KOMBU_UNACKED, KOMBU_UNACKED_INDEX]

    now = 1_700_000_000.25
    got = fetch(keys=keys, args=[*records, now, *["1"] * len(lists)])
    envelope = json.loads(urgent)
    tag = envelope["properties"]["delivery_tag"]
    assert got == ["celery", urgent, tag]
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.llen("celery").llen(calm_key).hget(KOMBU_UNACKED, tag).zscore(KOMBU_UNACKED_INDEX, tag)
        left, calm_left, record, score = pipe.execute()
    assert (left, calm_left) == (0, 1)
    info = envelope["properties"]["delivery_info"]
    assert json.loads(record) == [envelope, info["exchange"], info["routing_key"]]
    assert score == now

    # A no_ack consumer's entry: taken, not recorded.
    got = fetch(keys=keys, args=[*records, now, *["0"] * len(lists)])
    assert got[:2] == [calm_key, calm] and got[2] == ""
    assert redis_client.hlen(KOMBU_UNACKED) == 1
    # No envelope: taken (the consumer refuses it), not recorded, and nothing stops there.
    redis_client.lpush("celery\x06\x163", "{not json")
    redis_client.set("celery\x06\x161", "a string, not a list")  # skipped: no queue
    got = fetch(keys=keys, args=[*records, now, *["1"] * len(lists)])
    assert got == ["celery\x06\x163", "{not json", ""]
    assert redis_client.hlen(KOMBU_UNACKED) == 1
    assert fetch(keys=keys, args=[*records, now, *["1"] * len(lists)]) is None


def test_restore_visible_brings_back_what_the_fetch_recorded(redis_url, redis_client, tmp_path):
    """kombu's own sweep restores a fetched, never acknowledged message to its list."""
    list_key, entry = submit_message(redis_url, "restored", tmp_path / "runs")
    redis_client.lpush(list_key, entry)
    lists = fetch_keys("celery")
    old = time.time() - 7200  # fetched two hours ago by a consumer that died
    tag = redis_client.register_script(FETCH)(
        keys=lists, args=[KOMBU_UNACKED, KOMBU_UNACKED_INDEX, old, *["1"] * len(lists)]
    )[2]
    assert redis_client.llen(list_key) == 0
    # The project's priority steps (0-9): kombu's default steps would restore to another list.
    options = {"priority_steps": BROKER_PRIORITY_STEPS, "queue_order_strategy": "priority"}
    conn = Connection(redis_url, transport=TRANSPORT, transport_options=options)
    try:
        channel = conn.default_channel
        Queue("celery", routing_key="celery")(channel).declare()
        channel.qos.restore_visible()
    finally:
        conn.release()
    assert redis_client.hlen(KOMBU_UNACKED) == 0
    (back,) = redis_client.lrange(list_key, 0, -1)
    restored = json.loads(back)
    assert restored["properties"]["delivery_tag"] == tag
    assert restored["headers"]["redelivered"] is True


def test_an_empty_fetch_tracks_its_lists(redis_server, redis_url, redis_client):
    """A fetch that finds nothing reads every list, so a connection that asked Redis to track
    its keys is told (on its wake connection) of the next push to any of them, once; what it
    pops itself (NOLOOP) tells it nothing."""
    lists = fetch_keys("t.tracked")
    keys = lists
    args = [KOMBU_UNACKED, KOMBU_UNACKED_INDEX, time.time(), *["1"] * len(lists)]
    pool = redis.ConnectionPool.from_url(redis_url, protocol=2)
    wake, fetcher = pool.get_connection(), pool.get_connection()
    try:
        wake.send_command("CLIENT", "ID")
        wake_id = wake.read_response()
        wake.send_command("SUBSCRIBE", INVALIDATE)
        assert wake.read_response()[0] == b"subscribe"
        fetcher.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", wake_id, "NOLOOP")
        assert fetcher.read_response() == b"OK"
        sha = redis_client.script_load(FETCH)

        def fetch() -> Any:
            fetcher.send_command("EVALSHA", sha, len(keys), *keys, *args)
            return fetcher.read_response()

        def said() -> list[Any]:
            # What Redis sent before the answer to a PING: invalidations, in order.
            wake.send_command("PING")
            frames = []
            while (frame := wake.read_response()) != [b"pong", b""]:
                frames.append(frame)
            return frames

        def invalidated(key: str) -> list[Any]:
            return [[b"message", INVALIDATE.encode(), [key.encode()]]]

        assert fetch() is None
        assert said() == []
        redis_client.lpush(lists[7], "a")
        assert said() == invalidated(lists[7])
        redis_client.lpush(lists[7], "b")  # no longer tracked: said once
        assert said() == []
        assert fetch()[1] == b"a"
        assert fetch()[1] == b"b"
        assert said() == []  # its own pops: nothing
        assert fetch() is None
        redis_client.rpush(lists[0], "c")
        assert said() == invalidated(lists[0])
        # Another consumer's deliveries and acks (kombu's unacked records, which every
        # consumer shares) wake no idle one: only its own lists are tracked. (Redis 7.0
        # remembers every key a script declares when the script reads one.)
        assert fetch()[1] == b"c"
        assert fetch() is None
        redis_client.hset(KOMBU_UNACKED, "other", "x")
        redis_client.zadd(KOMBU_UNACKED_INDEX, {"other": 1.0})
        redis_client.hdel(KOMBU_UNACKED, "other")
        assert said() == []
    finally:
        pool.disconnect()


def test_a_woken_fetch_waits_only_right_after_an_empty_one():
    assert wake_delay(now=100.0, empty_at=90.0, least=0.002) == 0.0
    assert wake_delay(now=100.0, empty_at=99.9995, least=0.002) == pytest.approx(0.0015)


def test_only_a_lasting_refusal_turns_the_wake_off_for_good():
    """No permission or no such command: poll for good. Anything else: ask again later."""
    acl = "User u has no permissions to run the 'client|tracking' command"
    assert wake_refusal(redis.exceptions.NoPermissionError(acl))
    assert wake_refusal(redis.ResponseError("unknown subcommand 'TRACKING'. Try CLIENT HELP."))
    assert wake_refusal(redis.ResponseError("unknown command 'CLIENT', with args beginning with"))
    assert not wake_refusal(redis.ResponseError("MASTERDOWN Link with MASTER is down"))


@pytest.fixture
def kombu_connection(redis_url: str) -> Iterator[Connection]:
    conn = Connection(redis_url, transport=TRANSPORT)
    try:
        yield conn
    finally:
        conn.release()


def test_consumer_records_once_and_no_ack_records_nothing(kombu_connection, redis_client):
    """Through kombu's consumer: while the callback runs, the message is recorded (by the
    fetch: QoS.append adds no HSET of its own); its ack removes the record; a no_ack
    consumer's messages leave none. An idle consumer waits a bounded, doubling time."""
    channel = kombu_connection.default_channel
    assert isinstance(channel, Channel)
    queue = Queue("t.atomic", routing_key="t.atomic")
    quiet = Queue("t.atomic.noack", routing_key="t.atomic.noack")
    seen: list[tuple[str, Any, int]] = []

    def on_message(body: Any, message: Message) -> None:
        record = redis_client.hget(KOMBU_UNACKED, message.delivery_tag)
        seen.append((message.delivery_info["routing_key"], body, record is not None))
        if message.delivery_info["routing_key"] == "t.atomic":
            message.ack()

    Consumer(channel, [queue], callbacks=[on_message]).consume()
    Consumer(channel, [quiet], callbacks=[on_message], no_ack=True).consume()
    with kombu_connection.Producer() as producer:
        for name in ("t.atomic", "t.atomic.noack"):
            producer.publish("warm-up", routing_key=name, declare=[queue, quiet])

    def drain(count: int) -> None:
        def step() -> bool:
            if len(seen) < count:
                with contextlib.suppress(TimeoutError):
                    kombu_connection.drain_events(timeout=0.05)
            return len(seen) >= count

        wait_for(step, timeout=5, interval=0, message="messages not consumed")

    drain(2)
    redis_client.config_resetstat()
    with kombu_connection.Producer() as producer:
        for i in range(5):
            producer.publish(i, routing_key="t.atomic")
            producer.publish(-i, routing_key="t.atomic.noack")
    drain(12)
    acked = [(body, recorded) for key, body, recorded in seen[2:] if key == "t.atomic"]
    quiet_seen = [(body, recorded) for key, body, recorded in seen[2:] if key != "t.atomic"]
    assert acked == [(i, True) for i in range(5)]
    assert sorted(quiet_seen) == [(-i, False) for i in reversed(range(5))]
    stats = redis_client.info("commandstats")
    assert stats.get("cmdstat_hset", {}).get("calls", 0) == 5  # the script's, once each
    assert redis_client.hlen(KOMBU_UNACKED) == redis_client.zcard(KOMBU_UNACKED_INDEX) == 0
    assert "cmdstat_brpop" not in stats
    # Idle: the fetches that find nothing wait longer and longer, never past the most.
    for _ in range(10):
        with contextlib.suppress(TimeoutError):
            kombu_connection.drain_events(timeout=0.05)
    assert channel._backoff == channel.fetch_backoff_max


def test_acks_and_rejects_while_redis_is_out_of_memory(kombu_connection, redis_client):
    """kombu acknowledges and rejects in a MULTI, which Redis refuses as a whole while it is
    out of memory (noeviction): the error reached Celery and stopped the worker
    ("Unrecoverable error", seen when a task ended just as memory ran out). The deletions
    alone are allowed: an ack or a reject removes the record and its index entry; a requeue,
    which cannot push, leaves the message recorded as unacknowledged (restored later, as after
    a crash). None of them raises."""
    channel = kombu_connection.default_channel
    queue = Queue("t.oom.ack", routing_key="t.oom.ack")
    got: list[Message] = []
    Consumer(channel, [queue], callbacks=[lambda body, message: got.append(message)]).consume()
    with kombu_connection.Producer() as producer:
        for body in ("ack", "reject", "requeue"):
            producer.publish(body, routing_key="t.oom.ack", declare=[queue])

    def step() -> bool:
        with contextlib.suppress(TimeoutError):
            kombu_connection.drain_events(timeout=0.05)
        return len(got) == 3

    wait_for(step, timeout=5, interval=0, message="the messages were not consumed")
    acked, rejected, requeued = got
    assert redis_client.hlen(KOMBU_UNACKED) == 3
    try:
        redis_client.config_set("maxmemory", 1)
        acked.ack()
        rejected.reject()
        requeued.reject(requeue=True)
    finally:
        redis_client.config_set("maxmemory", 0)
    assert redis_client.hkeys(KOMBU_UNACKED) == [requeued.delivery_tag]
    assert redis_client.zrange(KOMBU_UNACKED_INDEX, 0, -1) == [requeued.delivery_tag]
    assert redis_client.llen("t.oom.ack") == 0
    channel.qos.restore_by_tag(requeued.delivery_tag)  # what the sweep does after the timeout
    assert redis_client.llen("t.oom.ack") == 1
    assert redis_client.hlen(KOMBU_UNACKED) == 0


def test_worker_waits_out_an_out_of_memory_redis(
    start_control, start_agent, redis_url, redis_client, redis_server, tmp_path
):
    """Redis out of memory (maxmemory, noeviction): the control worker's fetch is refused and
    takes nothing; the worker logs it once, stays up, and runs the waiting submission by
    itself once memory is freed (kombu's HSET after its BRPOP killed it, message and all)."""
    if tuple(int(x) for x in redis_client.info("server")["redis_version"].split(".")[:2]) < (7, 0):
        pytest.skip("script flags (a refused fetch takes nothing) need Redis 7")
    runs = tmp_path / "runs"
    agent = start_agent("oom-a", "record_run")
    control = start_control()
    list_key, entry = submit_message(redis_url, "oom-1", runs)
    push = redis_client.register_script(PUSH_ALLOW_OOM)
    try:
        redis_client.config_set("maxmemory", 1)
        push(keys=[list_key], args=[entry])
        control.wait_for_log("Redis refused to hand out messages", timeout=15)
        start = time.monotonic()
        # Several refused fetches (one a second), one log line, the entry still queued.
        wait_for(lambda: time.monotonic() - start > 2.5, timeout=5, interval=0.5)
        assert control.alive and agent.alive
        assert control.log_text().count("Redis refused to hand out messages") == 1
        assert redis_client.lrange(list_key, 0, -1) == [entry]
        assert not runs.exists()
    finally:
        redis_client.config_set("maxmemory", 0)
    wait_for(
        lambda: runs.exists() and runs.read_text() == "oom-1\n",
        timeout=30,
        message="the submission did not run after memory was freed",
    )
    wait_for(lambda: redis_client.hget(task_key("oom-1"), "state") == "succeeded", timeout=15)
    control.wait_for_log("Redis hands out messages again", timeout=5)
    assert control.alive and agent.alive
    assert "Unrecoverable error" not in control.log_text() + agent.log_text()


# --- the idle wake ---------------------------------------------------------------------------

#: Channel.fetch_idle_poll: an idle worker Redis does not wake fetches this often all the same.
SAFETY_POLL_S = Channel.fetch_idle_poll
NOT_WOKEN = "Redis will not wake this worker"


def start_latencies(client: OrchestratorClient, path: Path, count: int) -> list[float]:
    """Sends `count` stamp_start tasks 300 ms apart to an idle agent; seconds from each send
    to its start (the handler's own clock reading, the same machine's). Task ids are named
    after `path`, so each batch needs a path of its own."""
    sent: dict[str, float] = {}
    for n in range(count):
        key = f"{path.name}-{n:03d}"
        sent[key] = time.time()
        client.submit("stamp_start", {"key": key, "path": str(path)}, task_id=key)
        time.sleep(0.3)  # the pace of the measurement: the agent is idle at each send

    def started() -> dict[str, str]:
        lines = path.read_text().splitlines() if path.exists() else []
        return dict(line.split() for line in lines)

    wait_for(
        lambda: len(started()) >= count,
        timeout=30,
        message=f"not every task started: {sorted(set(sent) - set(started()))} did not",
    )
    stamps = started()
    assert sorted(stamps) == sorted(sent)
    return [float(stamps[k]) - sent[k] for k in sent]


def test_an_idle_worker_is_woken_by_a_push(start_agent, redis_url, redis_client, tmp_path):
    """An idle agent starts each of 50 tasks sent 300 ms apart well within the safety poll
    (median under a quarter of it: fetching only at the safety poll gives about half), and
    while idle it fetches about once per safety poll, not every few milliseconds (each
    empty fetch is one EXISTS in Redis's command statistics); so again after its wake
    connection was killed."""
    agent = start_agent("wake-a", "stamp_start")
    stamps = tmp_path / "stamps"
    with OrchestratorClient(settings=load_settings(redis_url=redis_url)) as client:
        start_latencies(client, tmp_path / "warm-up", 1)
        redis_client.config_resetstat()
        start = time.monotonic()
        wait_for(lambda: time.monotonic() - start > 3 * SAFETY_POLL_S, timeout=10, interval=0.1)
        empty_fetches = redis_client.info("commandstats").get("cmdstat_exists", {}).get("calls", 0)
        latencies = start_latencies(client, stamps, 50)
        # Its wake connection dropped (killed here: the client its tracking redirects to):
        # the worker sets up another one and is woken as before.
        clients = redis_client.client_list()
        redirects = {c["redir"] for c in clients if int(c["redir"]) > 0}
        assert len(redirects) == 1, clients
        redis_client.client_kill_filter(_id=redirects.pop())
        again = start_latencies(client, tmp_path / "after-kill", 10)
    median = statistics.median(latencies)
    print(f"start latency median {median * 1e3:.1f} ms, {empty_fetches} empty fetches idle")
    assert median < SAFETY_POLL_S / 4, sorted(latencies)
    assert empty_fetches < 40  # about 3 (one a second); polling every 2-20 ms: about 150
    assert statistics.median(again) < SAFETY_POLL_S / 4, sorted(again)
    assert NOT_WOKEN not in agent.log_text()
    assert agent.alive


@pytest.fixture
def untracked_user(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[str]:
    """The URL of an ACL user that may do everything but ask Redis to track keys."""
    redis_client.acl_setuser(
        "untracked",
        enabled=True,
        passwords=["+untracked-pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-client|tracking"],
    )
    try:
        yield redis_server.url_as("untracked", "untracked-pw")
    finally:
        redis_client.acl_deluser("untracked")


def test_a_worker_redis_will_not_wake_polls_and_delivers_everything(
    start_agent, redis_url, redis_client, untracked_user, tmp_path
):
    """An agent whose ACL user may not use CLIENT TRACKING notes it once and polls instead:
    every task sent to it still runs, exactly once."""
    with (
        redis.Redis.from_url(untracked_user) as probe,
        pytest.raises(redis.exceptions.NoPermissionError),
    ):
        probe.execute_command("CLIENT", "TRACKING", "ON")
    agent = start_agent("poll-a", "stamp_start", ORCH_REDIS_URL=untracked_user)
    stamps = tmp_path / "stamps"
    with OrchestratorClient(settings=load_settings(redis_url=redis_url)) as client:
        latencies = start_latencies(client, stamps, 20)
    print(f"start latency median {statistics.median(latencies) * 1e3:.1f} ms (polling)")
    assert sorted(Counter(stamps.read_text().split()[::2]).values()) == [1] * 20
    assert agent.log_text().count(NOT_WOKEN) == 1
    assert agent.alive


# --- Redis killed and restarted under load ------------------------------------------------

KILLS = 5


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with AOF `everysec`, as production runs it. Redis may hold its AOF
    writes back for up to 2 s while an fsync is slow, still answering clients, so on a loaded
    machine a SIGKILL can lose what it acknowledged: the test using it is a chaos run."""
    workdir = tmp_path / "aof-redis"
    workdir.mkdir()
    server = RedisServer(
        workdir=workdir, extra_args=["--appendonly", "yes", "--appendfsync", "everysec"]
    ).start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.chaos  # Redis SIGKILLed five times under load: run alone, by make test-chaos
def test_no_fetched_message_is_lost_when_redis_is_killed(aof_redis, celery_procs, tmp_path):
    """Redis is SIGKILLed and restarted from its AOF five times while a plain Celery producer
    sends `orchestrator.submit` by name and a client routes submissions itself. Every
    submission Redis acknowledged ends succeeded, and its handler ran exactly once (counted
    in a file, outside Redis)."""
    runs = tmp_path / "runs"
    env = chaos_env(aof_redis.url)
    control = celery_procs(worker_args("control", 2), env, name="control")
    agent_env = {**env, "ORCH_AGENT_ID": "af-a", "ORCH_AGENT_CAPABILITIES": "record_run"}
    agent = celery_procs(
        worker_args("af-a", 3), {**agent_env, "ORCH_HANDLERS": "tests.handlers"}, name="af-a"
    )
    # Beat, as every deployment runs it: its recovery monitor routes again a task whose
    # message a kill lost after the dispatch was recorded, and its dispatch sweep fills free
    # slots from the backlog.
    celery_procs(["beat", "-l", "info", "-s", str(tmp_path / "beat-schedule")], env, name="beat")
    control.wait_for_log("ready.", timeout=60)
    agent.wait_for_log("ready.", timeout=60)

    acknowledged: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def payload(key: str) -> dict[str, Any]:
        return {"key": key, "path": str(runs)}

    def by_name() -> None:
        producer = Celery(broker=aof_redis.url, backend=aof_redis.url)
        producer.conf.broker_connection_retry_on_startup = True
        try:
            n = 0
            while not stop.is_set():
                key = f"name-{n:04d}"
                n += 1
                try:
                    producer.send_task(
                        "orchestrator.submit",
                        kwargs={"type": "record_run", "payload": payload(key), "task_id": key},
                        retry=False,
                    )
                except Exception:
                    refused.append(key)
                else:
                    acknowledged.append(key)
                time.sleep(0.002)
        finally:
            producer.close()

    def routed() -> None:
        with OrchestratorClient(settings=load_settings(redis_url=aof_redis.url)) as client:
            n = 0
            while not stop.is_set():
                key = f"routed-{n:04d}"
                n += 1
                try:
                    client.submit("record_run", payload(key), task_id=key)
                except Exception:
                    refused.append(key)
                else:
                    acknowledged.append(key)
                time.sleep(0.002)

    producers = [threading.Thread(target=f, daemon=True) for f in (by_name, routed)]
    for thread in producers:
        thread.start()
    with redis.Redis.from_url(aof_redis.url, decode_responses=True) as r:
        try:
            for _ in range(KILLS):
                before = len(acknowledged)
                wait_for(lambda b=before: len(acknowledged) >= b + 100, timeout=20)
                aof_redis.kill()
                time.sleep(0.3)  # down: what was in flight fails (a fault, not a wait)
                aof_redis.restart()
            wait_for(lambda: len(acknowledged) >= 20, timeout=20)
        finally:
            stop.set()
            for thread in producers:
                thread.join(timeout=30)

        def unsettled() -> dict[str, str | None]:
            states = {k: r.hget(task_key(k), "state") for k in acknowledged}
            return {k: s for k, s in states.items() if s != "succeeded"}

        try:
            wait_for(
                lambda: not unsettled(),
                timeout=60,
                interval=0.5,
                ignore=(redis.ConnectionError,),
                message="acknowledged submissions did not all succeed",
            )
        except AssertionError as exc:
            left = unsettled()
            sample = dict(list(left.items())[:5])
            raise AssertionError(f"{exc}: {len(left)} left, e.g. {sample}") from None
        counts = Counter(runs.read_text().split())
        assert {k: counts[k] for k in acknowledged if counts[k] != 1} == {}
        # A submission whose answer was lost may have got in after all: never twice.
        assert [k for k, c in counts.items() if c > 1] == []
        print(f"{len(acknowledged)} acknowledged, {len(refused)} refused, {KILLS} kills")
    assert control.alive and agent.alive
