"""The event catalogue holds every event type the code writes, and no other, with its data keys.

The types are read from the code itself: each `store.event("...")`, `OrchestrationEvent(type=
"...")` and `event="..."` in orchestrator/ and workers/, the `event(cx, '...')` calls of the Lua
scripts, and the families whose type is computed (a terminal task state, a breaker transition,
an alert's edge). A new place that writes an event with a computed type fails
test_every_computed_event_type_is_known until it is added below.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from typing import NamedTuple

import pytest

from orchestrator.backup.archive import BackupInfo
from orchestrator.events.catalogue import BY_TYPE, CATALOGUE
from orchestrator.models import TaskState
from orchestrator.monitoring.anomaly import Detection
from orchestrator.monitoring.regression import Regression
from orchestrator.recovery.breaker import BreakerTransition
from orchestrator.scaling.decide import ScaleExecution
from orchestrator.store.keys import ON_DEMAND_EVENTS
from tests.support import REPO_ROOT

SOURCES = sorted(
    [*(REPO_ROOT / "orchestrator").rglob("*.py"), *(REPO_ROOT / "workers").rglob("*.py")]
)
LUA = sorted((REPO_ROOT / "orchestrator" / "store" / "lua").glob("*.lua"))
#: Arguments of a store.event call that are not keys of the event's data.
NOT_DATA = {"now", "source", "pipe", "severity"}
LEVELS = {"info", "warning", "error", "critical"}


class Site(NamedTuple):
    """One place that writes an event: its type (or the expression computing it), the keys of
    its data it names (None: not visible there) and its severity (None: computed)."""

    where: str
    type: str
    computed: bool
    keys: frozenset[str] | None
    severity: str | None


def _severity(call: ast.Call) -> str | None:
    for kw in call.keywords:
        if kw.arg == "severity":
            value = kw.value
            if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
                return value.attr.lower()
            return None
    return "info"


def _dict_keys(node: ast.expr | None) -> frozenset[str] | None:
    if not isinstance(node, ast.Dict):
        return None
    return frozenset(k.value for k in node.keys if isinstance(k, ast.Constant))


@functools.cache
def python_sites() -> list[Site]:
    sites = []
    for path in SOURCES:
        where = str(path.relative_to(REPO_ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func, kws = node.func, {kw.arg: kw.value for kw in node.keywords if kw.arg}
            if isinstance(func, ast.Attribute) and func.attr == "event" and node.args:
                first = node.args[0]
                literal = isinstance(first, ast.Constant)
                type_ = first.value if literal else ast.unparse(first)
                keys = frozenset(kw.arg for kw in node.keywords if kw.arg) - NOT_DATA
                sites.append(Site(where, type_, not literal, keys, _severity(node)))
            elif isinstance(func, ast.Name) and func.id == "OrchestrationEvent" and "type" in kws:
                value = kws["type"]
                literal = isinstance(value, ast.Constant)
                type_ = value.value if literal else ast.unparse(value)
                sites.append(
                    Site(where, type_, not literal, _dict_keys(kws.get("data")), _severity(node))
                )
            elif "event" in kws:  # store helpers that write the event they are given
                value = kws["event"]
                keys = None
                if isinstance(value, ast.Tuple):  # (type, data)
                    value, keys = value.elts[0], _dict_keys(value.elts[1])
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    sites.append(Site(where, value.value, False, keys, _severity(node)))
    return sites


@functools.cache
def lua_sites() -> list[Site]:
    call = re.compile(r"event(?:_if_wanted)?\(cx, '([^']+)', '[^']*', \{([^}]*)\}", re.S)
    sites = []
    for path in LUA:
        for type_, table in call.findall(path.read_text(encoding="utf-8")):
            keys = frozenset(re.findall(r"(\w+)\s*=", table))
            sites.append(Site(path.name, type_, False, keys, "info"))  # the Lua writer: info
    return sites


def edge_types() -> set[str]:
    """What the `event_type` properties return as constants (an alert's firing and resolved)."""
    found = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "event_type":
                returns = (r.value for r in ast.walk(node) if isinstance(r, ast.Return))
                found |= {v.value for v in returns if isinstance(v, ast.Constant) and v.value}
    return found


#: Every computed type, by where and how: the types it can take. An empty set: the types come
#: from literal `event=` arguments of its callers (or it writes what it is given, or it reads).
COMPUTED: dict[tuple[str, str], set[str]] = {
    ("orchestrator/store/ledger.py", "f'task.{state.value}'"): {
        f"task.{s.value}" for s in TaskState if s.terminal
    },
    ("orchestrator/store/agents.py", "f'circuit.{transition}'"): {
        t.event_type for t in BreakerTransition
    },
    # admit_circuit: a router's admission only ever half-opens a breaker.
    ("orchestrator/store/agents.py", "decision.transition.event_type"): {
        BreakerTransition.HALF_OPENED.event_type
    },
    ("orchestrator/monitoring/loops.py", "t.event_type"): edge_types(),
    ("orchestrator/store/agents.py", "event"): set(),  # set_status(event=...)
    ("orchestrator/store/sleep.py", "event"): set(),  # fall_asleep, wake_up
    ("orchestrator/store/base.py", "type_"): set(),  # store.event itself
    ("orchestrator/store/base.py", "fields.get('type', '')"): set(),  # reading the stream
}


def all_sites() -> list[Site]:
    return python_sites() + lua_sites()


def written() -> dict[str, list[Site]]:
    """Each type the code writes, with the sites that write it."""
    out: dict[str, list[Site]] = {}
    for site in all_sites():
        types = COMPUTED.get((site.where, site.type), set()) if site.computed else {site.type}
        for type_ in types:
            out.setdefault(type_, []).append(site)
    return out


def test_every_computed_event_type_is_known():
    computed = {(s.where, s.type) for s in python_sites() if s.computed}
    assert computed == set(COMPUTED)


def test_the_catalogue_lists_every_type_written_and_no_other():
    assert set(written()) == set(BY_TYPE)
    assert len(BY_TYPE) == len(CATALOGUE), "a type is listed twice"


@pytest.mark.parametrize("type_", sorted(BY_TYPE))
def test_the_data_keys_written_are_in_the_catalogue(type_):
    spec = BY_TYPE[type_]
    for site in written().get(type_, []):
        if site.keys is not None:
            assert site.keys <= set(spec.fields), f"{site.where}: {sorted(site.keys)}"
        if site.severity is not None and spec.severity in LEVELS:
            assert site.severity == spec.severity, site.where


@pytest.mark.parametrize(
    ("type_", "keys"),
    [
        ("anomaly.detected", set(Detection.model_fields) | {"series"}),
        ("regression.detected", set(Regression.model_fields) | {"type"}),
        ("backup.completed", {f.name for f in dataclasses.fields(BackupInfo)}),
        ("scale.executed", set(ScaleExecution.model_fields) - {"ts"}),
    ],
)
def test_data_made_from_a_model_lists_its_fields(type_, keys):
    assert set(BY_TYPE[type_].fields) == keys


def test_on_demand_types_are_the_ones_the_store_writes_on_demand():
    assert {s.type for s in CATALOGUE if s.on_demand} == set(ON_DEMAND_EVENTS)


def test_every_entry_says_what_it_means():
    for spec in CATALOGUE:
        assert spec.meaning.endswith(".") and spec.fields and spec.source, spec.type
        assert spec.severity.split()[0] in LEVELS or spec.severity.startswith("the "), spec.type
