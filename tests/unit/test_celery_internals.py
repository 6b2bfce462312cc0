"""The Celery internals the result aliases build on are still the ones they were read against.

orchestrator/runtime/results.py overrides the Redis result backend's private `_set` (a copy of
its SET and PUBLISH, with the task's aliases read in the same MULTI) and installs its classes
through the loader's `override_backends`. A Celery whose `set`, `_set` or backend lookup
changed may write results the override no longer mirrors; these checks say so before a
worker does.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import celery
import pytest
from celery.app.backends import by_name
from celery.backends.base import Backend, BaseKeyValueStoreBackend
from celery.backends.redis import RedisBackend

from orchestrator.config import load_settings
from orchestrator.runtime import results
from orchestrator.runtime.celeryconf import create_app

RECHECK = (
    "Celery {version}'s {what} is not what orchestrator/runtime/results.py was read against "
    "(Celery 5.7.0): carry the change over to _Aliasing._set, install() or success_write "
    "(and settle_run.lua's result write), then update the "
    "digest in tests/unit/test_celery_internals.py"
)
DIGESTS: dict[str, tuple[Callable[..., Any], str]] = {
    "RedisBackend._set": (RedisBackend._set, "7996c210d39a35ef"),  # copied, with the aliases
    "RedisBackend.set": (RedisBackend.set, "a6ef6953d47016a1"),  # the caller of _set
    "backends.by_name": (by_name, "d1cf56022827c1f4"),  # reads loader.override_backends
    # settle_run writes a success as _store_result does (not over a SUCCESS), and the agent
    # sets request.ignore_result so that mark_as_done stores nothing more
    "KeyValueStoreBackend._store_result": (
        BaseKeyValueStoreBackend._store_result,
        "f43059ebe446d43d",
    ),
    "Backend.mark_as_done": (Backend.mark_as_done, "8fe9548a219f0495"),
}


def digest(obj: Callable[..., Any]) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(obj)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_the_backend_code_the_aliases_build_on_is_unchanged(name: str) -> None:
    obj, expected = DIGESTS[name]
    assert digest(obj) == expected, RECHECK.format(version=celery.__version__, what=name)


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("redis://127.0.0.1:1/0", results.AliasingRedisBackend),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=none", results.AliasingRedisBackend),
        ("sentinel://127.0.0.1:1", results.AliasingSentinelBackend),
    ],
)
def test_every_app_the_factory_builds_stores_results_with_aliases(url: str, cls: type) -> None:
    settings = load_settings(redis_url=url, redis_sentinel_master="m")
    app = create_app(settings, with_tasks=False)
    try:
        assert type(app.backend) is cls  # (nothing connects until a result is read or written)
    finally:
        app.close()


PAYLOADS: list[Any] = [
    {},
    {"i": 1, "f": 0.1, "s": "text with 'quotes' and \"doubles\"", "n": None, "b": True},
    {"nested": {"list": [1, 2.5, [3, {"x": "y"}]], "empty": [], "e": {}}},
    {"unicode": "zoë ☃", "big": 10**30, "neg": -1e-9},
    {"long": "x" * 5000},
    {"many": list(range(2000))},
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_an_execute_messages_repr_is_the_one_celery_would_build(payload: Any) -> None:
    """Execute messages carry their kwargs' repr made cheaply (repr, not Celery's saferepr
    walk: a tenth of a message's cost), the same text Flower would otherwise show."""
    from celery.utils.saferepr import saferepr

    from orchestrator.runtime.celeryconf import kwargs_repr

    kwargs = {"type": "echo", "payload": payload, "max_retries": 3, "dispatch": 1}
    assert kwargs_repr(kwargs) == saferepr(kwargs, 1024, maxlevels=3)  # Celery's defaults
