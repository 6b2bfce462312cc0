"""The round-robin's O(log n) Lua step gives exactly routing.wrr_step's sequence.

Ties, peers at their slots skipped (neither gaining nor paying), fullness changing between
picks through the in-flight sets, a task's own slot, weights and membership changing, and a
log trimmed past what a state last read."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from orchestrator.routing.weights import wrr_step
from orchestrator.store import StateStore, WrrPeers
from orchestrator.store.keys import INFLIGHT_LOG_KEEP, inflight_key, lua_header, task_key

pytestmark = pytest.mark.integration

#: Adds to or takes from an agent's in-flight set as the store's steps do (and logs it).
_CHANGE = lua_header() + (
    "local agent, task, add = ARGV[1], ARGV[2], ARGV[3]\n"
    "local done\n"
    "if add == '1' then done = redis.call('SADD', K.INFLIGHT .. agent, task)\n"
    "else done = redis.call('SREM', K.INFLIGHT .. agent, task) end\n"
    "if done == 1 then inflight_changed(agent) end\n"
)


class Model:
    """The reference: wrr_step over the peers with a free slot; the others keep `current`."""

    def __init__(self) -> None:
        self.cur: dict[str, int] = {}

    def step(
        self,
        weights: dict[str, int],
        slots: dict[str, int] | None,
        held: dict[str, set[str]],
        task_id: str | None,
    ) -> str | None:
        self.cur = {p: self.cur.get(p, 0) for p in weights}
        free = {
            p: w
            for p, w in weights.items()
            if slots is None
            or len(held.get(p, set()) - ({task_id} if task_id else set())) < slots[p]
        }
        if not free:
            return None
        best, state = wrr_step({p: self.cur[p] for p in free}, free)
        self.cur.update(state)
        return best


def _run(store: StateStore, seed: int, steps: int, n: int, key: str) -> None:
    rng = random.Random(seed)
    change = store.r.register_script(_CHANGE)
    everyone = [f"agent-{i:03d}" for i in range(n)]
    held: dict[str, set[str]] = {p: set() for p in everyone}
    model = Model()
    peers = everyone[: rng.randint(1, n)]
    weights = {p: rng.choice([1, 2, 3, 250, 500, 1000]) for p in peers}
    slots = {p: rng.randint(1, 3) for p in everyone}
    prepared = WrrPeers.of(weights, slots)
    tasks = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.03:  # the membership changes
            peers = sorted(rng.sample(everyone, rng.randint(1, n)))
            weights = {p: weights.get(p) or rng.choice([1, 2, 3, 250, 500, 1000]) for p in peers}
            prepared = WrrPeers.of(weights, slots)
        elif roll < 0.05:  # a weight changes
            p = rng.choice(peers)
            weights[p] = rng.choice([1, 2, 3, 250, 500, 1000])
            prepared = WrrPeers.of(weights, slots)
        for _ in range(rng.choice([0, 0, 1, 2, 5])):  # tasks start and end anywhere
            agent = rng.choice(everyone)
            if held[agent] and rng.random() < 0.5:
                task = rng.choice(sorted(held[agent]))
                held[agent].discard(task)
                change(args=[agent, task, "0"])
            else:
                tasks += 1
                task = f"t{tasks}"
                held[agent].add(task)
                change(args=[agent, task, "1"])
                store.r.hset(task_key(task), "agent", agent)
        if rng.random() < 0.05:  # a new affinity key's pick: nobody is skipped
            expected = model.step(weights, None, held, None)
            chosen = store.affinity_pick(
                f"key{rng.random()}",
                capability_key=key,
                weights=prepared,
                fallback=None,
                ttl_s=60,
            )
            assert chosen == expected
            continue
        task_id = None
        if rng.random() < 0.3:  # a task moved again: its own slot counts as free
            holders = [p for p in everyone if held[p]]
            if holders:
                task_id = rng.choice(sorted(held[rng.choice(holders)]))
        expected = model.step(weights, slots, held, task_id)
        assert store.wrr_pick(key, prepared, task_id) == expected
        assert store.wrr_state(key) == model.cur


@pytest.fixture
def store(redis_url: str) -> Iterator[StateStore]:
    """A store on the test server (flushed before each test by redis_url)."""
    store = StateStore.from_url(redis_url)
    yield store
    store.r.close()


@pytest.mark.parametrize("seed", range(4))
def test_the_lua_step_with_slots_matches_the_pure_step(seed, store):
    _run(store, seed, steps=400, n=3 + seed * 4, key=f"echo{seed}")


def test_two_round_robins_share_the_log_and_a_trimmed_one_checks_every_peer(store):
    """A state that fell further behind the in-flight log than it keeps re-checks all."""
    change = store.r.register_script(_CHANGE)
    weights = {"a": 5, "b": 1, "c": 1}
    slots = {"a": 1, "b": 1, "c": 1}
    peers = WrrPeers.of(weights, slots)
    assert [store.wrr_pick("x", peers) for _ in range(3)] == ["a", "a", "b"]
    change(args=["a", "t1", "1"])  # a is full
    for i in range(INFLIGHT_LOG_KEEP + 10):
        change(args=["zz", f"n{i}", "1"])
    model = Model()
    for _ in range(3):
        model.step(weights, None, {}, None)
    held = {"a": {"t1"}}
    picks = [store.wrr_pick("x", peers) for _ in range(4)]
    assert picks == [model.step(weights, slots, held, None) for _ in range(4)]
    assert "a" not in picks
    assert store.wrr_state("x") == model.cur


def test_every_peer_full_gives_none_and_changes_nothing(store):
    change = store.r.register_script(_CHANGE)
    peers = WrrPeers.of({"a": 2, "b": 1}, {"a": 1, "b": 1})
    assert store.wrr_pick("y", peers) == "a"
    before = store.wrr_state("y")
    change(args=["a", "t1", "1"])
    change(args=["b", "t2", "1"])
    assert store.wrr_pick("y", peers) is None
    assert store.wrr_state("y") == before
    store.r.hset(task_key("t2"), "agent", "b")
    assert store.wrr_pick("y", peers, "t2") == "b"  # its own slot counts as free
    assert store.r.scard(inflight_key("b")) == 1


@pytest.mark.parametrize(("top", "n"), [(3, 37), (40, 37), (20, 150)])
def test_a_long_run_at_many_peers_keeps_the_sequence(top, n, store):
    """Thousands of steps past a zero state, where lines cross every few steps (every
    certificate of the tournament expires in turn), where weights tie, and with three
    levels of nodes."""
    rng = random.Random(top)
    weights = {f"agent-{i:03d}": rng.randint(1, top) for i in range(n)}
    prepared = WrrPeers.of(weights)
    state: dict[str, int] = {}
    for _ in range(3000):
        expected, state = wrr_step(state, weights)
        assert store.wrr_pick("long", prepared) == expected
    assert store.wrr_state("long") == state


def test_the_digest_names_ids_weights_and_slots():
    """A pick sends only the digest: any change the script must see gives a new one."""
    base = WrrPeers.of({"a": 2, "b": 1}, {"a": 3, "b": 3})
    assert WrrPeers.of({"b": 1, "a": 2}, {"b": 3, "a": 3}).digest == base.digest
    for other in (
        WrrPeers.of({"a": 2, "b": 2}, {"a": 3, "b": 3}),
        WrrPeers.of({"a": 2, "c": 1}, {"a": 3, "c": 3}),
        WrrPeers.of({"a": 2, "b": 1}, {"a": 3, "b": 4}),
        WrrPeers.of({"a": 2, "b": 1}),
    ):
        assert other.digest != base.digest
    assert base.args("t1") == [base.digest, "t1", ""]  # a pick's whole ARGV
