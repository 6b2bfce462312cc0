"""Backups of the orchestrator's state (every `orch:*` key, the event stream): checksummed files.

A backup is a gzip'd JSON-lines file: a header line, then one line per key with its
remaining TTL and Redis' own DUMP serialization (base64), which RESTORE takes back as is.
Beside it, `<file>.sha256` in `sha256sum` format. Keys are read with SCAN, so a backup is
consistent per key, not across keys (each key as it was at its moment of reading); a
point-in-time copy of the whole Redis is the RDB/AOF persistence's job.

Create, list and verify live here; restore is backup.restore.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from orchestrator.store.keys import EVENTS, PREFIX

FORMAT = "hive-orchestrator-backup"
VERSION = 1
NAME_RE = re.compile(r"^orch-backup-\d{8}T\d{6}\d{3}Z\.jsonl\.gz\Z")
SCAN_COUNT = 1000


class BackupError(Exception):
    """A backup file is missing, damaged, or not one of ours; the message says which."""


@dataclass(frozen=True)
class BackupInfo:
    path: str
    sha256: str
    created_at: float
    keys: int = 0
    bytes: int = 0

    def public(self) -> dict[str, Any]:
        """What `backup create --json` prints."""
        return {"path": self.path, "sha256": self.sha256, "created_at": self.created_at}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def backup_name(now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC)
    return f"orch-backup-{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 1000:03d}Z.jsonl.gz"


def to_prune(names: Sequence[str], keep: int) -> list[str]:
    """The backups beyond the newest `keep` (names sort by time)."""
    ours = sorted(n for n in names if NAME_RE.match(n))
    return ours[: max(len(ours) - keep, 0)]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def create_backup(
    client: redis.Redis, directory: str | os.PathLike[str], retention: int, now: float
) -> BackupInfo:
    """Write a backup of every `orch:*` key, then prune beyond `retention` files.

    `client` must not decode responses (DUMP payloads are bytes). The file is written under
    a temporary name and renamed, so a crash never leaves a half file that looks whole.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / backup_name(now)
    partial = final.with_name(final.name + ".partial")
    count = 0
    with gzip.open(partial, "wt", encoding="utf-8") as out:
        out.write(json.dumps({"format": FORMAT, "version": VERSION, "created_at": now}) + "\n")
        batch: list[bytes] = []
        for key in client.scan_iter(match=PREFIX.encode() + b"*", count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                count += _write_batch(client, batch, out)
                batch = []
        batch.append(EVENTS.encode())  # the event stream keeps the name SPEC gives it
        count += _write_batch(client, batch, out)
        out.write(json.dumps({"end": True, "keys": count}) + "\n")
    os.replace(partial, final)
    digest = sha256_file(final)
    Path(str(final) + ".sha256").write_text(f"{digest}  {final.name}\n", encoding="utf-8")
    for name in to_prune([p.name for p in folder.iterdir()], retention):
        (folder / name).unlink(missing_ok=True)
        (folder / (name + ".sha256")).unlink(missing_ok=True)
    return BackupInfo(str(final), digest, now, count, final.stat().st_size)


def _write_batch(client: redis.Redis, keys: list[bytes], out: Any) -> int:
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.dump(key)
    replies = pipe.execute()
    written = 0
    for i, key in enumerate(keys):
        pttl, payload = replies[2 * i], replies[2 * i + 1]
        if payload is None:  # expired or deleted between SCAN and DUMP
            continue
        line = {
            "key": key.decode("utf-8", "surrogateescape"),
            "pttl": int(pttl) if int(pttl) > 0 else 0,
            "dump": base64.b64encode(payload).decode("ascii"),
        }
        out.write(json.dumps(line) + "\n")
        written += 1
    return written


def list_backups(directory: str | os.PathLike[str]) -> list[BackupInfo]:
    """Backups in the folder, oldest first, with the checksum recorded beside each."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for name in sorted(n for n in os.listdir(folder) if NAME_RE.match(n)):
        path = folder / name
        sidecar = Path(str(path) + ".sha256")
        digest = sidecar.read_text().split()[0] if sidecar.exists() else ""
        stamp = datetime.strptime(name[12:30], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
        found.append(BackupInfo(str(path), digest, stamp.timestamp(), 0, path.stat().st_size))
    return found


def verify_backup(path: str | os.PathLike[str]) -> BackupInfo:
    """Check the checksum and that every line parses and the key count matches the trailer;
    raise BackupError saying what is wrong."""
    file = Path(path)
    if not file.is_file():
        raise BackupError(f"{file}: no such backup file")
    sidecar = Path(str(file) + ".sha256")
    if not sidecar.exists():
        raise BackupError(f"{file}: checksum file {sidecar.name} is missing")
    expected = sidecar.read_text().split()[0] if sidecar.read_text().split() else ""
    actual = sha256_file(file)
    if actual != expected:
        raise BackupError(f"{file}: sha256 mismatch (file {actual}, recorded {expected})")
    try:
        with gzip.open(file, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
            if header.get("format") != FORMAT:
                raise BackupError(f"{file}: not a {FORMAT} file")
            if header.get("version") != VERSION:
                raise BackupError(
                    f"{file}: format version {header.get('version')!r}; this orchestrator "
                    f"reads version {VERSION}"
                )
            keys, trailer = 0, None
            for line in fh:
                entry = json.loads(line)
                if entry.get("end"):
                    trailer = entry
                    break
                base64.b64decode(entry["dump"], validate=True)
                keys += 1
    except (OSError, EOFError, ValueError, KeyError) as exc:
        raise BackupError(f"{file}: damaged ({exc})") from None
    if trailer is None or trailer.get("keys") != keys:
        raise BackupError(f"{file}: truncated (no trailer, or its key count differs)")
    return BackupInfo(str(file), actual, float(header["created_at"]), keys, file.stat().st_size)
