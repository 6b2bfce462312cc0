"""Each Lua script's KEYS and ARGV are named once, and its `.lua` header lists the same.

The names live in store/scripts.py (a Signature per script); the `.lua` file's header lists the
same names in the same order; the names the Lua body binds from KEYS sit where the signature
says, and the builders take every name and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.store import scripts
from orchestrator.store.scripts import LUA_DIR, SIGNATURES, Signature, bare

#: `.lua` files that are no script: the functions the dispatching scripts are composed with.
NOT_SCRIPTS = {"backlog", "sections"}
#: A first line Redis reads as the script's flags (fetch.lua's): the header comes after it.
SHEBANG = "#!lua\n"


def header(text: str, label: str) -> tuple[str, ...]:
    """The names a `-- KEYS:` / `-- ARGV:` header lists (a line ending in `,` goes on)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"-- {label}:"))
    listed = lines[start].removeprefix(f"-- {label}:").strip()
    i = start
    while listed.endswith(","):
        i += 1
        listed += " " + lines[i].removeprefix("--").strip()
    if listed == "(none)":
        return ()
    return tuple(name.strip() for name in listed.split(","))


def lua_files() -> list[str]:
    return sorted(p.stem for p in Path(LUA_DIR).glob("*.lua") if p.stem not in NOT_SCRIPTS)


def test_every_script_has_a_signature_and_every_signature_a_script() -> None:
    assert lua_files() == sorted(SIGNATURES)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_lua_header_lists_the_signature(name: str) -> None:
    text = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8").removeprefix(SHEBANG)
    assert text.startswith("-- KEYS:"), "the header opens the file (after a `#!lua` line)"
    sig = SIGNATURES[name]
    assert header(text, "KEYS") == sig.keys
    assert header(text, "ARGV") == sig.argv


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_names_are_distinct_and_well_formed(name: str) -> None:
    sig = SIGNATURES[name]
    for names in (sig.keys, sig.argv):
        assert len(set(names)) == len(names)
        for n in names:
            assert re.fullmatch(r"([a-z_]+\.)?[a-z_]+(\?|\.\.\.|\[\])?", n), n
        # `...` only last; nothing required after an optional name.
        assert all(not n.endswith("...") for n in names[:-1])
        optional = [i for i, n in enumerate(names) if n.endswith("?")]
        if optional:
            assert all(n.endswith(("?", "...")) for n in names[optional[0] :])


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_body_binds_keys_where_the_signature_has_them(name: str) -> None:
    """`local a, b = KEYS[1], KEYS[2]`: each name is the one declared there;
    `local p_keys = {unpack(KEYS, i, j)}`: positions i..j are exactly the part p, and
    `local pushes = {unpack(KEYS, i)}` the rest, declared `pushes...` at i."""
    sig = SIGNATURES[name]
    text = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
    one = r"KEYS\[(\d+)\]|\{unpack\(KEYS, (\d+)(?:, (\d+))?\)\}"
    for names, values in re.findall(r"^local ([\w, ]+) = (.*KEYS.*)$", text, re.M):
        if not re.fullmatch(rf"({one})(, ({one}))*", values):
            continue  # not a binding (a call reading a key)
        found = re.findall(one, values)
        for local, (index, first, last) in zip(names.split(", "), found, strict=True):
            if index:
                assert bare(sig.keys[int(index) - 1]) == local, (local, index)
            elif local.endswith("_keys"):
                part = local.removesuffix("_keys")
                members = [i for i, n in enumerate(sig.keys, 1) if n.startswith(f"{part}.")]
                end = int(last) if last else len(sig.keys)
                assert members == list(range(int(first), end + 1)), local
            else:
                assert not last and int(first) == len(sig.keys), local
                assert sig.keys[-1] == f"{local}...", local


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_body_reads_no_key_or_argument_past_the_signature(name: str) -> None:
    sig = SIGNATURES[name]
    text = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
    for label, names in (("KEYS", sig.keys), ("ARGV", sig.argv)):
        if any(n.endswith(("...", "[]")) for n in names):
            continue  # the rest, or sections: any length
        used = [int(i) for i in re.findall(rf"{label}\[(\d+)\]", text)]
        assert max(used, default=0) <= len(names), label


def test_the_builders_take_every_name_and_nothing_else() -> None:
    sig = Signature("x", keys=("a", "b?", "c..."), argv=("n", "s[]", "p.one", "p.two?"))
    assert sig.key_list(a="A", b="B", c=["C", "D"]) == ["A", "B", "C", "D"]
    assert sig.key_list(a="A", b=None) == ["A"]
    assert sig.arg_list(n=1, s=["x", "y"], p=[7]) == [1, 2, "x", "y", 7]
    assert sig.arg_list(n=1, s=[], p=[7, 8]) == [1, 0, 7, 8]
    with pytest.raises(TypeError):
        sig.key_list(b="B")  # a is required
    with pytest.raises(TypeError):
        sig.key_list(a="A", z="Z")  # no such name
    with pytest.raises(TypeError):
        sig.key_list(a="A", b=None, c=["C"])  # c would land where b is read
    with pytest.raises(TypeError):
        sig.arg_list(n=1, s=[], p=[1, 2, 3])  # the part has two names


def test_the_composed_scripts_take_their_parts_whole() -> None:
    settle = scripts.SETTLE_RUN_SIG
    assert settle.keys[2:12] == scripts.part("finish", scripts.FINISH_SIG.keys)
    assert settle.keys[12:] == scripts.part("count", scripts.TELEMETRY_ADD_SIG.keys)
    both = scripts.ACCEPT_AND_ROUTE_SIG
    assert both.keys[:6] == scripts.part("accept", scripts.ACCEPT_SIG.keys)
    assert both.keys[6:14] == scripts.part("route", scripts.ROUTE_SIG.keys)
