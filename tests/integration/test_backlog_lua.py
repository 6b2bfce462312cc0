"""The backlog's Lua steps (enqueue, fill, settle) agree with the pure model, step by step.

Random sequences of submissions, fills, settles and cancellations run through StateStore
against a real redis-server and, in lockstep, through orchestrator.routing.backlog.Backlog.
Every task a fill or a settle dispatches must be the one the model takes next (where the model
sees two capability sets tied on priority and tag, Redis's set order decides, and either is
accepted: the model then takes the one Redis took), and after every step the backlog counts,
the concurrency keys, the agents' in-flight sets and the clients' virtual times must match.
Invariants: no task dispatched twice, none lost, never more holders of a key than its limit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.config import load_settings
from orchestrator.models import OrchestrationTask, RegisteredAgent, TaskState
from orchestrator.routing.backlog import Backlog, best
from orchestrator.store import Acceptance, Dispatched, Settlement, StateStore
from orchestrator.store.keys import FAIR_VT, INFLIGHT_PREFIX

pytestmark = pytest.mark.integration

#: agent id -> (capabilities, concurrency); each also has ORCH_AGENT_PREFETCH (1) more slots.
AGENTS = {"ag-x": (["x"], 1), "ag-xy": (["x", "y"], 2), "ag-yz": (["y", "z"], 1)}
SETS = (["x"], ["y"], ["x", "y"], ["z"], ["y", "z"])
CLIENTS = ("c1", "c2", "c3", "c4")
#: Concurrency key -> its limit (every task of a key submits the same one: a lowered limit
#: leaves the holders admitted under the older one until they end).
KEYS = {"k1": 1, "k2": 2}


def close(a: float, b: float) -> bool:
    """Equal but for the last bits: HINCRBYFLOAT adds in long double, Python in double."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@dataclass
class Lockstep:
    """The store and the model, driven together; every check the test makes."""

    store: StateStore
    model: Backlog
    now: float = 1_000_000.0
    beat: float = 1_000_000.0
    inflight: dict[str, set[str]] = field(default_factory=dict)
    dispatched: dict[str, str] = field(default_factory=dict)  # task id -> agent
    submitted: dict[str, OrchestrationTask] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    ties: int = 0  # dispatches the model saw as a tie Redis's set order broke

    @classmethod
    def start(cls, redis_url: str, **settings: Any) -> Lockstep:
        loaded = load_settings(redis_url=redis_url, _env_file=None, **settings)
        store = StateStore.from_settings(loaded)
        cfg = store.dispatch_config
        step = cls(store, Backlog(weights=dict(cfg.weights)))
        for agent_id, (caps, concurrency) in AGENTS.items():
            agent = RegisteredAgent(
                agent_id=agent_id,
                capabilities=dict.fromkeys(caps, 1.0),
                queue=f"agent.{agent_id}",
                concurrency=concurrency,
                registered_at=step.now,
            )
            store.register_agent(agent, step.now, "test")
            store.heartbeat(agent_id, step.now)
            step.inflight[agent_id] = set()
        return step

    def close(self) -> None:
        self.store.r.close()

    def tick(self) -> None:
        """Time moves on; every agent beats often enough to stay fresh."""
        self.now += 0.01
        if self.now - self.beat >= 2.0:
            self.beat = self.now
            for agent_id in AGENTS:
                self.store.heartbeat(agent_id, self.now)

    def free(self, agent_id: str) -> int:
        _caps, concurrency = AGENTS[agent_id]
        return concurrency + self.store.dispatch_config.prefetch - len(self.inflight[agent_id])

    # --- the steps ------------------------------------------------------------------------

    def submit(
        self,
        task_id: str,
        caps: list[str],
        priority: int,
        client: str,
        key: str | None = None,
        limit: int | None = None,
    ) -> None:
        task = OrchestrationTask(
            task_id=task_id,
            type="echo",
            required_capabilities=caps,
            priority=priority,
            client_id=client,
            concurrency_key=key,
            concurrency_limit=limit if key else None,
        )
        status, _ = self.store.accept(Acceptance(task, f"submit-{task_id}", self.now))
        assert status == "new"
        assert self.store.enqueue(task, now=self.now)
        cfg = self.store.dispatch_config
        self.model.enqueue(
            task_id,
            set_key=task.capability_key,
            priority=priority,
            client=cfg.client(task),
            now=self.now,
            key=key,
            limit=cfg.limit(task),
        )
        self.submitted[task_id] = task

    def fill(self, agent_id: str, limit: int | None = None) -> list[str]:
        free = self.free(agent_id)
        if limit is not None:
            free = min(free, limit)
        got = self.store.fill(agent_id, now=self.now, limit=limit)
        return self.follow(agent_id, got, free)

    def settle(self, agent_id: str, task_id: str, ran_ms: int) -> list[str]:
        done, fills = self.store.settle_run(
            Settlement(task_id, agent_id, TaskState.SUCCEEDED, self.now, float(ran_ms), "echo", {})
        )
        assert done
        self.model.settle(task_id, ran_ms / 1000.0)
        self.inflight[agent_id].discard(task_id)
        self.ended.add(task_id)
        return self.follow(agent_id, fills, self.free(agent_id))

    def cancel(self, task_id: str) -> None:
        """A waiting task ends (a cancellation): out of its list or its key's waiting list."""
        assert self.store.finish(
            task_id, state=TaskState.FAILED, agent_id=None, now=self.now, error="cancelled"
        )
        self.model.end(task_id)
        self.ended.add(task_id)

    def follow(self, agent_id: str, got: list[Dispatched], free: int) -> list[str]:
        """The model takes what the Lua took, checking each is its next; fewer than `free`
        only when the model has nothing left the agent can take."""
        caps = AGENTS[agent_id][0]
        assert len(got) <= max(free, 0)
        out = []
        for d in got:
            task_id = d.task.task_id
            assert task_id is not None
            assert task_id not in self.dispatched, f"{task_id} dispatched twice"
            head = self.expect(caps, task_id)
            taken = self.model.pop(head)
            assert taken is not None and taken.task_id == task_id
            self.dispatched[task_id] = agent_id
            self.inflight[agent_id].add(task_id)
            out.append(task_id)
        if len(got) < free:
            assert self.model.heads(caps) == [], f"{agent_id} left waiting tasks it can take"
        return out

    def expect(self, caps: Collection[str], task_id: str) -> Any:
        """The model's head the Lua's dispatch of `task_id` corresponds to."""
        tops = self.model.tops(caps)
        chosen = best(self.model.heads(caps))
        assert chosen is not None, f"Lua dispatched {task_id}; the model has nothing waiting"
        tied = [h for h in tops if h.priority == chosen.priority and close(h.tag, chosen.tag)]
        match = [h for h in tied if self.model.head_task(h) == task_id]
        assert match, (
            f"Lua dispatched {task_id}; the model's next: "
            f"{[(h, self.model.head_task(h)) for h in tied]}"
        )
        if self.model.head_task(chosen) != task_id:
            self.ties += 1
        return match[0]

    # --- the checks -----------------------------------------------------------------------

    def check(self) -> None:
        r = self.store.r
        assert self.store.backlog_count() == self.model.count()
        keys = self.store.concurrency_keys()
        assert keys == self.model.concurrency_keys()
        for key, (limit, holders, _waiting) in keys.items():
            assert holders <= limit, f"{holders} hold {key} (limit {limit})"
        for agent_id, held in self.inflight.items():
            assert r.smembers(INFLIGHT_PREFIX + agent_id) == held
        vts = {c: float(v) for c, v in r.hgetall(FAIR_VT).items()}
        assert vts.keys() == self.model.vt.keys()
        for client, vt in vts.items():
            assert close(vt, self.model.vt[client]), (client, vt, self.model.vt[client])

    def waiting(self) -> list[str]:
        return [t for t in self.submitted if t not in self.dispatched and t not in self.ended]

    def drain(self, rng: random.Random) -> None:
        """Settle everything in flight (filling as the settle step does) until nothing is
        left; then every task ran exactly once or was cancelled while it waited."""
        for _ in range(10_000):
            running = [(a, t) for a, held in self.inflight.items() for t in sorted(held)]
            if not running:
                for agent_id in AGENTS:
                    self.fill(agent_id)
                if not any(self.inflight.values()):
                    break
                continue
            agent_id, task_id = rng.choice(running)
            self.tick()
            self.settle(agent_id, task_id, rng.randint(1, 4000))
            self.check()
        assert self.waiting() == [], "tasks lost: never dispatched"
        assert set(self.dispatched) | self.ended == set(self.submitted)
        assert self.store.backlog_count() == {}
        assert self.store.concurrency_keys() == {}


@pytest.fixture
def lockstep(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Lockstep]:
    params = getattr(request, "param", {})
    step = Lockstep.start(redis_url, **params)
    try:
        yield step
    finally:
        step.close()


def run_random(step: Lockstep, seed: int, ops: int = 300) -> None:
    rng = random.Random(seed)
    serial = 0
    for _ in range(ops):
        step.tick()
        roll = rng.random()
        if roll < 0.45:
            serial += 1
            key = rng.choice(list(KEYS)) if rng.random() < 0.3 else None
            step.submit(
                f"t{seed}-{serial:04d}",
                list(rng.choice(SETS)),
                rng.choice((1, 5, 5, 9)),
                rng.choice(CLIENTS),
                key,
                KEYS[key] if key else None,
            )
        elif roll < 0.65:
            step.fill(rng.choice(list(AGENTS)), rng.choice((None, 1, 2)))
        elif roll < 0.95:
            running = [(a, t) for a, held in step.inflight.items() for t in sorted(held)]
            if running:
                agent_id, task_id = rng.choice(running)
                step.settle(agent_id, task_id, rng.randint(1, 4000))
        else:
            waiting = step.waiting()
            if waiting:
                step.cancel(rng.choice(waiting))
        step.check()
    step.drain(rng)


@pytest.mark.parametrize("seed", range(4))
def test_lua_follows_the_model(lockstep: Lockstep, seed: int) -> None:
    run_random(lockstep, seed)
    assert len(lockstep.dispatched) > 50


@pytest.mark.parametrize(
    "lockstep",
    [{"client_weights": {"c1": 2.0, "c3": 0.5}}, {"fair_share": "off"}],
    indirect=True,
    ids=["weights", "fair-share-off"],
)
@pytest.mark.parametrize("seed", [11, 12])
def test_lua_follows_the_model_with_weights_or_without_fair_share(
    lockstep: Lockstep, seed: int
) -> None:
    run_random(lockstep, seed)
    assert len(lockstep.dispatched) > 50


def test_key_limit_two_in_lua(lockstep: Lockstep) -> None:
    """Keyed tasks over their limit hold back none of the unkeyed ones behind them."""
    for i in range(4):
        lockstep.submit(f"k{i}", ["x"], 5, "c1", "K", 2)
    for i in range(3):
        lockstep.submit(f"u{i}", ["x"], 5, "c1")
    lockstep.check()
    assert lockstep.store.concurrency_keys() == {"K": (2, 2, 2)}
    assert lockstep.fill("ag-xy") == ["k0", "k1", "u0"]
    assert lockstep.fill("ag-x") == ["u1", "u2"]
    lockstep.check()
    assert lockstep.settle("ag-xy", "k0", 500) == ["k2"]
    lockstep.check()
    assert lockstep.settle("ag-x", "u1", 500) == []
    assert lockstep.settle("ag-xy", "k1", 500) == ["k3"]
    lockstep.check()
    lockstep.drain(random.Random(0))


# --- edges the Lua once got wrong: a lost permit, fair:v moving back, age across sets, restore --


def test_a_parked_keyed_task_waiting_for_a_permit_is_not_lost(lockstep: Lockstep) -> None:
    lockstep.submit("holder", ["x"], 5, "c1", "K", 1)
    assert lockstep.fill("ag-x") == ["holder"]
    parked = OrchestrationTask(
        task_id="parked", type="echo", required_capabilities=["w"], concurrency_key="K"
    )
    lockstep.store.accept(Acceptance(parked, "submit-parked", lockstep.now))
    assert lockstep.store.park(parked, now=lockstep.now)
    assert lockstep.store.concurrency_keys() == {"K": (1, 1, 1)}
    lockstep.store.settle_run(
        Settlement("holder", "ag-x", TaskState.SUCCEEDED, lockstep.now, 5.0, "echo", {})
    )
    # The permit is free: the parked task holds it and waits in the backlog for a `w` agent.
    assert lockstep.store.concurrency_keys() == {"K": (1, 1, 0)}
    assert lockstep.store.backlog_count() == {"w": 1}


@pytest.mark.parametrize("lockstep", [{"agent_prefetch": 0}], indirect=True)
def test_a_new_client_gets_no_credit_from_another_sets_virtual_time(
    lockstep: Lockstep,
) -> None:
    """One slot per agent. cx runs 5 tasks on ag-x; then ag-yz takes cz's first task (tag
    0); then cnew starts waiting beside cx."""
    for i in range(10):
        lockstep.submit(f"x{i}", ["x"], 5, "cx")
        lockstep.submit(f"z{i}", ["z"], 5, "cz")
    assert lockstep.fill("ag-x") == ["x0"]
    for i in range(4):
        assert lockstep.settle("ag-x", f"x{i}", 1000) == [f"x{i + 1}"]
    assert lockstep.fill("ag-yz") == ["z0"]  # tag 0: fair:v goes back from 4 to 0
    for i in range(5):
        lockstep.submit(f"new{i}", ["x"], 5, "cnew")
    starts = lockstep.settle("ag-x", "x4", 1000)
    for _ in range(5):
        starts += lockstep.settle("ag-x", starts[-1], 1000)
    # cx had run 5 tasks when cnew came: cnew starts level with cx, and they alternate.
    assert sum(1 for t in starts if t.startswith("x")) >= 2, starts


@pytest.mark.parametrize("lockstep", [{"fair_share": "off"}], indirect=True)
def test_fair_share_off_is_oldest_first_across_capability_sets(lockstep: Lockstep) -> None:
    for i in range(3):
        lockstep.submit(f"a{i}", ["x"], 5, "c1")
        lockstep.tick()
    assert lockstep.fill("ag-xy", 1) == ["a0"]
    lockstep.submit("b0", ["y"], 5, "c2")  # the newest
    started = lockstep.fill("ag-xy", 2)
    started += lockstep.settle("ag-xy", "a0", 100)
    assert started == ["a1", "a2", "b0"]


def test_a_restore_of_a_waiting_task_does_not_queue_it_twice(lockstep: Lockstep) -> None:
    lockstep.submit("t", ["x"], 5, "c1")
    assert lockstep.store.enqueue(lockstep.submitted["t"], now=lockstep.now, source="restore")
    assert lockstep.store.backlog_count() == {"x": 1}
