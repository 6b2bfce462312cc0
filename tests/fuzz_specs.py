"""Generated `orchestrator.submit` kwargs: specs that are valid, or broken in one or more fields.

The strategy (`submissions`) draws specs that are valid, or broken in one or several fields:
wrong types, out-of-range numbers, bools where integers go, NaN and infinities, unknown
fields, huge strings and payloads, odd unicode (lone surrogates, control characters,
homoglyphs, a trailing newline), deep nesting, dict keys that are not strings, None
everywhere, and objects kombu's JSON reserves for its own type tags. tests/fuzz_oracle.py
judges them.
"""

from __future__ import annotations

import functools
import string
from typing import Any

from hypothesis import strategies as st

from tests.fuzz_oracle import (
    CLIENT_ID_CHARS,
    EDGE_MAX_DEPTH,
    MAX_DEPTH,
    MIN_RUN_TIMEOUT_S,
    PAYLOAD_MAX_DEPTH,
    RUNNABLE,
    SPEC_FIELDS,
    TASK_ID_CHARS,
    TRICKY_CHARS,
    TYPE_CHARS,
)

# --- the strategy ------------------------------------------------------------------------
# Every strategy is built once (per payload limit): Hypothesis validates a strategy the first
# time it draws from it, and rebuilding them per example made generation five times slower.

MISSING = object()  # a field left out of the kwargs

odd_chars = st.one_of(
    st.characters(),
    st.sampled_from(TRICKY_CHARS),
    st.integers(0xD800, 0xDFFF).map(chr),
)
#: Hypothesis' own unicode text (fast to draw), or such text with one tricky character in it.
odd_text = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=6), odd_chars, st.text(max_size=6)),
)


@functools.cache
def _with_one_bad_char(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    """A string of the right length from `alphabet`, but for one character outside it."""
    bodies = sized_text(alphabet, max(low - 1, 0), high - 1)
    outsiders = odd_chars.filter(lambda c: c not in alphabet)
    return st.builds(
        lambda body, bad, at: body[: at % (len(body) + 1)] + bad + body[at % (len(body) + 1) :],
        bodies,
        outsiders,
        st.integers(0, high),
    )


def _repeat(chunk: str, n: int) -> str:
    return (chunk * (n // len(chunk) + 1))[:n]


@functools.cache
def sized_text(alphabet: str | None, low: int, high: int) -> st.SearchStrategy[str]:
    """Text of any length in [low, high], cheap to draw at any length: a short random
    string of `alphabet` (None: odd characters), mostly repeated to a drawn length."""
    if alphabet is None:
        chunks, short = odd_text.filter(bool), odd_text.filter(lambda t: len(t) >= low)
    else:
        chunks = st.text(st.sampled_from(alphabet), min_size=1, max_size=8)
        short = st.text(st.sampled_from(alphabet), min_size=max(low, 0), max_size=12)
    repeated = st.builds(_repeat, chunks, st.integers(low, high))
    return repeated if low > 12 else st.one_of(repeated, short)


def _huge_text(low: int, high: int) -> st.SearchStrategy[str]:
    """Long ASCII text."""
    return sized_text(
        string.ascii_letters + string.digits + "!#$%&()*+,-./<=>?@[]^_{|}~ ", low, high
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.integers(min_value=10**20, max_value=10**60),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
#: Keys JSON turns into strings (1 -> "1", None -> "null", 1.5 -> "1.5", nan -> "NaN").
json_keys = st.one_of(odd_text, st.integers(-1000, 1000), st.booleans(), st.none(), st.floats())


def _nest(depth: int, kind: str, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        use_list = kind == "list" or (kind == "mixed" and level % 2)
        value = [value] if use_list else {"d": value}
    return value


deep_values = st.builds(
    _nest,
    st.one_of(st.integers(1, 64), st.integers(64, MAX_DEPTH)),
    st.sampled_from(["list", "dict", "mixed"]),
    json_scalars,
)

json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(json_keys, inner, max_size=3)
    ),
    max_leaves=6,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=3)
small_objects = st.dictionaries(json_keys, json_scalars, max_size=2)


def _padded(base: dict[Any, Any], pad: int, char: str, ascii_only: bool) -> dict[Any, Any]:
    # Non-ASCII counts as its \u escape: 6 bytes for "é", 12 for an emoji.
    return {**base, "pad": "x" * max(pad - 10, 1) if ascii_only else char * max(pad // 6, 1)}


@functools.cache
def payloads(limit: int) -> st.SearchStrategy[dict[Any, Any]]:
    """A JSON object, small, deep, or near the size limit (either side of it)."""
    return st.one_of(
        json_objects,
        json_objects,
        st.builds(lambda base, deep: {**base, "deep": deep}, small_objects, deep_values),
        st.builds(
            _padded,
            small_objects,
            st.integers(limit - 64, limit + 64),
            st.sampled_from(["x", "\u00e9", "\U0001f600"]),
            st.booleans(),
        ),
    )


# Valid values, field by field (MISSING leaves the field out).
valid_task_ids = st.one_of(st.just(MISSING), st.none(), sized_text(TASK_ID_CHARS, 1, 128))
valid_types = sized_text(TYPE_CHARS, 1, 64)
valid_priorities = st.one_of(st.just(MISSING), st.integers(0, 9))
valid_max_retries = st.one_of(st.just(MISSING), st.integers(0, 20))
run_timeouts = st.one_of(
    st.just(MISSING),
    st.integers(int(MIN_RUN_TIMEOUT_S), 86400),
    st.floats(MIN_RUN_TIMEOUT_S, 86400),
)
park_timeouts = st.one_of(
    run_timeouts, st.floats(0, 86400, exclude_min=True), st.just(5e-324), st.just(86400.0)
)
valid_affinity = st.one_of(st.just(MISSING), st.none(), sized_text(None, 1, 256))
valid_clients = st.one_of(st.just(MISSING), st.none(), sized_text(CLIENT_ID_CHARS, 1, 128))
run_capabilities = st.one_of(
    st.just(MISSING), st.none(), st.just([]), st.integers(1, 16).map(lambda n: [RUNNABLE] * n)
)
park_capabilities = st.lists(valid_types, min_size=1, max_size=15).map(lambda c: [*c, "gpu"])
#: A valid type for a spec that parks: any but the runnable one, whose capabilities then
#: default to [type] (nobody has it) or name one nobody has.
park_specs = st.one_of(
    st.tuples(valid_types.filter(lambda t: t != RUNNABLE), st.just(MISSING)),
    st.tuples(valid_types, park_capabilities),
)

# Broken values, field by field: each breaks its field's rule whatever else the spec holds.
not_a_string = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
not_none = not_a_string.filter(lambda v: v is not None)
not_an_integer = st.one_of(
    st.booleans(),
    st.none(),
    st.floats(),  # 5.0 too: JSON keeps it a float
    st.integers(0, 9).map(str),
    st.lists(st.integers(0, 9), min_size=1, max_size=2),
    st.just({"value": 5}),
)


def out_of_range(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.sampled_from([low - 1, high + 1, 10**30, -(10**30), 2**63, 2**64]),
    )


@functools.cache
def broken_values(limit: int) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "task_id": st.one_of(
            st.just(""),
            sized_text(TASK_ID_CHARS, 129, 300),
            _huge_text(1_000, 8_000),
            _with_one_bad_char(TASK_ID_CHARS, 1, 128),
            sized_text(TASK_ID_CHARS, 1, 20).map(lambda s: s + "\n"),
            not_none,
        ),
        "type": st.one_of(
            st.just(MISSING),
            st.sampled_from(["", "Echo", "ECHO", "echo\n", " echo", "echo ", "\u0435cho"]),
            sized_text(TYPE_CHARS, 65, 200),
            _huge_text(1_000, 8_000),
            _with_one_bad_char(TYPE_CHARS, 1, 64),
            not_a_string,
        ),
        "payload": st.one_of(
            st.lists(json_values, max_size=3),
            json_scalars.filter(lambda v: v is not None),
            st.sampled_from([float("nan"), float("inf"), -float("inf")]),
            payloads(limit).map(lambda p: {**p, "bad": float("nan")}),
            payloads(limit).map(lambda p: {**p, "bad": [1, {"x": float("inf")}]}),
            st.integers(limit + 1, 3 * limit).map(lambda n: {"big": "x" * n}),
            st.builds(  # deeper than the rule allows, within what a worker can carry
                _nest,
                st.integers(PAYLOAD_MAX_DEPTH, EDGE_MAX_DEPTH - 3),
                st.sampled_from(["list", "dict", "mixed"]),
                json_scalars,
            ).map(lambda deep: {"d": deep}),
        ),
        "required_capabilities": st.one_of(
            valid_types,
            st.dictionaries(valid_types, st.integers(), min_size=1, max_size=2),
            st.integers(),
            st.booleans(),
            st.lists(st.just(RUNNABLE), min_size=17, max_size=40),
            st.builds(
                lambda good, bad: [*good, bad],
                st.lists(valid_types, max_size=4),
                st.one_of(
                    st.sampled_from(["", "Echo", "echo\n", "e" * 65]),
                    _with_one_bad_char(TYPE_CHARS, 1, 64),
                    not_a_string,
                ),
            ),
        ),
        "priority": st.one_of(out_of_range(0, 9), not_an_integer),
        "timeout_s": st.one_of(
            st.sampled_from(
                [0, 0.0, -0.0, -1, 86400.001, 86401, 1e308, 10**400, float("inf"), float("nan")]
            ),
            st.floats(max_value=0),
            st.floats(min_value=86400, exclude_min=True),
            st.integers(max_value=0),
            st.booleans(),
            st.none(),
            st.sampled_from(["300", [300], {"s": 300}]),
        ),
        "max_retries": st.one_of(out_of_range(0, 20), not_an_integer),
        "affinity_key": st.one_of(
            st.just(""),
            sized_text(None, 257, 400),
            _huge_text(1_000, 8_000),
            not_none,
        ),
        "client_id": st.one_of(
            st.just(""),
            sized_text(CLIENT_ID_CHARS, 129, 300),
            _with_one_bad_char(CLIENT_ID_CHARS, 1, 128),
            st.sampled_from(["svc\n", "svc one", "svc/1", "\u0435svc"]),
            not_none,
        ),
    }


#: Unknown field names: typos, Python's own names (the task takes **fields), odd text.
extra_names = st.one_of(
    st.sampled_from(
        [
            "priorty",
            "Type",
            "type ",
            "self",
            "args",
            "fields",
            "kwargs",
            "task",
            "__class__",
            "",
            " ",
            "a.b",
            "a; type",
            "type: x",
            "\n",
            "queue",
            "eta",
        ]
    ),
    odd_text.filter(lambda s: s not in SPEC_FIELDS),
    _huge_text(300, 3_000),
    st.integers(-5, 5),  # JSON makes the name "3"
    st.none(),  # "null"
    st.booleans(),  # "true"
)
extra_fields = st.lists(st.tuples(extra_names, json_values), min_size=1, max_size=3)
fields_to_break = st.lists(
    st.sampled_from([*SPEC_FIELDS, "extra"]), min_size=1, max_size=4, unique=True
)


@functools.cache
def valid_fields(limit: int) -> st.SearchStrategy[dict[str, Any]]:
    """A spec meant to be valid: runnable by the echo agent (3 in 4), or needing a capability
    nobody has. Its payload is drawn on both sides of the size and depth limits, so the
    oracle, not this name, says whether it is."""
    runnable = st.tuples(st.just(RUNNABLE), run_capabilities, run_timeouts)
    parking = st.builds(lambda tc, timeout: (*tc, timeout), park_specs, park_timeouts)

    def spec(plan: tuple[Any, ...], *values: Any) -> dict[str, Any]:
        type_, caps, timeout = plan
        task_id, payload, priority, retries, affinity, client = values
        fields = {
            "task_id": task_id,
            "type": type_,
            "payload": payload,
            "required_capabilities": caps,
            "priority": priority,
            "timeout_s": timeout,
            "max_retries": retries,
            "affinity_key": affinity,
            "client_id": client,
        }
        return {k: v for k, v in fields.items() if v is not MISSING}

    return st.builds(
        spec,
        st.sampled_from([runnable, runnable, runnable, parking]).flatmap(lambda plan: plan),
        valid_task_ids,
        st.one_of(st.just(MISSING), st.none(), payloads(limit)),
        valid_priorities,
        valid_max_retries,
        valid_affinity,
        valid_clients,
    )


@st.composite
def _broken_fields(draw: st.DrawFn, limit: int) -> dict[Any, Any]:
    fields: dict[Any, Any] = draw(valid_fields(limit))
    broken = broken_values(limit)
    for name in draw(fields_to_break):
        if name == "extra":
            fields.update(draw(extra_fields))
            continue
        value = draw(broken[name])
        if value is MISSING:
            fields.pop(name, None)
        else:
            fields[name] = value
    return fields


@functools.cache
def broken_fields(limit: int) -> st.SearchStrategy[dict[Any, Any]]:
    """A valid spec with one to four fields broken, unknown fields added, or both."""
    return _broken_fields(limit)


none_everywhere = st.lists(st.sampled_from(SPEC_FIELDS), unique=True).map(
    lambda names: dict.fromkeys(names)
)
#: Objects shaped like kombu's own type tags: plain JSON to the sender, but kombu's decoder
#: turns them into Python objects (datetime, bytes, UUID, ...) or refuses them outright.
kombu_tags = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(["datetime", "bytes", "decimal", "uuid", "set", "x"]),
        "__value__": st.sampled_from(["2024-01-01T00:00:00", "abc", "1.5", "not a date", 3]),
    }
)


def _tagged(fields: dict[str, Any], where: str, tag: dict[str, Any]) -> dict[str, Any]:
    if where == "in-payload":
        return {**fields, "payload": {**(fields.get("payload") or {}), "when": tag}}
    return {**fields, where: tag}


@functools.cache
def submissions(limit: int) -> st.SearchStrategy[dict[Any, Any]]:
    """Submit kwargs: 40 % meant valid, 48 % broken, 6 % None everywhere, 6 % kombu-tagged
    (in a run about a quarter come out valid, the rest invalid or refused at the edge)."""
    tagged = st.builds(
        _tagged,
        valid_fields(limit),
        st.sampled_from(["payload", "in-payload", "priority", "affinity_key"]),
        kombu_tags,
    )
    kinds = [valid_fields(limit)] * 20 + [broken_fields(limit)] * 24 + [none_everywhere, tagged] * 3
    return st.sampled_from(kinds).flatmap(lambda kind: kind)


def edge_cases(limit: int) -> list[dict[Any, Any]]:
    """Hand-picked submissions every run includes, whatever Hypothesis draws."""
    at_limit = {"x": "y" * (limit - len('{"x":""}'))}  # exactly `limit` bytes encoded
    return [
        {"type": RUNNABLE, "self": 1},  # the task's own parameter names
        {"type": RUNNABLE, "args": [1], "fields": {}, "kwargs": {}},
        {"type": RUNNABLE, "": 1, " ": 2, "a; type": 3, "type: x": 4, "\n": 5},
        {"type": RUNNABLE, "\ud800": 1},
        {"type": RUNNABLE + "\n"},
        {"type": RUNNABLE, "task_id": "edge-1\n"},
        {"type": RUNNABLE, "client_id": "svc\n"},
        {"type": RUNNABLE, "required_capabilities": [RUNNABLE + "\n"]},
        {"type": RUNNABLE, "affinity_key": "\ud800"},
        {"type": RUNNABLE, "affinity_key": "\U0001f600"},
        {"type": RUNNABLE, "payload": {"\ud800": 1}},
        {"type": RUNNABLE, "payload": {"x": "\U0001f600\udfff"}},
        {"type": RUNNABLE, "payload": at_limit},
        {"type": RUNNABLE, "payload": {**at_limit, "x": at_limit["x"] + "y"}},
        {"type": RUNNABLE, "payload": {"d": _nest(PAYLOAD_MAX_DEPTH - 1, "list", 1)}},
        {"type": RUNNABLE, "payload": {"d": _nest(PAYLOAD_MAX_DEPTH, "list", 1)}},
        {"type": RUNNABLE, "payload": {"d": _nest(EDGE_MAX_DEPTH - 3, "dict", 1)}},
        {"type": RUNNABLE, "payload": {"d": _nest(EDGE_MAX_DEPTH - 2, "dict", 1)}},
        {"type": RUNNABLE, "payload": {"d": _nest(600, "list", 1)}},
        {"type": RUNNABLE, "payload": {"d": _nest(1_500, "list", 1)}},
        {"type": RUNNABLE, "payload": {"__type__": "x", "__value__": 1}},
        {"type": RUNNABLE, "payload": {"__type__": "datetime", "__value__": "2024-01-01"}},
        {"type": RUNNABLE, "priority": True, "max_retries": False},
        {"type": RUNNABLE, "priority": 5.0, "timeout_s": float("nan")},
        {"type": RUNNABLE, "timeout_s": 10**400, "max_retries": 10**30},
        {"type": RUNNABLE, "payload": {"n": 10**4000}},  # a 4001-digit number
        {1: "one", None: "null", False: "false", 2.5: "2.5", "type": RUNNABLE},
        dict.fromkeys(SPEC_FIELDS),
        {},
    ]
