"""Celery's Redis result backend, with aliases: one task's outcome under more than one id.

A submission's message has its own Celery id; the task it submits is known by `task_id`
when the client gave one. A client holding the message's id (the AsyncResult `send_task`
returned, a chain link's id) must see the same outcome as one holding `task_id`. The submit
hop makes the message's id an alias of the task's (`add_alias`) before routing it; every
write of the task's result (by any process: the agent, recovery, a cancel) also writes it
under each alias, in the same MULTI as the write itself (`_set`). Either the write sees the
alias or the alias sees the written result, so no alias misses an outcome.

`success_write` hands an agent's success to the state store's settle step instead, which
writes it as `_set` does in the same step as the ledger's `succeeded` (results in the state
store's Redis only): a client woken by the result never reads the task as still running.

`install` makes an app's `redis://`, `rediss://` and `sentinel://` result backends these
classes (Celery's loader lets an app name its own class for a scheme).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str

from orchestrator.store.calls import ResultWrite

#: The set of a task's aliases, beside Celery's `celery-task-meta-<id>` (same Redis, same TTL).
ALIAS_PREFIX = "celery-task-aliases-"


def _store(pipe: Any, key: Any, value: Any, expires: Any) -> None:
    """Celery's write of a result: SET (with its expiry), and PUBLISH to its waiters."""
    if expires:
        pipe.setex(key, expires, value)
    else:
        pipe.set(key, value)
    pipe.publish(key, value)


class _Aliasing(RedisBackend):
    def _aliases_key(self, task_id: str) -> str:
        return ALIAS_PREFIX + task_id

    def _task_id_of(self, key: Any) -> str | None:
        text = bytes_to_str(key)
        prefix = bytes_to_str(self.task_keyprefix)
        return text[len(prefix) :] if text.startswith(prefix) else None

    def _set(self, key: Any, value: Any, expires: Any = None) -> None:
        """Celery's write (SET with its expiry, PUBLISH to its waiters), reading the task's
        aliases in the same MULTI; then the same outcome under each alias."""
        if expires is None:
            expires = self.expires
        task_id = self._task_id_of(key)
        with self.client.pipeline() as pipe:
            _store(pipe, key, value, expires)
            if task_id is not None:
                pipe.smembers(self._aliases_key(task_id))
            replies = pipe.execute()
        if task_id is not None and replies[-1]:
            for alias in sorted(bytes_to_str(a) for a in replies[-1]):
                self._write_alias(alias, value, expires)

    def _write_alias(self, alias: str, value: Any, expires: Any) -> None:
        meta = self.decode(value)
        meta["task_id"] = alias  # a waiter on the alias is woken by the id in the meta
        encoded = self.encode(meta)
        with self.client.pipeline() as pipe:
            _store(pipe, self.get_key_for_task(alias), encoded, expires)
            pipe.execute()

    def add_alias(self, task_id: str, alias: str) -> None:
        """Make `alias` resolve to `task_id`'s outcome: from now on, and at once if the task
        has ended already (a second submission of a finished task's id)."""
        self.ensure(self._add_alias, (task_id, alias))

    def _add_alias(self, task_id: str, alias: str) -> None:
        aliases = self._aliases_key(task_id)
        with self.client.pipeline() as pipe:
            pipe.sadd(aliases, alias)
            pipe.expire(aliases, int(self.expires or 24 * 3600))
            pipe.get(self.get_key_for_task(task_id))
            *_, raw = pipe.execute()
        if raw is not None and self.decode(raw).get("status") in states.READY_STATES:
            self._write_alias(alias, raw, self.expires)


class AliasingRedisBackend(_Aliasing):
    """RedisBackend with aliases."""


class AliasingSentinelBackend(_Aliasing, SentinelBackend):
    """SentinelBackend with aliases."""


def install(celery_app: Celery) -> None:
    """Make the app's Redis result backends the aliasing ones."""
    here = f"{__name__}:"
    celery_app.loader.override_backends = {
        "redis": here + AliasingRedisBackend.__name__,
        "rediss": here + AliasingRedisBackend.__name__,
        "sentinel": here + AliasingSentinelBackend.__name__,
    }


def success_write(backend: Any, task_id: str, result: Any, request: Any) -> ResultWrite | None:
    """Celery's result of a success as the aliasing backend would write it (the same meta,
    encoded the same way, the task's id last), for the settle step to write; None where the
    backend is not an aliasing Redis one."""
    if not isinstance(backend, _Aliasing):
        return None
    meta = backend._get_result_meta(
        result=result, state=states.SUCCESS, traceback=None, request=request
    )
    meta.pop("task_id", None)
    encoded = bytes_to_str(backend.encode(meta))
    if not encoded.endswith("}"):
        return None
    return ResultWrite(
        prefix=bytes_to_str(backend.task_keyprefix),
        head=encoded[:-1],
        expires=int(backend.expires or 0),
        aliases=backend._aliases_key(task_id),
    )


def add_alias(backend: Any, task_id: str, alias: str) -> None:
    """backend.add_alias where the backend is an aliasing one (always, in an app built by
    runtime.celeryconf.create_app)."""
    adder = getattr(backend, "add_alias", None)
    if adder is not None:
        adder(task_id, alias)
