"""Parsers of the settings' list-like values (`name=number,...`), kept apart from config.py."""

from __future__ import annotations

import re
import shlex
from typing import Any

from pydantic import ValidationError

NAME_RE = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
#: A dotted module path (ORCH_HANDLERS).
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def parse_handlers(value: Any) -> list[str]:
    """`a.b,c` (or a list) as module paths, each checked importable by its form."""
    if value is None or value == "":
        return []
    modules = value if isinstance(value, list) else str(value).split(",")
    modules = [m.strip() for m in modules if m.strip()]
    for module in modules:
        if not MODULE_RE.match(module):
            raise ValueError(f"{module!r} is not an importable module path")
    return modules


def check_command_line(value: str) -> str:
    """`value` unchanged, if a shell could split it into words (or it is blank)."""
    if value.strip():
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split like a shell command line: {exc}") from None
    return value


def parse_capabilities(raw: str | dict[str, Any] | None) -> dict[str, float]:
    """Parse `name=proficiency,...` (a bare name means 1.0) into a validated mapping."""
    if raw is None or raw == "":
        return {}
    items: dict[str, Any]
    if isinstance(raw, dict):
        items = dict(raw)
    else:
        items = {}
        for part in str(raw).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            items[name.strip()] = value.strip() if sep else 1.0
    parsed: dict[str, float] = {}
    for name, value in items.items():
        if not NAME_RE.match(name):
            raise ValueError(f"capability name {name!r} must be 1-64 chars of [a-z0-9_.-]")
        try:
            proficiency = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"proficiency of {name!r} must be a number (got {value!r})") from None
        if not 0 < proficiency <= 1:
            raise ValueError(f"proficiency of {name!r} must be in (0, 1] (got {value})")
        parsed[name] = proficiency
    return parsed


def parse_client_weights(raw: str | dict[str, Any] | None) -> dict[str, float]:
    """Parse `billing=2,reports=1` (ORCH_CLIENT_WEIGHTS): each client's share of the workers
    while clients wait; an unnamed client weighs 1."""
    if raw is None or raw == "":
        return {}
    items: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    if not isinstance(raw, dict):
        for part in str(raw).split(","):
            if not part.strip():
                continue
            name, sep, value = part.strip().partition("=")
            if not sep:
                raise ValueError(f"{part.strip()!r} must be client=weight")
            items[name.strip()] = value.strip()
    parsed: dict[str, float] = {}
    for name, value in items.items():
        if not CLIENT_WEIGHT_NAME_RE.match(name):
            raise ValueError(f"client id {name!r} must be 1-128 chars of [A-Za-z0-9._:@-]")
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"weight of {name!r} must be a number (got {value!r})") from None
        if not 0 < weight <= 1000:
            raise ValueError(f"weight of {name!r} must be in (0, 1000] (got {value})")
        parsed[name] = weight
    return parsed


CLIENT_WEIGHT_NAME_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}\Z")


def settings_problems(exc: ValidationError) -> list[str]:
    """One `ORCH_X: what is wrong (got ...)` line per error the settings model raised."""
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        name = f"ORCH_{field.upper()}" if field else "configuration"
        message = str(err["msg"]).removeprefix("Value error, ")
        got = err.get("input")
        quiet = isinstance(got, dict) or field == "" or "(got" in message
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"{name}: {message}{shown}")
    return lines
