"""Distinct ids and names never share a Redis key or a hash field.

Every key builder of store.keys gets ids made to collide under a scheme that appends to an id
(`X` and `X:history`, and every other suffix or prefix a key could have used); every key
they make is different, from each other and from every fixed key. The scheme behind it: each
per-id kind owns its `orch:<kind>:` prefix, which no other key begins with."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from orchestrator.backup.restore import current_name
from orchestrator.config import AGENT_ID_RE, load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import CLIENT_ID_RE, TASK_ID_RE, TYPE_RE
from orchestrator.store import keys

#: Words a key layout could put after or before an id.
WORDS = ["history", "task", "msg", "mark", "version", "slo", "total", "m", "h", "1-0", "pybreaker"]
IDS = sorted(
    {"X", "X:", "x", "X.history", "history", "task", "X:X", "1-0", "X:1-0"}
    | {f"X:{w}" for w in WORDS}
    | {f"{w}:X" for w in WORDS}
    | {f"X:{a}:{b}" for a, b in itertools.product(["history", "task", "mark"], repeat=2)}
)

#: Every per-id key builder, by kind, with the ids it takes.
BUILDERS: dict[str, Callable[[str], str]] = {
    "task": keys.task_key,
    "history": keys.history_key,
    "wrr": keys.wrr_key,
    "affinity": keys.affinity_key,
    "circuit": keys.circuit_key,
    "inflight": keys.inflight_key,
    "failures": keys.failures_key,
    "lock": keys.lock_key,
    "rate": keys.rate_key,
    "block": keys.block_key,
    "handler_circuit": lambda name: keys.HANDLER_CIRCUIT_PREFIX + name,
    "tm:m": lambda slot: keys.telemetry_key("m", int(slot)),
    "tm:h": lambda slot: keys.telemetry_key("h", int(slot)),
    **{
        f"sec:{kind}": (lambda k: lambda minute: keys.rejections_key(int(minute), k))(kind)
        for kind in keys.REJECTION_KINDS
    },
}
NUMERIC = {"tm:m", "tm:h", *(f"sec:{k}" for k in keys.REJECTION_KINDS)}
FIXED = {
    name: value
    for name, value in vars(keys).items()
    if name.isupper()
    and isinstance(value, str)
    and value.startswith(keys.PREFIX)
    and not name.endswith("_PREFIX")
    and value != keys.PREFIX
}


def prefix_of(kind: str) -> str:
    """A builder's prefix: what it puts before the id."""
    sample = "12345" if kind in NUMERIC else "SAMPLE"
    key = BUILDERS[kind](sample)
    assert key.endswith(sample), f"{kind}: something comes after the id in {key!r}"
    return key[: -len(sample)]


def test_every_valid_id_is_one_the_table_covers() -> None:
    for name in IDS:
        assert TASK_ID_RE.match(name) and CLIENT_ID_RE.match(name) and AGENT_ID_RE.match(name)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_kind_puts_nothing_after_the_id_and_owns_its_prefix(kind: str) -> None:
    own = prefix_of(kind)
    assert own.startswith(keys.PREFIX) and own.endswith(":")
    for other in BUILDERS:
        if other != kind:
            theirs = prefix_of(other)
            assert not own.startswith(theirs) and not theirs.startswith(own), (kind, other)
    for name, fixed in FIXED.items():
        assert not fixed.startswith(own), f"{name} = {fixed!r} is under {kind}'s prefix"


def test_distinct_ids_give_distinct_keys_across_every_kind() -> None:
    made: dict[str, tuple[str, str]] = {}
    for kind, build in BUILDERS.items():
        ids = [str(n) for n in (0, 1, 10, 11, 12345)] if kind in NUMERIC else IDS
        for name in ids:
            key = build(name)
            assert key not in made, f"{kind}({name!r}) and {made[key]} are both {key!r}"
            assert key not in FIXED.values(), f"{kind}({name!r}) is a fixed key: {key!r}"
            made[key] = (kind, name)
    pairs = [(h, e) for h in ["a", "a:b", "a:b:1-0", "mod.fn"] for e in ["1-0", "2-0", "1-1"]]
    marks = {keys.event_mark_key(h, e) for h, e in pairs}
    assert len(marks) == len(pairs) and not marks & set(made)


@pytest.mark.parametrize(
    ("task_id", "task", "history"),
    [
        ("X", "orch:task:X", "orch:history:X"),
        ("X:history", "orch:task:X:history", "orch:history:X:history"),
        ("history:X", "orch:task:history:X", "orch:history:history:X"),
    ],
)
def test_a_task_and_its_history_have_keys_of_their_own(task_id, task, history) -> None:
    assert (keys.task_key(task_id), keys.history_key(task_id)) == (task, history)
    assert keys.history_key("X") != keys.task_key("X:history")
    assert keys.legacy_history_key("X") == keys.task_key("X:history")  # what the old layout did


def test_stats_fields_of_distinct_agents_and_types_differ() -> None:
    """agent_stats joins an agent id, a type and a figure with `|`, which neither contains."""
    agents = ["a", "a.ok", "a:ok", "ok", "a@h", "sr"]
    types = ["ok", "fail", "n", "sr", "lat", "a", "ok.n"]
    fields: dict[str, tuple[str, ...]] = {}
    for agent in agents:
        assert AGENT_ID_RE.match(agent)
        for figure in ("ok", "fail", "sr", "lat"):
            field = f"{agent}|{figure}"
            assert fields.setdefault(field, (agent, figure)) == (agent, figure)
        for kind in types:
            assert TYPE_RE.match(kind)
            for figure in ("n", "sr", "lat"):
                field = f"{agent}|{kind}|{figure}"
                assert fields.setdefault(field, (agent, kind, figure)) == (agent, kind, figure)


@pytest.mark.parametrize("agent_id", ["a|b", "h*st{1}|x@vm", "a b", "", "x" * 129, "a\n"])
def test_an_agent_id_that_could_break_a_field_is_refused(agent_id: str) -> None:
    assert not AGENT_ID_RE.match(agent_id)
    with pytest.raises(ConfigError, match="ORCH_AGENT_ID"):
        load_settings(agent_id=agent_id or " ")


# DUMP payloads open with the value's RDB type: 18 = a list (quicklist 2), 16 = a hash
# (listpack); the rest of the payload does not matter to the name.
LIST_DUMP, HASH_DUMP = b"\x12rest", b"\x10rest"


@pytest.mark.parametrize(
    ("key", "payload", "name"),
    [
        ("orch:task:X:history", LIST_DUMP, "orch:history:X"),
        ("orch:task:a:b:history", LIST_DUMP, "orch:history:a:b"),
        ("orch:task:X:history", HASH_DUMP, "orch:task:X:history"),  # task `X:history`
        ("orch:task:X", HASH_DUMP, "orch:task:X"),
        ("orch:history:X", LIST_DUMP, "orch:history:X"),
        ("orch:task::history", LIST_DUMP, "orch:task::history"),
        ("orch:metrics:history", LIST_DUMP, "orch:metrics:history"),
    ],
)
def test_a_restore_names_an_older_layouts_history_as_now(key, payload, name) -> None:
    assert current_name(key, payload) == name
