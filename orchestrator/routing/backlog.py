"""The backlog's order as pure decisions over plain data: a model of store/lua/backlog.lua.

The Lua steps are what runs; this module states what they decide, step by step, so the order
(priority, then fair share between clients, then age; concurrency keys) can be table-tested
without Redis, and the Lua checked against it (tests/integration/test_backlog_lua.py). Nothing
here touches Redis or the clock: `now` is passed in, and a `Backlog` is plain data that its
methods change as the Lua steps change the keys of store/keys.py's "dispatch" section.

Fair share is start-time fair queuing on worker-seconds. Each client has a virtual time `vt`
(worker-seconds charged, divided by its weight) and each (set, priority) list one, `v` (the
highest tag taken there: it never moves back). A client that starts waiting in a list gets the
tag max(v of the list, its vt), so time it spent idle earns it no credit; taking its oldest
task charges it its run-time estimate (vt = max(vt, tag) + est / weight) and moves the list's
v up to the tag; its next task's tag is that vt. When the run settles, vt is corrected by what
it really ran and the estimate learns (an EWMA). With ORCH_FAIR_SHARE=off every task waits
under one client and sets at the same priority are compared by their oldest task's enqueue
order. Where the Lua leaves a choice to Redis's iteration order (two capability sets tied on
priority and tag: the first set SMEMBERS returns wins), the model takes the smallest set key;
callers that must agree with Redis on such ties use `tops`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

#: How far a client's run-time estimate moves towards each settled run (EWMA weight).
EST_ALPHA = 0.3
#: A client's estimate before any of its tasks settled (seconds): store.backlog's.
DEFAULT_ESTIMATE_S = 1.0
#: The one client every task waits under with ORCH_FAIR_SHARE=off (oldest first).
NO_FAIR_SHARE = "*"


# --- the arithmetic ------------------------------------------------------------------------


def start_tag(v: float, vt: float) -> float:
    """The tag of a client that starts waiting in a list: never behind the system's virtual
    time (no credit for idle time), never behind its own (no forgetting what it used)."""
    return max(v, vt)


def charge(vt: float, tag: float, est: float, weight: float) -> float:
    """A client's virtual time after one of its tasks (tagged `tag`) starts."""
    return max(vt, tag) + est / weight


def correct(vt: float, ran: float, charged: float, weight: float) -> float:
    """A client's virtual time once a task it was charged `charged` seconds for settled
    after running `ran` seconds."""
    return vt + (ran - charged) / weight


def learn(est: float | None, ran: float) -> float:
    """The client's run-time estimate after a settled run (the first run is taken whole)."""
    base = ran if est is None else est
    return base + EST_ALPHA * (ran - base)


def offers(set_key: str, capabilities: Collection[str]) -> bool:
    """Whether an agent with these capabilities can take tasks of the capability set."""
    return all(name in capabilities for name in set_key.split(",") if name)


@dataclass(frozen=True)
class Head:
    """A client waiting at the top priority of a capability set, with its tag (and, with
    fair share off, the enqueue order of its oldest task)."""

    set_key: str
    priority: int
    client: str
    tag: float
    seq: int = 0


def best(heads: Iterable[Head]) -> Head | None:
    """The highest priority, then the lowest tag; with fair share off (every task under
    the one client NO_FAIR_SHARE) the oldest; among equals the first given."""
    out: Head | None = None
    for head in heads:
        if out is None or head.priority > out.priority:
            out = head
        elif head.priority == out.priority:
            if head.client == NO_FAIR_SHARE and out.client == NO_FAIR_SHARE:
                if head.seq < out.seq:
                    out = head
            elif head.tag < out.tag:
                out = head
    return out


# --- the state -----------------------------------------------------------------------------


@dataclass
class Entry:
    """What the ledger holds of a task the backlog has seen (the fields backlog.lua reads)."""

    set_key: str
    priority: int
    client: str
    state: str  # queued | parked | routed | ended
    queued_at: float
    key: str | None = None  # its concurrency key (ledger `ckey`)
    in_backlog: bool = False  # ledger `bl`: waiting, in a list or for a permit
    waiting_for: str | None = None  # ledger `blw`: the key it waits for a permit of
    charged: tuple[str, float] | None = None  # ledger `fc`, `fest`
    seq: int = 0  # ledger `qseq`: its enqueue order


@dataclass(frozen=True)
class Taken:
    """A task taken from the backlog for an agent: its place, its tag, what it was charged."""

    task_id: str
    set_key: str
    priority: int
    client: str
    tag: float
    est: float


ListKey = tuple[str, int, str]


@dataclass
class Backlog:
    """The backlog and fair-share state as plain data (the keys of store/keys.py "dispatch")."""

    weights: Mapping[str, float] = field(default_factory=dict)
    default_est: float = DEFAULT_ESTIMATE_S
    v: dict[tuple[str, int], float] = field(default_factory=dict)  # fair:v, per list
    seq: int = 0  # bl:seq
    vt: dict[str, float] = field(default_factory=dict)  # fair:vt
    est: dict[str, float] = field(default_factory=dict)  # fair:est
    queues: dict[ListKey, deque[str]] = field(default_factory=dict)  # bl:q:<set>|<p>|<client>
    tags: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)  # bl:c:<set>|<p>
    holders: dict[str, set[str]] = field(default_factory=dict)  # ck:h:<key>
    ck_waiting: dict[str, deque[str]] = field(default_factory=dict)  # ck:w:<key>
    ck_limits: dict[str, int] = field(default_factory=dict)  # ck:lim
    entries: dict[str, Entry] = field(default_factory=dict)  # the ledger's fields

    def weight(self, client: str) -> float:
        return self.weights.get(client, 1)

    # --- putting tasks in ---------------------------------------------------------------

    def enqueue(
        self,
        task_id: str,
        *,
        set_key: str,
        priority: int,
        client: str,
        now: float,
        key: str | None = None,
        limit: int = 1,
        front: bool = False,
        parked: bool = False,
    ) -> bool:
        """backlog.lua `enqueue`: into its (set, priority, client) list (at the front when it
        had been dispatched before), or, over its key's limit, into the key's waiting list.
        True when it joined the backlog, False when it waits for a permit."""
        entry = self.entries.get(task_id)
        if entry is None:
            entry = Entry(set_key, priority, client, "", now)
            self.entries[task_id] = entry
        entry.set_key, entry.priority, entry.client = set_key, priority, client
        if entry.in_backlog:  # restored while waiting: out of where it waited first
            self._remove(task_id, entry)
        entry.state = "parked" if parked else "queued"
        entry.queued_at = now
        entry.in_backlog = True
        self.seq += 1
        entry.seq = self.seq
        if self._admit(task_id, entry, key, limit):
            self._push(task_id, set_key, priority, client, front)
            return True
        return False

    def _admit(self, task_id: str, entry: Entry, key: str | None, limit: int) -> bool:
        """backlog.lua `ck_admit`: a permit of the key, or a place in its waiting list."""
        if not key:
            return True
        self.ck_limits[key] = limit
        entry.key = key
        holders = self.holders.setdefault(key, set())
        if task_id in holders:
            return True
        if len(holders) < limit:
            holders.add(task_id)
            return True
        self.ck_waiting.setdefault(key, deque()).append(task_id)
        entry.waiting_for = key
        return False

    def _push(self, task_id: str, set_key: str, priority: int, client: str, front: bool) -> None:
        """backlog.lua `bl_push`: a client that starts waiting in the list gets its tag."""
        queue = self.queues.setdefault((set_key, priority, client), deque())
        if front:
            queue.appendleft(task_id)
        else:
            queue.append(task_id)
        if len(queue) == 1:
            tag = start_tag(self.v.get((set_key, priority), 0.0), self.vt.get(client, 0.0))
            self.tags.setdefault((set_key, priority), {})[client] = tag

    def _fix(self, set_key: str, priority: int, client: str) -> None:
        """backlog.lua `bl_fix`: an emptied list leaves the indexes."""
        if self.queues.get((set_key, priority, client)):
            return
        self.queues.pop((set_key, priority, client), None)
        clients = self.tags.get((set_key, priority), {})
        clients.pop(client, None)
        if not clients:
            self.tags.pop((set_key, priority), None)

    # --- taking tasks out ---------------------------------------------------------------

    def sets(self) -> list[str]:
        """The capability sets with tasks waiting (bl:sets), smallest key first."""
        return sorted({k for k, _ in self.tags})

    def _top(self, set_key: str) -> int | None:
        prios = [p for k, p in self.tags if k == set_key]
        return max(prios) if prios else None

    def _waiting_tops(self, capabilities: Collection[str]) -> Iterator[tuple[str, int]]:
        """(set, its top priority) for each set with tasks waiting that the agent can take."""
        for set_key in self.sets():
            top = self._top(set_key) if offers(set_key, capabilities) else None
            if top is not None:
                yield set_key, top

    def tops(self, capabilities: Collection[str]) -> list[Head]:
        """Every client waiting at the top priority of each set the agent can take, each
        with its tag: what the Lua chooses among."""
        return [
            Head(set_key, top, c, t)
            for set_key, top in self._waiting_tops(capabilities)
            for c, t in sorted(self.tags[(set_key, top)].items())
        ]

    def heads(self, capabilities: Collection[str]) -> list[Head]:
        """backlog.lua `bl_head` for each set the agent can take: its top priority and the
        client with the lowest tag there (ties: the smaller name, as a sorted set orders)."""
        out = []
        for set_key, top in self._waiting_tops(capabilities):
            client, tag = min(self.tags[(set_key, top)].items(), key=lambda ct: (ct[1], ct[0]))
            queue = self.queues.get((set_key, top, client))
            seq = self.entries[queue[0]].seq if queue and queue[0] in self.entries else 0
            out.append(Head(set_key, top, client, tag, seq))
        return out

    def head_task(self, head: Head) -> str | None:
        """The task a pop of `head` would take (its client's oldest at that priority)."""
        queue = self.queues.get((head.set_key, head.priority, head.client))
        return queue[0] if queue else None

    def pop(self, head: Head) -> Taken | None:
        """backlog.lua `bl_pop` then `assign`: take the client's oldest task there and charge
        the client its estimate. None when the popped task no longer waits (the Lua drops
        it and goes on)."""
        queue = self.queues.get((head.set_key, head.priority, head.client))
        task_id = queue.popleft() if queue else None
        if not queue:
            self._fix(head.set_key, head.priority, head.client)
        if task_id is None:
            return None
        entry = self.entries.get(task_id)
        if entry is None or entry.state not in ("queued", "parked"):
            return None  # no longer waits: nothing is charged for it
        est = self.est.get(head.client, self.default_est)
        vt = charge(self.vt.get(head.client, 0.0), head.tag, est, self.weight(head.client))
        self.vt[head.client] = vt
        place = (head.set_key, head.priority)
        self.v[place] = max(self.v.get(place, 0.0), head.tag)
        if queue:
            self.tags[place][head.client] = vt
        entry.state = "routed"
        entry.in_backlog = False
        entry.waiting_for = None
        entry.charged = (head.client, est)
        return Taken(task_id, head.set_key, head.priority, head.client, head.tag, est)

    def take(self, capabilities: Collection[str]) -> Taken | None:
        """The next task for an agent offering `capabilities`, taken (None: nothing waits
        that it can take)."""
        while True:
            head = best(self.heads(capabilities))
            if head is None:
                return None
            taken = self.pop(head)
            if taken is not None:
                return taken

    def fill(self, capabilities: Collection[str], free: int) -> list[Taken]:
        """backlog.lua `fill`: up to `free` tasks for one agent, best first."""
        out: list[Taken] = []
        while len(out) < free:
            taken = self.take(capabilities)
            if taken is None:
                break
            out.append(taken)
        return out

    # --- ends ---------------------------------------------------------------------------

    def settle(self, task_id: str, ran: float) -> list[str]:
        """settle_run.lua's backlog part: the task ends (its key's permit passes on), then
        the client it was charged to is corrected by the run time `ran` and its estimate
        learns. Returns the keyed tasks the permit let into the backlog."""
        entry = self.entries.get(task_id)
        if entry is None or entry.state == "ended":
            return []
        admitted = self.end(task_id)
        if entry.charged is not None:
            client, charged = entry.charged
            self.vt[client] = correct(self.vt.get(client, 0.0), ran, charged, self.weight(client))
            self.est[client] = learn(self.est.get(client), ran)
        return admitted

    def end(self, task_id: str) -> list[str]:
        """finish.lua's backlog part (`bl_remove`, `ck_release`): a task ends, wherever it
        is. Returns the keyed tasks its permit let into the backlog."""
        entry = self.entries.get(task_id)
        if entry is None or entry.state == "ended":
            return []
        entry.state = "ended"
        self._remove(task_id, entry)
        return self._release(task_id, entry)

    def _remove(self, task_id: str, entry: Entry) -> None:
        """backlog.lua `bl_remove`: out of the list or the key's waiting list it waits in."""
        if not entry.in_backlog:
            return
        entry.in_backlog = False
        if entry.waiting_for is not None:
            waiting = self.ck_waiting.get(entry.waiting_for)
            if waiting is not None and task_id in waiting:
                waiting.remove(task_id)
            entry.waiting_for = None
            return
        queue = self.queues.get((entry.set_key, entry.priority, entry.client))
        if queue is not None and task_id in queue:
            queue.remove(task_id)
            self._fix(entry.set_key, entry.priority, entry.client)

    def _release(self, task_id: str, entry: Entry) -> list[str]:
        """backlog.lua `ck_release`: the permit goes to the key's oldest waiting tasks while
        the limit allows; each joins the backlog at the back of its list."""
        key = entry.key
        if key is None:
            return []
        holders = self.holders.setdefault(key, set())
        holders.discard(task_id)
        limit = self.ck_limits.get(key, 1)
        waiting = self.ck_waiting.setdefault(key, deque())
        admitted = []
        while len(holders) < limit and waiting:
            nxt = waiting.popleft()
            other = self.entries[nxt]
            if other.state in ("queued", "parked") and other.in_backlog:
                holders.add(nxt)
                other.waiting_for = None
                self._push(nxt, other.set_key, other.priority, other.client, False)
                admitted.append(nxt)
        if not holders and not waiting:
            self.ck_limits.pop(key, None)
            self.holders.pop(key, None)
            self.ck_waiting.pop(key, None)
        return admitted

    # --- reads --------------------------------------------------------------------------

    def count(self) -> dict[str, int]:
        """Tasks waiting per capability set (bl:n; keyed tasks waiting for a permit not
        counted)."""
        out: dict[str, int] = {}
        for (set_key, _, _), queue in self.queues.items():
            if queue:
                out[set_key] = out.get(set_key, 0) + len(queue)
        return out

    def concurrency_keys(self) -> dict[str, tuple[int, int, int]]:
        """Concurrency key -> (limit, holders, waiting), as BacklogStore.concurrency_keys."""
        return {
            key: (limit, len(self.holders.get(key, ())), len(self.ck_waiting.get(key, ())))
            for key, limit in self.ck_limits.items()
        }
