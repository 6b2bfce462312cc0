"""The handler registry: which function runs a task of a given type on an agent."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from orchestrator.errors import ConfigError

Handler = Callable[[dict[str, Any]], Any]

_HANDLERS: dict[str, Handler] = {}


def capability(name: str) -> Callable[[Handler], Handler]:
    """Register `fn` as the handler for tasks of type `name`.

    Handler modules are imported by agent workers before the pool forks, so the pool's
    children inherit the registry.
    """

    def register(fn: Handler) -> Handler:
        existing = _HANDLERS.get(name)
        if existing is not None and existing is not fn:
            qual = f"{existing.__module__}.{existing.__qualname__}"
            raise ConfigError(f"capability {name!r} already has a handler ({qual})")
        _HANDLERS[name] = fn
        return fn

    return register


def get_handler(name: str) -> Handler | None:
    return _HANDLERS.get(name)


def import_handlers(modules: Iterable[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"ORCH_HANDLERS: cannot import {module!r}: {exc}") from exc


def missing_handlers(capabilities: Iterable[str]) -> list[str]:
    return sorted(c for c in capabilities if c not in _HANDLERS)
