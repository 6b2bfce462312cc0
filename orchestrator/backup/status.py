"""Disaster-recovery status, pure: the newest good backup against the RPO, and the last restore."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.models import DisasterRecoveryStatus


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def rpo_met(last: Mapping[str, Any], rpo_s: float, now: float) -> bool:
    """Whether the newest backup was read back after writing and is at most `rpo_s` old."""
    created = _float(last.get("created_at"))
    verified = _float(last.get("verified_at"))
    return created is not None and verified is not None and now - created <= rpo_s


def backup_age_s(last: Mapping[str, Any], since: float | None, now: float) -> float:
    """Seconds since the newest backup; with none yet, since monitoring first ran (`since`:
    a deployment whose backups never succeed still trips BackupStale), else 0. The one figure
    `orchestrator status`, the exporter and `orchestrator backup status` all show."""
    created = _float(last.get("created_at"))
    start = created if created is not None else since
    return 0.0 if start is None else max(0.0, now - start)


def dr_status(
    last: Mapping[str, Any],
    kept: int,
    restored: Mapping[str, Any] | None,
    rpo_s: float,
    now: float,
    since: float | None = None,
) -> DisasterRecoveryStatus:
    """`last` is what the backup loop recorded of its newest backup (created_at, path, sha256,
    verified_at), `kept` the files in ORCH_BACKUP_DIR, `restored` the last restore's report,
    `since` when monitoring first ran. The RPO is met while the newest backup that was read
    back after writing is at most `rpo_s` old; healthy is the same. The age is backup_age_s
    (None only with no backup and no monitoring run yet)."""
    created = _float(last.get("created_at"))
    verified = _float(last.get("verified_at"))
    age = None if created is None and since is None else backup_age_s(last, since, now)
    met = rpo_met(last, rpo_s, now)
    return DisasterRecoveryStatus(
        last_backup_at=created,
        last_backup_path=last.get("path") or None,
        last_backup_sha256=last.get("sha256") or None,
        last_verified_at=verified,
        backups_kept=kept,
        backup_age_s=age,
        rpo_s=rpo_s,
        rpo_met=met,
        last_restore_at=_float((restored or {}).get("restored_at")),
        last_restore_path=(restored or {}).get("path"),
        healthy=met,
    )
