"""The backlog's order, table-tested on the pure model of store/lua/backlog.lua."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from orchestrator.routing.backlog import (
    DEFAULT_ESTIMATE_S,
    NO_FAIR_SHARE,
    Backlog,
    Head,
    best,
    charge,
    correct,
    learn,
    offers,
    start_tag,
)
from orchestrator.store import backlog as store_backlog

# A waiting task: (task id, priority, client, capability set, concurrency key).
Spec = tuple[str, int, str, str, str | None]


def load(tasks: Sequence[Spec], limit: int = 1, **kw: object) -> Backlog:
    backlog = Backlog(**kw)  # type: ignore[arg-type]
    for t, (task_id, priority, client, set_key, key) in enumerate(tasks):
        backlog.enqueue(
            task_id,
            set_key=set_key,
            priority=priority,
            client=client,
            now=float(t),
            key=key,
            limit=limit,
        )
    return backlog


def drain(backlog: Backlog, caps: Sequence[str] = ("x",)) -> list[str]:
    """Take everything, one at a time, settling each at once with its estimate."""
    out = []
    while (taken := backlog.take(caps)) is not None:
        out.append(taken.task_id)
        backlog.settle(taken.task_id, taken.est)
    return out


def test_constants_are_the_stores() -> None:
    assert DEFAULT_ESTIMATE_S == store_backlog.DEFAULT_ESTIMATE_S
    assert NO_FAIR_SHARE == store_backlog.NO_FAIR_SHARE


@pytest.mark.parametrize(
    ("v", "vt", "tag"),
    [(0.0, 0.0, 0.0), (5.0, 2.0, 5.0), (2.0, 5.0, 5.0), (3.5, 3.5, 3.5)],
)
def test_start_tag(v: float, vt: float, tag: float) -> None:
    assert start_tag(v, vt) == tag


@pytest.mark.parametrize(
    ("vt", "tag", "est", "weight", "after"),
    [
        (0.0, 0.0, 1.0, 1.0, 1.0),
        (4.0, 2.0, 1.0, 1.0, 5.0),  # its own vt ahead of the tag: from its vt
        (2.0, 4.0, 1.0, 1.0, 5.0),  # the tag ahead (it started at the system's): from the tag
        (0.0, 0.0, 3.0, 2.0, 1.5),  # weight 2: half the charge
    ],
)
def test_charge(vt: float, tag: float, est: float, weight: float, after: float) -> None:
    assert charge(vt, tag, est, weight) == after


@pytest.mark.parametrize(
    ("vt", "ran", "charged", "weight", "after"),
    [(5.0, 1.0, 1.0, 1.0, 5.0), (5.0, 10.0, 1.0, 1.0, 14.0), (5.0, 0.0, 2.0, 2.0, 4.0)],
)
def test_correct(vt: float, ran: float, charged: float, weight: float, after: float) -> None:
    assert correct(vt, ran, charged, weight) == after


@pytest.mark.parametrize(
    ("est", "ran", "after"),
    [(None, 4.0, 4.0), (1.0, 11.0, 4.0), (10.0, 0.0, 7.0), (2.0, 2.0, 2.0)],
)
def test_learn(est: float | None, ran: float, after: float) -> None:
    assert learn(est, ran) == pytest.approx(after)


@pytest.mark.parametrize(
    ("set_key", "caps", "ok"),
    [
        ("x", {"x"}, True),
        ("x,y", {"x"}, False),
        ("x,y", {"x", "y", "z"}, True),
        ("", set(), True),  # a task that needs no capability: any agent
        ("x", set(), False),
    ],
)
def test_offers(set_key: str, caps: set[str], ok: bool) -> None:
    assert offers(set_key, caps) is ok


@pytest.mark.parametrize(
    ("heads", "winner"),
    [
        ([Head("a", 5, "c", 0.0), Head("b", 9, "c", 7.0)], 1),  # priority first
        ([Head("a", 5, "c", 3.0), Head("b", 5, "c", 2.0)], 1),  # then the lowest tag
        ([Head("a", 5, "c", 2.0), Head("b", 5, "d", 2.0)], 0),  # ties: the first given
        ([], None),
    ],
)
def test_best(heads: list[Head], winner: int | None) -> None:
    assert best(heads) == (None if winner is None else heads[winner])


@pytest.mark.parametrize(
    ("tasks", "order"),
    [
        # Priority beats age, whatever the client or the set.
        (
            [("old", 1, "c", "x", None), ("mid", 5, "c", "x", None), ("new", 9, "c", "x", None)],
            ["new", "mid", "old"],
        ),
        (
            [("a1", 1, "a", "x", None), ("b1", 9, "b", "x,y", None), ("a2", 5, "a", "x", None)],
            ["b1", "a2", "a1"],
        ),
        # Within a priority and a client: oldest first.
        (
            [("t1", 5, "c", "x", None), ("t2", 5, "c", "x", None), ("t3", 9, "c", "x", None)],
            ["t3", "t1", "t2"],
        ),
    ],
)
def test_priority_beats_age(tasks: list[Spec], order: list[str]) -> None:
    assert drain(load(tasks), ("x", "y")) == order


@pytest.mark.parametrize("n", [2, 5])
def test_fair_share_alternates_two_equal_clients(n: int) -> None:
    """Client a submitted all its tasks before b submitted any: they still alternate."""
    tasks: list[Spec] = [(f"a{i}", 5, "a", "x", None) for i in range(n)]
    tasks += [(f"b{i}", 5, "b", "x", None) for i in range(n)]
    order = drain(load(tasks))
    assert order == [t for i in range(n) for t in (f"a{i}", f"b{i}")]


def simulate(
    clients: Mapping[str, float],
    weights: Mapping[str, float] | None = None,
    starts: int = 600,
    slots: int = 2,
) -> Counter[str]:
    """Every client always has work waiting (run time `clients[c]` seconds); one agent with
    `slots` slots runs them; each run settles when it ends, then the slot is filled (as the
    settle step does). Returns the starts per client."""
    backlog = Backlog(weights=dict(weights or {}))
    serial = Counter[str]()
    counts = Counter[str]()

    def top_up(now: float) -> None:
        for client in clients:
            while len(backlog.queues.get(("x", 5, client), ())) < 2:
                serial[client] += 1
                backlog.enqueue(
                    f"{client}{serial[client]}", set_key="x", priority=5, client=client, now=now
                )

    running: list[tuple[float, str, str]] = []
    now = 0.0
    top_up(now)
    for taken in backlog.fill(["x"], slots):
        counts[taken.client] += 1
        heapq.heappush(running, (now + clients[taken.client], taken.task_id, taken.client))
    while sum(counts.values()) < starts:
        now, task_id, client = heapq.heappop(running)
        backlog.settle(task_id, clients[client])
        top_up(now)
        for taken in backlog.fill(["x"], 1):
            counts[taken.client] += 1
            heapq.heappush(running, (now + clients[taken.client], taken.task_id, taken.client))
    return counts


@pytest.mark.parametrize(
    ("clients", "weights", "share_of_first"),
    [
        ({"long": 10.0, "short": 1.0}, None, 1 / 11),  # 10x longer: about 1/10 the starts
        ({"long": 4.0, "short": 1.0}, None, 1 / 5),
        ({"heavy": 1.0, "light": 1.0}, {"heavy": 2.0}, 2 / 3),  # weights 2:1
        ({"heavy": 1.0, "light": 1.0}, {"heavy": 2.0, "light": 2.0}, 1 / 2),
        ({"long": 10.0, "short": 1.0}, {"long": 10.0}, 1 / 2),  # the weight buys it back
    ],
)
def test_fair_share_of_starts(
    clients: dict[str, float], weights: dict[str, float] | None, share_of_first: float
) -> None:
    counts = simulate(clients, weights)
    first = next(iter(clients))
    share = counts[first] / sum(counts.values())
    assert share == pytest.approx(share_of_first, rel=0.1)


def test_estimate_learned_from_runs() -> None:
    backlog = Backlog()
    for i in range(3):
        backlog.enqueue(f"t{i}", set_key="x", priority=5, client="c", now=0.0)
    taken = backlog.take(["x"])
    assert taken is not None and taken.est == DEFAULT_ESTIMATE_S
    backlog.settle(taken.task_id, 10.0)
    assert backlog.est["c"] == 10.0
    assert backlog.vt["c"] == 10.0  # charged 1, ran 10: corrected by 9
    taken = backlog.take(["x"])
    assert taken is not None and taken.est == 10.0


@pytest.mark.parametrize(
    ("tasks", "order"),
    [
        # Oldest first within a priority, whoever submitted (one list per priority).
        (
            [(f"a{i}", 5, NO_FAIR_SHARE, "x", None) for i in range(3)]
            + [(f"b{i}", 5, NO_FAIR_SHARE, "x", None) for i in range(3)],
            ["a0", "a1", "a2", "b0", "b1", "b2"],
        ),
        (
            [
                ("a0", 5, NO_FAIR_SHARE, "x", None),
                ("b0", 9, NO_FAIR_SHARE, "x", None),
                ("a1", 5, NO_FAIR_SHARE, "x", None),
                ("b1", 1, NO_FAIR_SHARE, "x", None),
            ],
            ["b0", "a0", "a1", "b1"],
        ),
    ],
)
def test_fair_share_off_is_oldest_first_within_a_priority(
    tasks: list[Spec], order: list[str]
) -> None:
    assert drain(load(tasks)) == order


def test_key_limit_two_over_keyed_and_unkeyed_tasks() -> None:
    """Five keyed tasks (limit 2) and three unkeyed: the waiting keyed tasks hold back
    nothing, never more than two hold the key, and every task runs once."""
    tasks: list[Spec] = [(f"k{i}", 5, "c", "x", "K") for i in range(5)]
    tasks += [(f"u{i}", 5, "c", "x", None) for i in range(3)]
    backlog = load(tasks, limit=2)
    assert backlog.count() == {"x": 5}
    assert backlog.concurrency_keys() == {"K": (2, 2, 3)}
    first = [t.task_id for t in backlog.fill(["x"], 10)]
    assert first == ["k0", "k1", "u0", "u1", "u2"]
    started = list(first)
    running = ["k0", "k1"]
    while running:
        done = running.pop(0)
        admitted = backlog.settle(done, 1.0)
        assert len(backlog.holders.get("K", ())) <= 2
        more = [t.task_id for t in backlog.fill(["x"], 10)]
        assert more == admitted
        running += more
        started += more
    assert sorted(started) == sorted(t[0] for t in tasks)
    assert backlog.count() == {}
    assert backlog.concurrency_keys() == {}


def test_a_waiting_keyed_task_that_ends_leaves_the_keys_list() -> None:
    backlog = load([("k0", 5, "c", "x", "K"), ("k1", 5, "c", "x", "K"), ("k2", 5, "c", "x", "K")])
    assert backlog.concurrency_keys() == {"K": (1, 1, 2)}
    assert backlog.end("k1") == []
    assert backlog.concurrency_keys() == {"K": (1, 1, 1)}
    assert [t.task_id for t in backlog.fill(["x"], 5)] == ["k0"]
    assert backlog.settle("k0", 1.0) == ["k2"]
    assert [t.task_id for t in backlog.fill(["x"], 5)] == ["k2"]


@pytest.mark.parametrize("rounds", [3, 10])
def test_a_new_client_gets_no_credit_for_time_it_was_idle(rounds: int) -> None:
    """a and b share an agent for `rounds` rounds; then c starts waiting. c is not served
    `rounds` times in a row: it starts at the system's virtual time."""
    backlog = Backlog()
    for client in "ab":
        for i in range(rounds + 5):
            backlog.enqueue(f"{client}{i}", set_key="x", priority=5, client=client, now=0.0)
    assert len(drain_n(backlog, 2 * rounds)) == 2 * rounds
    for i in range(5):
        backlog.enqueue(f"c{i}", set_key="x", priority=5, client="c", now=1.0)
    nxt = [t[0] for t in drain_n(backlog, 6)]
    assert Counter(nxt) == {"a": 2, "b": 2, "c": 2}


@pytest.mark.parametrize("idle_rounds", [10, 30])
def test_a_returning_client_gets_no_credit_for_time_it_was_idle(idle_rounds: int) -> None:
    """a ran one task, then b ran alone for a while; when a comes back it starts at the
    list's virtual time (at most one task ahead of b, as start-time fair queuing goes), not
    at its old virtual time with the idle time as credit."""
    backlog = Backlog()
    backlog.enqueue("a0", set_key="x", priority=5, client="a", now=0.0)
    for i in range(idle_rounds + 10):
        backlog.enqueue(f"b{i}", set_key="x", priority=5, client="b", now=0.0)
    drain_n(backlog, idle_rounds + 1)  # a0 and then b alone
    for i in range(1, 11):
        backlog.enqueue(f"a{i}", set_key="x", priority=5, client="a", now=1.0)
    assert backlog.tags[("x", 5)]["a"] == backlog.v[("x", 5)]
    nxt = [t[0] for t in drain_n(backlog, 10)]
    assert Counter(nxt)["a"] in (5, 6)


def drain_n(backlog: Backlog, n: int) -> list[str]:
    out = []
    for _ in range(n):
        taken = backlog.take(["x"])
        assert taken is not None
        out.append(taken.task_id)
        backlog.settle(taken.task_id, taken.est)
    return out


def test_moved_back_task_goes_to_the_front_without_a_new_tag() -> None:
    backlog = load([("t0", 5, "c", "x", None), ("t1", 5, "c", "x", None)])
    taken = backlog.take(["x"])
    assert taken is not None and taken.task_id == "t0"
    backlog.enqueue("t0", set_key="x", priority=5, client="c", now=2.0, front=True)
    assert [t.task_id for t in backlog.fill(["x"], 5)] == ["t0", "t1"]
