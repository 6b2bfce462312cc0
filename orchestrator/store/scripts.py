"""The Lua scripts the state store runs, read once from `lua/*.lua`: each is one round trip.

Every script is registered by the store with `register_script` (redis-py sends EVALSHA, and
the script's text once if Redis does not know it yet), so a call stays one round trip. Each
`.lua` file opens with what it takes (KEYS, ARGV) and returns; the pure functions they agree
with (routing.weights.wrr_step, recovery.breaker.record_success/record_failure) are tested
against them. The composed scripts at the end run several of these in one atomic step: each
part becomes a local Lua function of its own KEYS and ARGV, then the `.lua` file of the
composed script calls them. Each script's KEYS and ARGV are named once, in its Signature.
A script that builds every key it touches itself still takes one KEY, `slot` (keys.SLOT_KEYS):
on a Redis Cluster it names the node the step must run on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.store.keys import lua_header

LUA_DIR = Path(__file__).with_name("lua")


@dataclass(frozen=True)
class Signature:
    """A script's KEYS and ARGV, named once, in order: the `.lua` file's header comment
    (`-- KEYS: ...` and `-- ARGV: ...`) lists the same names (tests/unit/test_lua_seams.py),
    and the store builds each list by name with keys() and argv(), never by position.

    A name may end in `?` (it may be left out: None; nothing named after it is then given),
    `...` (the rest: a list of any length, maybe none) or `[]` (a section of a composed
    script: its length, then its items). `part.name` is a name of another script's list that
    a composed script takes whole: the builder is given the part as one list (`part=[...]`)."""

    script: str
    keys: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()

    def key_list(self, **given: Any) -> list[Any]:
        """KEYS, from one keyword per declared name (per part for `part.name`)."""
        return _build(self.script, "KEYS", self.keys, given)

    def arg_list(self, **given: Any) -> list[Any]:
        """ARGV, likewise."""
        return _build(self.script, "ARGV", self.argv, given)


def part(name: str, names: Sequence[str]) -> tuple[str, ...]:
    """Another script's names, as the part `name` of a composed script's list."""
    return tuple(f"{name}.{n}" for n in names)


def _base(name: str) -> str:
    """A declared name without its `?`, `...` or `[]`."""
    for suffix in ("...", "?", "[]"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _part_of(name: str) -> str | None:
    base = _base(name)
    return base.split(".", 1)[0] if "." in base else None


def bare(name: str) -> str:
    """The keyword a declared name takes: its part's name, or itself without its suffix."""
    return _part_of(name) or _base(name)


def _build(script: str, what: str, names: Sequence[str], given: dict[str, Any]) -> list[Any]:
    wanted = {bare(n) for n in names}
    if set(given) - wanted:
        raise TypeError(f"{script} {what}: no {sorted(set(given) - wanted)} (has {names})")
    out: list[Any] = []
    omitted: str | None = None
    done_parts: set[str] = set()
    for name in names:
        key = bare(name)
        if _part_of(name) is not None:
            if key in done_parts:
                continue
            done_parts.add(key)
            members = [n for n in names if _part_of(n) == key]
            required = [n for n in members if not n.endswith(("?", "..."))]
            items = list(given[key])
            if len(items) < len(required) or (
                len(items) > len(members) and not members[-1].endswith("...")
            ):
                raise TypeError(f"{script} {what}: {key} has {len(items)} of {members}")
            out += items
            continue
        if key not in given:
            if name.endswith(("?", "...")):
                omitted = omitted or name
                continue
            raise TypeError(f"{script} {what}: {name} not given")
        value = given[key]
        if (name.endswith("?") and value is None) or (name.endswith("...") and not value):
            omitted = omitted or name
            continue
        if omitted is not None:
            raise TypeError(f"{script} {what}: {name} given after {omitted} was left out")
        if name.endswith("..."):
            out += list(value)
        elif name.endswith("[]"):
            out += [len(value), *value]
        else:
            out.append(value)
    return out


#: backlog.context's six items (BacklogStore.backlog_context), the first part of every
#: dispatching script's ARGV.
CONTEXT = part("cx", ("now", "weights", "estimate", "prefetch", "timeout", "maxlen"))

WRR_PICK_SIG = Signature(
    "wrr_pick",
    keys=("state",),
    argv=("digest", "task_id", "all_free", "ids?", "weights?", "slots?"),
)
WRR_STATE_SIG = Signature("wrr_state", keys=("state",))
AFFINITY_PICK_SIG = Signature(
    "affinity_pick",
    keys=("affinity", "wrr_state"),
    argv=("ttl", "pick", *part("wrr", WRR_PICK_SIG.argv)),
)
LOAD_FLEET_SIG = Signature(
    "load_fleet",
    keys=("agents", "heartbeats", "stats", "statuses", "scores", "version"),
    argv=("circuit_prefix", "inflight_prefix"),
)
ACCEPT_SIG = Signature(
    "accept",
    keys=("ledger", "history", "counters", "events", "outbox", "outbox_msg"),
    argv=(
        "submit_id",
        "now",
        "spec",
        "type",
        "entry",
        "ttl",
        "maxlen",
        "task_id",
        "outbox_message",
        "event...",
    ),
)
TRANSITION_SIG = Signature(
    "transition", keys=("ledger", "history"), argv=("state", "entry", "allowed[]", "fields...")
)
ROUTE_SIG = Signature(
    "route",
    keys=(
        "ledger",
        "history",
        "counters",
        "stats",
        "parked",
        "events",
        "outbox",
        "outbox_msg",
    ),
    argv=(
        "agent",
        "now",
        "entry",
        "inflight_prefix",
        "task_id",
        "maxlen",
        "drop_outbox",
        "expect_dispatch",
        "slots",
        "lost_from",
        "event...",
    ),
)
BEGIN_ATTEMPT_SIG = Signature(
    "begin_attempt",
    keys=("ledger", "history"),
    argv=("agent", "now", "entry", "dispatch", "pid", "max_deliveries", "force"),
)
RECORD_OUTCOME_SIG = Signature(
    "record_outcome",
    keys=("stats",),
    argv=("agent", "ok", "latency_ms", "success_alpha", "latency_alpha", "task_type"),
)
RECORD_CIRCUIT_SIG = Signature(
    "record_circuit",
    keys=("circuit",),
    argv=(
        "ok",
        "now",
        "failure_threshold",
        "successes_to_close",
        "window_size",
        "minimum_calls",
        "failure_rate",
    ),
)
RECORD_OUTCOME_AND_CIRCUIT_SIG = Signature(
    "record_outcome_and_circuit",
    keys=("stats_key", "circuit_key"),
    argv=(*part("outcome", RECORD_OUTCOME_SIG.argv), *part("breaker", RECORD_CIRCUIT_SIG.argv)),
)
HEARTBEAT_SIG = Signature(
    "heartbeat",
    keys=("heartbeats", "statuses", "quarantined_until", "version"),
    argv=("agent", "now"),
)
RELEASE_LOCK_SIG = Signature("release_lock", keys=("lock",), argv=("token",))
FINISH_SIG = Signature(
    "finish",
    keys=(
        "ledger",
        "history",
        "counters",
        "plans",
        "deadlines",
        "parked",
        "outbox",
        "outbox_msg",
        "dead_letters",
        "events",
    ),
    argv=("state", "entry", "now", "ttl", "task_id", "inflight", "maxlen", "fields[]", "event..."),
)
TELEMETRY_ADD_SIG = Signature(
    "telemetry_add",
    keys=("minute", "hour", "total?"),
    argv=("minute_ttl", "hour_ttl", "counts..."),
)
SETTLE_RUN_SIG = Signature(
    "settle_run",
    keys=(
        "stats_key",
        "circuit_key",
        *part("finish", FINISH_SIG.keys),
        *part("count", TELEMETRY_ADD_SIG.keys),
    ),
    argv=("stats[]", "breaker[]", "ending[]", "counts[]", "dispatching[]", "result[]"),
)
ACCEPT_AND_ROUTE_SIG = Signature(
    "accept_and_route",
    keys=(
        *part("accept", ACCEPT_SIG.keys),
        *part("route", ROUTE_SIG.keys),
        "wrr_state",
        "pushes...",
    ),
    argv=("accepting[]", "routing[]", "payloads[]", "waiting[]", "picking[]"),
)
VANISHED_SIG = Signature(
    "vanished", keys=("inflight", "unacked", "lists..."), argv=("ledger_prefix", "routed_before")
)
POISON_RECORD_SIG = Signature(
    "poison_record",
    keys=("poison", "details", "counters", "events"),
    argv=("id", "ts", "detail", "keep", "maxlen", "event..."),
)
ADMIT_CLIENT_SIG = Signature(
    "admit_client", keys=("block", "bucket"), argv=("now", "rate", "burst", "check_block")
)
SNAPSHOT_SIG = Signature("snapshot", keys=("slot",), argv=("pattern", "count", "extra..."))
MIGRATE_HISTORY_SIG = Signature("migrate_history", keys=("old", "new"))
ENQUEUE_SIG = Signature(
    "enqueue",
    keys=("slot",),
    argv=(
        *CONTEXT,
        "task_id",
        "state",
        "capability_set",
        "priority",
        "client",
        "concurrency_key",
        "limit",
        "source",
        "expect_dispatch",
        "front",
        "entry",
        "event_type",
        "event_data",
        "avoid",
        "lost_from",
    ),
)
DEFER_SIG = Signature("defer", keys=("slot",), argv=("task_id", "due", "now", "entry", "prefer"))
FILL_SIG = Signature("fill", keys=("slot",), argv=(*CONTEXT, "agent", "limit", "trusted"))
#: The runtime transport's atomic fetch (runtime/fetch.py reads lua/fetch.lua itself: the
#: broker edge imports nothing of the store); `record` holds one flag per list, in order.
FETCH_SIG = Signature(
    "fetch", keys=("lists...",), argv=("unacked", "unacked_index", "now", "record...")
)
#: Every script by its `.lua` file (lua/backlog.lua and lua/sections.lua are functions the
#: others are composed with).
SIGNATURES = {
    sig.script: sig
    for sig in (
        WRR_PICK_SIG,
        WRR_STATE_SIG,
        AFFINITY_PICK_SIG,
        LOAD_FLEET_SIG,
        ACCEPT_SIG,
        TRANSITION_SIG,
        ROUTE_SIG,
        BEGIN_ATTEMPT_SIG,
        RECORD_OUTCOME_SIG,
        RECORD_CIRCUIT_SIG,
        RECORD_OUTCOME_AND_CIRCUIT_SIG,
        HEARTBEAT_SIG,
        RELEASE_LOCK_SIG,
        FINISH_SIG,
        TELEMETRY_ADD_SIG,
        SETTLE_RUN_SIG,
        ACCEPT_AND_ROUTE_SIG,
        VANISHED_SIG,
        POISON_RECORD_SIG,
        ADMIT_CLIENT_SIG,
        SNAPSHOT_SIG,
        MIGRATE_HISTORY_SIG,
        ENQUEUE_SIG,
        DEFER_SIG,
        FILL_SIG,
        FETCH_SIG,
    )
}


def _read(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def _as_function(name: str, body: str) -> str:
    """A script's body as a local Lua function of its own KEYS and ARGV."""
    return f"local function {name}(KEYS, ARGV)\n{body.strip()}\nend\n"


#: The key names and the backlog's functions (lua/backlog.lua) that dispatching steps use.
_BACKLOG = lua_header() + _read("backlog")

WRR_PICK = lua_header("INFLIGHT", "INFLIGHT_LOG", "INFLIGHT_SEQ", "TASK_PRE", "TASK_SUF") + _read(
    "wrr_pick"
)
WRR_STATE = _read("wrr_state")
LOAD_FLEET = _read("load_fleet")
ACCEPT = _read("accept")
TRANSITION = _read("transition")
ROUTE = lua_header() + _read("route")
_FINISH_BODY = _read("finish")
FINISH = _BACKLOG + _FINISH_BODY
TELEMETRY_ADD = _read("telemetry_add")
BEGIN_ATTEMPT = _read("begin_attempt")
RECORD_OUTCOME = _read("record_outcome")
RECORD_CIRCUIT = _read("record_circuit")
HEARTBEAT = _read("heartbeat")
VANISHED = _read("vanished")
RELEASE_LOCK = _read("release_lock")
POISON_RECORD = _read("poison_record")
ADMIT_CLIENT = _read("admit_client")
SNAPSHOT = _read("snapshot")
MIGRATE_HISTORY = _read("migrate_history")

# How a composed script splits its ARGV into sections: `section(from)`.
_SECTIONS = _read("sections")

RECORD_OUTCOME_AND_CIRCUIT = (
    _as_function("outcome", RECORD_OUTCOME)
    + _as_function("circuit", RECORD_CIRCUIT)
    + _read("record_outcome_and_circuit")
)

SETTLE_RUN = (
    _BACKLOG
    + _as_function("outcome", RECORD_OUTCOME)
    + _as_function("circuit", RECORD_CIRCUIT)
    + _as_function("finish", _FINISH_BODY)
    + _as_function("count", TELEMETRY_ADD)
    + _SECTIONS
    + _read("settle_run")
)

ACCEPT_AND_ROUTE = (
    _BACKLOG
    + _as_function("accept", ACCEPT)
    + _as_function("route", ROUTE)
    + _as_function("wrr", WRR_PICK)
    + _SECTIONS
    + _read("accept_and_route")
)

AFFINITY_PICK = _as_function("wrr", WRR_PICK) + _read("affinity_pick")

ENQUEUE = _BACKLOG + _read("enqueue")
DEFER = _BACKLOG + _read("defer")
FILL = _BACKLOG + _read("fill")
