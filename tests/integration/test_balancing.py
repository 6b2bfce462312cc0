"""Each balancing algorithm and affinity, proven through real routers.

The cluster tests route through both kinds of router: the client's own (OrchestratorClient
routes in this process) and a control worker's (`orchestrator.submit` sent by name), with
ORCH_LOAD_BALANCING_ALGORITHM set on both, and read each task's agent from the ledger. The
agents are real `celery worker` processes with different proficiencies; `hold` keeps an agent
busy (its in-flight count up) for as long as a test needs. The last two tests drive the
store's atomic affinity step directly: against the pure rule, and two routers racing.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from orchestrator.client import OrchestratorClient
from orchestrator.config import Settings, load_settings
from orchestrator.routing.weights import follow_affinity, is_eligible, wrr_step
from orchestrator.store import StateStore
from orchestrator.store.keys import affinity_key
from tests.support import CeleryProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ALGORITHM = "ORCH_LOAD_BALANCING_ALGORITHM"
#: Every agent here has room for 1,000 waiting tasks: these tests are about each algorithm's
#: choice below saturation (a held task keeps its agent's in-flight count up, never its
#: slots full). Dispatch at saturation is test_dispatch's.
BELOW_SATURATION = {"ORCH_AGENT_PREFETCH": "1000"}
HOLD_MAX_S = 120  # a held task lets go by itself after this, should a test die midway
STARTED = ("routed", "running", "succeeded")


@dataclass
class Routers:
    """The two ways into the cluster, both with the cluster's algorithm and timings."""

    client: OrchestratorClient
    redis: redis.Redis

    @property
    def settings(self) -> Settings:
        return self.client.settings

    def local(self, type_: str, task_id: str, payload: dict[str, Any] | None = None, **kw: Any):
        """Routed here, by the client's own router; returns once the task is routed."""
        return self.client.submit(type_, payload or {}, task_id=task_id, **kw)

    def by_name(self, type_: str, task_id: str, payload: dict[str, Any] | None = None, **kw: Any):
        """Sent by name to `orchestrator.submit`; a control worker's router routes it."""
        kwargs = {"type": type_, "payload": payload or {}, "task_id": task_id, **kw}
        return self.client.app.send_task("orchestrator.submit", kwargs=kwargs)

    def agents_of(self, ids: Sequence[str], states: Sequence[str] = ("succeeded",)) -> list[str]:
        """Each task's agent, once every one of them is in one of `states`."""

        def read() -> list[str] | None:
            pipe = self.redis.pipeline(transaction=False)
            for task_id in ids:
                pipe.hmget(f"orch:task:{task_id}", "state", "agent")
            rows = pipe.execute()
            if all(state in states for state, _agent in rows):
                return [agent for _state, agent in rows]
            return None

        return wait_for(read, timeout=120, interval=0.1, message=f"tasks never reached {states}")

    def routed_to(self, task_id: str) -> str:
        return self.agents_of([task_id], STARTED)[0]

    def eligible(self, capability: str) -> set[str]:
        """The agents a router would consider now (the routers' own rule and timeout)."""
        now = time.time()
        return {
            a.agent_id
            for a in self.client.store.load_fleet().agents
            if is_eligible(a, [capability], now, self.settings.agent_timeout_s)
        }


@pytest.fixture
def routers(start_control, orch_env, redis_url, redis_client) -> Iterator[Callable[[str], Routers]]:
    """`routers(algorithm)`: a control worker and a client, both balancing with `algorithm`.

    The client gets the cluster's agent timeout too: a client that routes must see an agent
    go stale when the control workers do."""
    made: list[Routers] = []

    def start(algorithm: str) -> Routers:
        start_control(wait=False, **{ALGORITHM: algorithm}, **BELOW_SATURATION)
        settings = load_settings(
            redis_url=redis_url,
            load_balancing_algorithm=algorithm,
            agent_prefetch=int(BELOW_SATURATION["ORCH_AGENT_PREFETCH"]),
            agent_timeout_s=float(orch_env["ORCH_AGENT_TIMEOUT_S"]),
            agent_heartbeat_interval_s=float(orch_env["ORCH_AGENT_HEARTBEAT_INTERVAL_S"]),
        )
        made.append(Routers(OrchestratorClient(settings=settings), redis_client))
        return made[-1]

    yield start
    for r in made:
        r.client.close()


@pytest.fixture
def agents(start_agent, redis_client) -> Callable[..., dict[str, CeleryProcess]]:
    """`agents(algorithm, id=capabilities, ...)`: start them in parallel, wait for all."""

    def start(algorithm: str, **specs: str) -> dict[str, CeleryProcess]:
        procs = {
            agent_id: start_agent(
                agent_id, caps, wait=False, **{ALGORITHM: algorithm}, **BELOW_SATURATION
            )
            for agent_id, caps in specs.items()
        }
        wait_for(
            lambda: all(redis_client.hexists("orch:agents", a) for a in specs),
            timeout=90,
            message=f"agents {sorted(specs)} never all registered",
        )
        for proc in procs.values():
            proc.wait_for_log("ready.", timeout=90)
        return procs

    return start


def release(r: Routers, key: str) -> None:
    r.redis.set(f"test:release:{key}", 1)


def test_weighted_round_robin_gives_shares_proportional_to_weight(routers, agents):
    """Proficiencies 1.0 and 0.5 (performance scores start at 1.0) give 2:1, through the
    client's router and through a control worker's two router processes at once.

    The smooth round-robin is exact for constant weights (every three picks are a, b, a), and
    its state is shared in Redis, so each batch of 60 should split 40/20; the tolerance of
    +-3 (5 points of share) leaves room for a weight that moves mid-run (performance scores
    follow measured success and run time) and nothing more: a per-process sequence, or a
    non-atomic step, drifts well past it."""
    r = routers("weighted_round_robin")
    agents("weighted_round_robin", a="echo=1.0", b="echo=0.5")

    local = [f"wrr-l{i}" for i in range(60)]
    for task_id in local:
        r.local("echo", task_id)
    named = [f"wrr-n{i}" for i in range(60)]
    for task_id in named:
        r.by_name("echo", task_id)

    for ids in (local, named):
        shares = Counter(r.agents_of(ids))
        assert 37 <= shares["a"] <= 43 and shares["a"] + shares["b"] == 60, shares


def test_least_loaded_fills_agents_by_in_flight_per_unit_of_weight(routers, agents):
    """Nine tasks that stay in flight (held) go 6:3 to proficiencies 1.0 and 0.5: each pick
    takes the fewest in-flight tasks per unit of weight (ties to the heavier agent). With
    nothing finishing, the order is fixed, so the counts are exact; the control worker's
    submissions are sent one at a time so its two router processes never race on a count."""
    r = routers("least_loaded")
    agents("least_loaded", a="hold=1.0", b="hold=0.5")
    held = {"key": "fill", "max_s": HOLD_MAX_S}

    local = [f"ll-l{i}" for i in range(9)]
    for task_id in local:
        r.local("hold", task_id, held)
    assert Counter(r.agents_of(local, STARTED)) == {"a": 6, "b": 3}

    named = [f"ll-n{i}" for i in range(9)]
    for task_id in named:
        r.by_name("hold", task_id, held)
        r.routed_to(task_id)
    assert Counter(r.agents_of(named, STARTED)) == {"a": 6, "b": 3}

    release(r, "fill")
    assert len(r.agents_of(local + named)) == 18


def test_least_loaded_sends_a_burst_past_a_busy_agent_to_the_idle_one(routers, agents):
    """Agent a is held busy with 15 tasks only it can run; a burst of 12 tasks either agent
    could run, half from each router and not waited on, all go to idle b: even had none of
    them finished, b's in-flight count stays below a's."""
    r = routers("least_loaded")
    agents("least_loaded", a="hold=1.0,echo=1.0", b="echo=1.0")
    busy = [f"busy-{i}" for i in range(15)]
    for task_id in busy:
        r.local("hold", task_id, {"key": "busy", "max_s": HOLD_MAX_S})
    assert set(r.agents_of(busy, STARTED)) == {"a"}

    burst = [f"burst-{i}" for i in range(12)]
    for i, task_id in enumerate(burst):
        (r.local if i % 2 else r.by_name)("echo", task_id)
    assert Counter(r.agents_of(burst)) == {"b": 12}

    release(r, "busy")
    assert len(r.agents_of(busy)) == 15


def test_power_of_two_avoids_the_busy_agent(routers, agents):
    """Power of two choices on run time x (in-flight + 1): with agent a held busy, new tasks
    go to b and c. a (20 in flight, no run time measured yet, so counted as 1 ms) costs 21 and
    loses every pair it is drawn into unless the other agent's measured run time x (in-flight
    + 1) tops that; echo runs in well under 1 ms and each batch of 30 is split between b and
    c, but a loaded machine may stretch a run now and then, hence "at most 10 %" for a
    (measured: none). Both b and c get work: the pair is drawn at random and ties go to the
    first drawn."""
    r = routers("power_of_two")
    agents("power_of_two", a="hold=1.0,echo=1.0", b="echo=1.0", c="echo=1.0")
    busy = [f"busy-{i}" for i in range(20)]
    for task_id in busy:
        r.local("hold", task_id, {"key": "busy", "max_s": HOLD_MAX_S})
    assert set(r.agents_of(busy, STARTED)) == {"a"}

    both: Counter[str] = Counter()
    for path, via in (("local", r.local), ("by-name", r.by_name)):
        batch = [f"p2c-{path}-{i}" for i in range(30)]
        for task_id in batch:
            via("echo", task_id)
        shares = Counter(r.agents_of(batch))
        assert shares["a"] <= 3, shares
        both += shares
    assert both["b"] > 0 and both["c"] > 0, both

    release(r, "busy")
    assert len(r.agents_of(busy)) == 20


@pytest.mark.parametrize(
    ("algorithm", "stop"),
    [
        ("weighted_round_robin", "terminate"),  # warm shutdown: it deregisters (offline)
        ("least_loaded", "kill"),  # SIGKILL: its heartbeat lapses
        ("power_of_two", "kill"),
    ],
)
def test_affinity_holds_a_key_on_one_agent_and_moves_it_when_that_agent_goes(
    algorithm, stop, routers, start_agent, agents
):
    """Tasks with one affinity key land on one agent whichever router routes them, while
    tasks without a key still spread; when that agent goes offline the key moves to one
    other agent and stays there, also after the first agent comes back."""
    r = routers(algorithm)
    procs = agents(algorithm, a="echo=1.0", b="echo=1.0", c="echo=1.0")
    key = {"affinity_key": "user-42"}

    keyed = [f"k{i}" for i in range(20)]
    loose = [f"u{i}" for i in range(20)]
    for i in range(20):
        via = r.local if i % 2 else r.by_name
        via("echo", keyed[i], **key)
        via("echo", loose[i])
    [first] = set(r.agents_of(keyed))
    if algorithm == "weighted_round_robin":
        # Only the key's tasks stick: the others still rotate over all three (about 7 each;
        # least-loaded and power-of-two send tasks that find every agent idle to the same
        # one or two, so the check is the round-robin's).
        loose_shares = Counter(r.agents_of(loose))
        assert len(loose_shares) == 3 and min(loose_shares.values()) >= 5, loose_shares
    assert r.redis.get(affinity_key("user-42")) == first

    if stop == "terminate":
        procs[first].terminate()
    else:
        procs[first].kill()
    wait_for(
        lambda: first not in r.eligible("echo"),
        timeout=60,
        message=f"{first} still eligible after {stop}",
    )

    moved = [f"m{i}" for i in range(20)]
    for i, task_id in enumerate(moved):
        (r.local if i % 2 else r.by_name)("echo", task_id, **key)
    [second] = set(r.agents_of(moved))
    assert second != first

    start_agent(first, "echo=1.0", wait=False, **{ALGORITHM: algorithm})
    wait_for(lambda: first in r.eligible("echo"), timeout=60, message=f"{first} never came back")
    after = [f"s{i}" for i in range(10)]
    for i, task_id in enumerate(after):
        (r.local if i % 2 else r.by_name)("echo", task_id, **key)
    assert set(r.agents_of(after)) == {second}


@pytest.mark.parametrize("seed", range(3))
def test_lua_affinity_step_matches_the_pure_rule(seed, redis_url):
    """The store's one-step affinity is routing.weights.follow_affinity: the stuck agent
    while eligible (its TTL refreshed), else the router's own pick or, given none, the next
    round-robin pick; the round-robin advances only when the key needs an agent."""
    store = StateStore.from_url(redis_url)
    rng = random.Random(seed)
    peers = [f"agent-{i}" for i in range(5)]
    keys = [f"key-{i}" for i in range(4)]
    state: dict[str, int] = {}
    stuck: dict[str, str] = {}
    try:
        for step in range(300):
            key = rng.choice(keys)
            weights = {
                p: rng.choice([250, 500, 1000]) for p in rng.sample(peers, rng.randint(1, 5))
            }
            own = rng.choice([None, *weights])
            before = stuck.get(key)
            fallback = own or ""
            if own is None and before not in weights:
                fallback, state = wrr_step(state, weights)
            expected = follow_affinity(before, weights, fallback)
            if before is not None:
                store.r.expire(affinity_key(key), 50)  # so a refresh shows
            got = store.affinity_pick(
                key, capability_key="echo", weights=weights, fallback=own, ttl_s=1000
            )
            assert got == expected, step
            stuck[key] = got
            assert store.r.get(affinity_key(key)) == got, step
            assert 990 <= store.r.ttl(affinity_key(key)) <= 1000, step  # refreshed or new
            assert store.wrr_state("echo") == state, step
    finally:
        store.r.close()


@pytest.mark.parametrize("picks", [("a", "b"), ("a", None), (None, None)])
def test_routers_racing_on_a_new_key_agree_on_one_agent(picks, redis_url):
    """Two routers (own connections, own threads, released together) ask for 300 fresh keys
    at once, each with a different pick of its own (None: the round-robin's); every time
    both get the same agent, the one the key holds. With a read and a separate write, each
    router would keep its own pick whenever both read before either wrote."""
    rounds = 300
    weights = {"a": 1000, "b": 1000, "c": 1000}
    stores = [StateStore.from_url(redis_url) for _ in picks]
    barrier = threading.Barrier(len(picks))
    got: list[list[str]] = [[] for _ in picks]

    def race(i: int) -> None:
        for n in range(rounds):
            barrier.wait(timeout=30)
            got[i].append(
                stores[i].affinity_pick(
                    f"race-{n}",
                    capability_key="echo",
                    weights=weights,
                    fallback=picks[i],
                    ttl_s=600,
                )
            )

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(picks))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert got[0] == got[1] and len(got[0]) == rounds
        held = [stores[0].r.get(affinity_key(f"race-{n}")) for n in range(rounds)]
        assert held == got[0]
    finally:
        for store in stores:
            store.r.close()
