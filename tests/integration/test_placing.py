"""A new task accepted, picked and routed in one atomic step (store.accept_and_place).

Against a real redis-server: the pick follows the shared smooth weighted round-robin exactly
(routing.weights.wrr_step), the message built for a stand-in reaches the picked agent's list
with the agent's id in it, the ledger, history and event name the agent, and with every
agent full the task waits in the backlog without advancing the sequence.
"""

from __future__ import annotations

import json
import time

import pytest

from orchestrator.config import load_settings
from orchestrator.models import RegisteredAgent, TaskState, parse_task
from orchestrator.routing.weights import wrr_step
from orchestrator.store import Acceptance, Settlement, StateStore, WrrPeers
from orchestrator.store.codes import AcceptStatus
from orchestrator.store.keys import INFLIGHT_PREFIX, history_key, task_key

pytestmark = pytest.mark.integration

STAND_IN = "orch-stand-in-0123abcd"


def place(store: StateStore, task_id: str, peers: WrrPeers, submit: str = ""):
    task = parse_task({"type": "echo", "task_id": task_id}, 1 << 20)
    pushes = [
        (
            f"agent.{STAND_IN}\x06\x163",
            json.dumps({"id": task_id, "routing_key": f"agent.{STAND_IN}", "x": STAND_IN * 2}),
        )
    ]
    return store.accept_and_place(
        Acceptance(task, submit or f"submit-{task_id}", 1000.0),
        peers=peers,
        stand_in=stand_in(),
        pushes=pushes,
    )


def test_the_pick_made_with_the_acceptance_follows_the_shared_sequence(redis_url):
    store = StateStore.from_url(redis_url)
    weights = {"a@h": 5, "b@h": 1, "c.2": 2}
    peers = WrrPeers.of(weights, {p: 100 for p in weights})
    state: dict[str, int] = {}
    picks = []
    try:
        for i in range(24):
            expected, state = wrr_step(state, weights)
            picks.append(expected)
            status, agent = place(store, f"t{i}", peers)
            assert (status, agent) == (AcceptStatus.ROUTED, expected)
            assert store.wrr_state("echo") == state
            ledger = store.r.hgetall(task_key(f"t{i}"))
            assert (ledger["state"], ledger["agent"], ledger["dispatch"]) == (
                "routed",
                expected,
                "1",
            )
            assert store.r.sismember(f"{INFLIGHT_PREFIX}{expected}", f"t{i}")
            entry = json.loads(store.r.lindex(history_key(f"t{i}"), -1))
            assert (entry["state"], entry["agent"]) == ("routed", expected)
            pushed = json.loads(store.r.lindex(f"agent.{expected}\x06\x163", 0))
            assert pushed == {"id": f"t{i}", "routing_key": f"agent.{expected}", "x": expected * 2}
        routed = store.read_events(types=("task.routed",))
        assert [e.data["agent_id"] for e in routed] == picks
    finally:
        store.r.close()


def test_with_every_agent_full_the_task_waits_and_the_sequence_stays(redis_url):
    store = StateStore.from_url(redis_url)
    weights = {"a": 3, "b": 1}
    peers = WrrPeers.of(weights, {"a": 1, "b": 1})
    try:
        assert place(store, "t1", peers)[0] is AcceptStatus.ROUTED
        assert place(store, "t2", peers)[0] is AcceptStatus.ROUTED
        before = store.wrr_state("echo")
        assert place(store, "t3", peers) == (AcceptStatus.QUEUED, "")
        assert store.wrr_state("echo") == before
        assert store.r.hget(task_key("t3"), "state") == "queued"
        assert store.r.llen("agent.a\x06\x163") + store.r.llen("agent.b\x06\x163") == 2
        # a submission of an id already accepted changes nothing and pushes nothing
        assert place(store, "t1", peers, submit="another")[0] is AcceptStatus.DUPLICATE
        assert store.wrr_state("echo") == before
    finally:
        store.r.close()


def register(store: StateStore, agent_id: str, handler_tasks: bool = True) -> None:
    agent = RegisteredAgent(
        agent_id=agent_id,
        capabilities={"echo": 1.0},
        queue=f"agent.{agent_id}",
        concurrency=1,
        handler_tasks=handler_tasks,
    )
    store.register_agent(agent, now=time.time(), source="test")


def stand_in(handler_tasks: bool = True) -> RegisteredAgent:
    return RegisteredAgent(
        agent_id=STAND_IN,
        capabilities={},
        queue=f"agent.{STAND_IN}",
        handler_tasks=handler_tasks,
    )


@pytest.mark.parametrize("older_agent", [False, True], ids=["by-type", "older-agent"])
def test_a_task_that_waited_from_its_submission_is_pushed_by_the_fill(redis_url, older_agent):
    """Queued at its submission (every agent full), a task keeps the message its submitter
    built; the settle that frees a slot pushes it for its agent in the same step, so the
    agent builds and publishes nothing. An agent that does not run handler tasks by type
    (an earlier version) gets it from its caller instead, named as it runs it."""
    store = StateStore.from_url(redis_url)
    store.configure(load_settings(redis_url=redis_url, agent_prefetch=0, _env_file=None))
    register(store, "a", handler_tasks=not older_agent)
    peers = WrrPeers.of({"a": 1}, {"a": 1})
    now = time.time()

    def submit(task_id: str) -> tuple[AcceptStatus, str]:
        task = parse_task({"type": "echo", "task_id": task_id}, 1 << 20)
        pushes = [(f"agent.{STAND_IN}\x06\x163", json.dumps({"id": task_id, "q": STAND_IN}))]
        return store.accept_and_place(
            Acceptance(task, f"m-{task_id}", now), peers=peers, stand_in=stand_in(), pushes=pushes
        )

    try:
        assert submit("first") == (AcceptStatus.ROUTED, "a")
        assert submit("waits") == (AcceptStatus.QUEUED, "")
        assert store.r.hget(task_key("waits"), "pm") is not None
        store.r.hset(task_key("first"), "state", "running")
        done, fills = store.settle_run(
            Settlement("first", "a", TaskState.SUCCEEDED, now + 1, 5.0, "echo", {})
        )
        assert done
        ledger = store.r.hgetall(task_key("waits"))
        assert (ledger["state"], ledger["agent"], ledger["dispatch"]) == ("routed", "a", "1")
        assert "pm" not in ledger, "the kept message is dropped once dispatched"
        queued = [json.loads(m) for m in store.r.lrange("agent.a\x06\x163", 0, -1)]
        if older_agent:
            assert [f.task.task_id for f in fills] == ["waits"]
            assert queued == [{"id": "first", "q": "a"}]
        else:
            assert fills == []
            assert queued == [{"id": "waits", "q": "a"}, {"id": "first", "q": "a"}]
    finally:
        store.r.close()
