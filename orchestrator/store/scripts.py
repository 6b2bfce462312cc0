"""The Lua scripts the state store runs, read once from `lua/*.lua`: each is one round trip.

Every script is registered by the store with `register_script` (redis-py sends EVALSHA, and
the script's text once if Redis does not know it yet), so a call stays one round trip. Each
`.lua` file opens with what it takes (KEYS, ARGV) and returns; the pure functions they agree
with (routing.weights.wrr_step, recovery.breaker.record_success/record_failure) are tested
against them. The composed scripts at the end run several of these in one atomic step: each
part becomes a local Lua function of its own KEYS and ARGV, then the `.lua` file of the
composed script calls them.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.store.keys import lua_header

LUA_DIR = Path(__file__).with_name("lua")


def _read(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def _as_function(name: str, body: str) -> str:
    """A script's body as a local Lua function of its own KEYS and ARGV."""
    return f"local function {name}(KEYS, ARGV)\n{body.strip()}\nend\n"


#: The key names and the backlog's functions (lua/backlog.lua) that dispatching steps use.
_BACKLOG = lua_header() + _read("backlog")

WRR_PICK = _read("wrr_pick")
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
    + _SECTIONS
    + _read("accept_and_route")
)

AFFINITY_PICK = _as_function("wrr", WRR_PICK) + _read("affinity_pick")

ENQUEUE = _BACKLOG + _read("enqueue")
DEFER = _BACKLOG + _read("defer")
FILL = _BACKLOG + _read("fill")
