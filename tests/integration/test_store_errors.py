"""Redis's error replies reach a client as named orchestrator errors, never a raw ResponseError.

Against a real redis-server: a key of the wrong type planted where a Lua step or a plain
command writes, a Lua step failing on a value it cannot read, and a Redis at its memory limit
(maxmemory). Each surfaces as StoreError (naming the step) or StoreUnavailable (naming
maxmemory), and the `orchestrator` command prints it as one line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import load_settings
from orchestrator.errors import StoreError, StoreUnavailable
from orchestrator.models import RegisteredAgent
from orchestrator.store import StateStore
from orchestrator.store.keys import AGENT_STATUS, QUARANTINED_UNTIL, history_key, task_key
from tests.support import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def orch(redis_url: str) -> Iterator[OrchestratorClient]:
    with OrchestratorClient(settings=load_settings(redis_url=redis_url)) as client:
        agent = RegisteredAgent(agent_id="a", capabilities={"echo": 1.0}, queue="agent.a")
        client.store.register_agent(agent, now=client.store.r.time()[0], source="test")
        yield client


def test_a_wrong_type_key_under_a_lua_step_is_a_store_error_naming_it(orch, redis_client):
    redis_client.set(history_key("w-1"), "not a list")
    with pytest.raises(StoreError) as caught:
        orch.submit("echo", {}, task_id="w-1")
    said = str(caught.value)
    assert "step 'accept_and_place' (Lua script accept_and_route)" in said
    assert "WRONGTYPE" in said and "start one" in said
    assert not isinstance(caught.value, redis.ResponseError)
    assert isinstance(caught.value.__cause__, redis.ResponseError)


def test_a_wrong_type_key_under_a_plain_read_is_a_store_error(orch, redis_client, orch_env):
    redis_client.set(task_key("w-2"), "not a hash")
    with pytest.raises(StoreError, match=r"step 'task_record'.*WRONGTYPE.*older.*layout"):
        orch.task("w-2")
    done = cli(orch_env, "task", "w-2", "--json", check=False)
    assert done.returncode == 1
    assert "Redis state store refused step 'task_record'" in done.stderr
    assert "Traceback" not in done.stderr and "ResponseError" not in done.stderr


def test_a_lua_steps_own_error_is_a_store_error_naming_the_script(redis_url, redis_client):
    redis_client.hset(AGENT_STATUS, "a", "quarantined")
    redis_client.hset(QUARANTINED_UNTIL, "a", "soon")  # not a number: the script fails
    store = StateStore.from_settings(load_settings(redis_url=redis_url))
    try:
        with pytest.raises(StoreError, match=r"step 'heartbeat' \(Lua script heartbeat\)"):
            store.heartbeat("a", 1000.0)
    finally:
        store.r.close()


def test_a_redis_at_its_memory_limit_is_store_unavailable_naming_maxmemory(redis_url, redis_client):
    store = StateStore.from_settings(load_settings(redis_url=redis_url))
    redis_client.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable, match=r"memory is at its limit \(maxmemory\)"):
            store.heartbeat("a", 1000.0)  # a Lua step
        with (
            pytest.raises(StoreUnavailable, match=r"step 'singleton'.*\(maxmemory\)"),
            store.singleton("oom-test", 5.0),
        ):
            pass
    finally:
        redis_client.config_set("maxmemory", "0")
        store.r.close()
