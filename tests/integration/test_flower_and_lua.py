"""Flower as a submission path and a monitor; the Lua round-robin agrees with the pure one."""

from __future__ import annotations

import base64
import json
import random
import re
import socket
import time
import urllib.request

import pytest

from orchestrator.routing.weights import wrr_step
from orchestrator.store import StateStore
from tests.integration.conftest import LOOP_INTERVALS
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration


def _http(url: str, auth: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


#: Every loop beat schedules, each second or two: their runs must not show in Flower.
FAST_LOOPS = {**LOOP_INTERVALS, "ORCH_RECOVERY_MONITOR_INTERVAL_S": "1"}


def test_submit_through_flowers_http_api_and_flower_shows_the_work_by_type(
    celery_procs, orch_env, start_control, start_agent, client
):
    start_control(**FAST_LOOPS)
    celery_procs(["beat", "-l", "info"], {**orch_env, **FAST_LOOPS}, name="beat")
    start_agent("a", "echo,sleep")
    start_agent("b", "echo")
    port, auth = free_port(), "ops:secret"
    flower = celery_procs(
        ["flower", f"--port={port}", "--address=127.0.0.1"],
        {**orch_env, "FLOWER_BASIC_AUTH": auth},
        name="flower",
    )
    flower.wait_for_log("Visit me at", timeout=60)
    base = f"http://127.0.0.1:{port}"

    with pytest.raises(urllib.error.HTTPError) as denied:
        _http(f"{base}/api/workers", "ops:wrong")
    assert denied.value.code == 401
    denied.value.close()

    # Flower's worker list (remote-control replies) names every agent and the control worker.
    host = socket.gethostname()
    everyone = {f"control@{host}", f"a@{host}", f"b@{host}"}
    wait_for(
        lambda: everyone <= set(_http(f"{base}/api/workers?refresh=1", auth)),
        timeout=60,
        ignore=(OSError,),
        message=f"Flower's /api/workers never listed all of {sorted(everyone)}",
    )

    send = f"{base}/api/task/send-task/orchestrator.submit"
    reply = _http(send, auth, {"kwargs": {"type": "echo", "payload": {"via": "flower"}}})
    assert client.result(reply["task-id"]).get(timeout=30) == {"via": "flower"}
    # With the client's own task_id, the message's id tells the same outcome.
    own = _http(send, auth, {"kwargs": {"type": "echo", "task_id": "flower-1"}})
    assert client.result("flower-1").get(timeout=30) == {}
    assert client.result(own["task-id"]).get(timeout=30) == {}
    slept = client.submit("sleep", {"seconds": 0.01})
    slept.get(timeout=30)
    time.sleep(3)  # every loop has run a few times

    def tasks() -> dict[str, dict]:
        return _http(f"{base}/api/tasks", auth)

    # One task per submission, named by its type and with its agent; no loop, no submit hop.
    expected = {reply["task-id"]: "echo", "flower-1": "echo", slept.id: "sleep"}
    wait_for(
        lambda: {k: t.get("name") for k, t in tasks().items()} == expected,
        timeout=30,
        message="Flower did not show the work by type",
    )
    assert tasks()[slept.id]["worker"] == f"a@{host}"
    # Flower's own event counter counts the users' work only.
    scrape = urllib.request.Request(f"{base}/metrics")
    scrape.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(scrape, timeout=10) as response:
        metrics = response.read().decode()
    counted = set(re.findall(r'^flower_events_total\{[^}]*task="([^"]*)"', metrics, re.M))
    assert counted == {"echo", "sleep"}, metrics

    # Each agent runs a Celery task per type it offers: listed, and rate-limited per type.
    inspect = client.app.control.inspect(destination=[f"a@{host}"], timeout=5)
    registered = inspect.registered()[f"a@{host}"]
    assert {"echo", "sleep", "orchestrator.execute"} <= set(registered)
    replies = client.app.control.rate_limit(
        "sleep", "600/m", destination=[f"a@{host}"], reply=True, timeout=5
    )
    assert "ok" in replies[0][f"a@{host}"], replies
    assert client.submit("sleep", {"seconds": 0.01}).get(timeout=30) == {"slept": 0.01}


@pytest.mark.parametrize("seed", range(3))
def test_lua_round_robin_matches_the_pure_step(seed, redis_url):
    """The store's atomic Lua pick is the same algorithm as routing.wrr_step, tie-breaks too,
    including when the eligible set changes between picks."""
    store = StateStore.from_url(redis_url)
    rng = random.Random(seed)
    peers = [f"agent-{i}" for i in range(6)]
    state: dict[str, int] = {}
    try:
        for _ in range(200):
            chosen = rng.sample(peers, rng.randint(1, len(peers)))
            weights = {p: rng.choice([1, 250, 500, 1000]) for p in chosen}
            expected, state = wrr_step(state, weights)
            assert store.wrr_pick("echo", weights) == expected
            assert store.wrr_state("echo") == state
    finally:
        store.r.close()


def test_round_robin_state_of_the_older_layout_is_replaced_not_misread(redis_url):
    """Before, the state was one hash field per agent; a router of this version meeting such
    a hash starts the sequence afresh instead of failing or keeping the old fields."""
    store = StateStore.from_url(redis_url)
    try:
        store.r.hset("orch:wrr:echo", mapping={"a": 5, "b": -3})
        weights = {"a": 5, "b": 1, "c": 1}
        picks = [store.wrr_pick("echo", weights) for _ in range(7)]
        assert picks == list("aabacaa")  # smooth WRR: 5:1:1 runs a a b a c a a
        assert store.wrr_state("echo") == {"a": 0, "b": 0, "c": 0}
        assert not {"a", "b"} & set(store.r.hkeys("orch:wrr:echo"))  # the old fields went
        # The layout before this one (ids, and `current` as one MessagePack array) carries on.
        store.r.delete("orch:wrr:echo")
        store.r.hset(
            "orch:wrr:echo", mapping={"d": "x", "ids": '["a","b","c"]', "cur": b"\x93\x03\xfe\xff"}
        )
        state = {"a": 3, "b": -2, "c": -1}
        expected, state = wrr_step(state, weights)
        assert store.wrr_pick("echo", weights) == expected
        assert store.wrr_state("echo") == state
    finally:
        store.r.close()
