"""`orchestrator backup restore`: a verified backup back into an empty or a live Redis.

The file is verified first (checksum, every line, the trailer's key count, the format
version); a file that fails is refused before Redis is touched. Then each key goes back as
backup.merge decides: restored where the live Redis lacks it, merged entry by entry into the
collections of independent entries, left alone where the live Redis has its own. A task the
snapshot had not finished and the live ledger did not know is parked again through the store's
own `park`, so the parked sweep routes it under a new dispatch and it runs once (a copy of an
older dispatch is acknowledged without running). With `dry_run` nothing is written but one
scratch key per restored task, read for its state and deleted at once.

A snapshot of an older key layout comes back under the current names (`current_name`): a
task's history list that was `orch:task:<id>:history` is restored as `orch:history:<id>`.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from orchestrator.backup.archive import BackupError, verify_backup
from orchestrator.backup.merge import (
    Action,
    action_for,
    by_task,
    kind_of,
    tally,
    unfinished,
    waiting,
)
from orchestrator.store.keys import (
    FLEET_VERSION,
    PREFIX,
    RECOVERY,
    RECOVERY_DEADLINES,
    TASK_PREFIX,
    history_key,
    legacy_history_task,
)
from orchestrator.store.ports import RestoreStore

SCRATCH = PREFIX + "restore:scratch"
RESTORE_LAST = PREFIX + "backup:restored"
BATCH = 500
#: A DUMP payload opens with its value's RDB type; these are the list encodings (linked list,
#: ziplist, quicklist, quicklist 2), whatever the version of the Redis that made it.
LIST_RDB_TYPES = frozenset({1, 10, 14, 18})


def current_name(key: str, payload: bytes) -> str:
    """The name a snapshot's key has under the current layout: an older layout's history list
    `orch:task:<id>:history` is `orch:history:<id>`; a hash of that name is the ledger entry
    of a task named `<id>:history` and keeps it, as does every other key."""
    task_id = legacy_history_task(key)
    if task_id is not None and payload[:1] and payload[0] in LIST_RDB_TYPES:
        return history_key(task_id)
    return key


@dataclass
class RestoreReport:
    path: str
    created_at: float
    dry_run: bool
    keys: int = 0
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    parked_again: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # back in the backlog where they were

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "created_at": self.created_at,
            "dry_run": self.dry_run,
            "keys": self.keys,
            "kinds": self.kinds,
            "parked_again": self.parked_again,
        }


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        fh.readline()  # the header, checked by verify_backup
        for line in fh:
            entry = json.loads(line)
            if entry.get("end"):
                return
            yield entry


def restore_backup(
    binary: redis.Redis,
    store: RestoreStore,
    path: str | os.PathLike[str],
    now: float,
    *,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> RestoreReport:
    """Restore `path` (see the module docstring). `binary` is a client that does not decode
    responses (DUMP payloads are bytes), `store` the state store on the same Redis;
    `on_progress` sees (keys done, keys in the file) after each batch (a progress bar).
    Raises BackupError for a file that fails verification, before anything is written."""
    info = verify_backup(path)
    report = RestoreReport(info.path, info.created_at, dry_run)
    rows: list[tuple[str, str]] = []
    restored: set[str] = set()  # ids of the tasks whose ledger entry came back
    merges: list[tuple[str, bytes]] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        _restore_batch(
            binary,
            batch,
            dry_run=dry_run,
            rows=rows,
            report=report,
            restored=restored,
            merges=merges,
        )
        report.keys += len(batch)
        batch.clear()
        if on_progress is not None:
            on_progress(report.keys, info.keys)

    for entry in _entries(Path(info.path)):
        batch.append(entry)
        if len(batch) >= BATCH:
            flush()
    flush()
    if not dry_run:
        for key, payload in merges:
            _merge(binary, key, payload, restored)
        for task_id in report.parked_again:
            # The live Redis did not know the task, so any open plan for it is the snapshot's:
            # parking starts it over, and the healer must not escalate the old attempt.
            binary.hdel(RECOVERY, task_id)
            binary.zrem(RECOVERY_DEADLINES, task_id)
            store.park(store.load_spec(task_id), now=now, source="restore")
        for task_id in report.waiting:
            store.wait_again(store.load_spec(task_id), now)
    rows += [("tasks", "park_again")] * len(report.parked_again)
    report.kinds = tally(rows)
    if not dry_run:
        binary.set(RESTORE_LAST, json.dumps(report.as_dict() | {"restored_at": now}))
        # Past any version a router has seen (the snapshot's came back with it): every
        # router reads the restored fleet at its next check.
        binary.incr(FLEET_VERSION)
    return report


def _restore_batch(
    binary: redis.Redis,
    batch: list[dict[str, Any]],
    *,
    dry_run: bool,
    rows: list[tuple[str, str]],
    report: RestoreReport,
    restored: set[str],
    merges: list[tuple[str, bytes]],
) -> None:
    if not batch:
        return
    payloads = [base64.b64decode(entry["dump"]) for entry in batch]
    names = [current_name(entry["key"], p) for entry, p in zip(batch, payloads, strict=True)]
    pipe = binary.pipeline(transaction=False)
    for key in names:
        pipe.exists(key)
    live = pipe.execute()
    for entry, key, payload, exists in zip(batch, names, payloads, live, strict=True):
        action = action_for(key, bool(exists))
        rows.append((kind_of(key), action.value))
        if action is Action.MERGE:
            merges.append((key, payload))
            continue
        if action is not Action.RESTORE:
            continue
        # A dry run reads a ledger entry's state from a scratch copy; a restore from the key.
        target = SCRATCH if dry_run else key
        if dry_run and not _is_ledger(key):
            continue
        try:
            binary.restore(target, int(entry["pttl"]), payload, replace=dry_run)
        except redis.ResponseError as exc:  # written live since EXISTS: the live one wins
            if "BUSYKEY" not in str(exc):
                raise BackupError(f"{key}: Redis refused the restore ({exc})") from None
            continue
        if _is_ledger(key):
            task_id = key.removeprefix(TASK_PREFIX)
            restored.add(task_id)
            state = binary.hget(target, "state")
            if unfinished(_text(state) if state is not None else None):
                report.parked_again.append(task_id)
            elif waiting(_text(state) if state is not None else None):
                report.waiting.append(task_id)
        if dry_run:
            binary.delete(SCRATCH)


def _is_ledger(key: str) -> bool:
    """Whether `key` (a current name) is a ledger entry: every `orch:task:*` key is."""
    return key.startswith(TASK_PREFIX)


def _merge(binary: redis.Redis, key: str, payload: bytes, restored: set[str]) -> None:
    """Add the snapshot's entries the live collection lacks, the live entries winning. In
    the collections of task ids only the tasks this restore brought back are added: a task
    the live ledger knows is wherever the live Redis has put it since."""
    binary.restore(SCRATCH, 0, payload, replace=True)
    try:
        kind = binary.type(SCRATCH)
        if kind in (b"zset", "zset"):
            members = {
                m: score
                for m, score in binary.zrange(SCRATCH, 0, -1, withscores=True)
                if not by_task(key) or _text(m) in restored
            }
            if members:
                binary.zadd(key, members, nx=True)
        elif kind in (b"hash", "hash"):
            pipe = binary.pipeline(transaction=False)
            for name, value in binary.hgetall(SCRATCH).items():
                if not by_task(key) or _text(name) in restored:
                    pipe.hsetnx(key, name, value)
            pipe.execute()
    finally:
        binary.delete(SCRATCH)


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def last_restore(client: redis.Redis) -> dict[str, Any] | None:
    """The report of the last restore into this Redis (with `restored_at`), if any."""
    raw = client.get(RESTORE_LAST)
    return None if raw is None else dict(json.loads(raw))
