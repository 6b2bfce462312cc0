"""Disaster-recovery status and the RPO: when a backup counts, and the alert's threshold."""

import pytest

from orchestrator.backup.status import backup_age_s, dr_status
from orchestrator.config import load_settings
from orchestrator.monitoring.alerting import builtin_rules

NOW = 1_800_000_000.0
GOOD = {"created_at": str(NOW - 100), "verified_at": str(NOW - 99), "path": "b.gz", "sha256": "ab"}


@pytest.mark.parametrize(
    "last,rpo,met",
    [
        pytest.param(GOOD, 3600, True, id="verified, within the RPO"),
        pytest.param(GOOD, 50, False, id="older than the RPO"),
        pytest.param(
            {k: v for k, v in GOOD.items() if k != "verified_at"}, 3600, False, id="unverified"
        ),
        pytest.param({}, 3600, False, id="no backup"),
    ],
)
def test_the_rpo_is_met_by_a_verified_backup_young_enough(last, rpo, met):
    status = dr_status(last, 3, None, rpo, NOW)
    assert (status.rpo_met, status.healthy, status.backups_kept, status.rpo_s) == (met, met, 3, rpo)
    if last:
        assert status.backup_age_s == 100 and status.last_backup_path == "b.gz"
    else:
        assert status.backup_age_s is None and status.last_backup_at is None


def test_the_last_restore_is_reported():
    status = dr_status(GOOD, 1, {"path": "b.gz", "restored_at": NOW - 5}, 3600, NOW)
    assert (status.last_restore_path, status.last_restore_at) == ("b.gz", NOW - 5)


def test_the_rpo_defaults_to_two_intervals_and_drives_backup_stale(monkeypatch):
    settings = load_settings(backup_interval_hours=1)
    assert settings.effective_backup_rpo_s == 7200
    monkeypatch.setenv("ORCH_BACKUP_RPO_S", "900")
    settings = load_settings()
    assert settings.effective_backup_rpo_s == 900
    rules = builtin_rules(settings.backup_interval_hours, settings.effective_backup_rpo_s)
    assert next(r for r in rules if r.name == "BackupStale").threshold == 900


@pytest.mark.parametrize(
    "last,since,age",
    [
        pytest.param(GOOD, NOW - 5000, 100.0, id="the newest backup's age"),
        pytest.param({}, NOW - 882, 882.0, id="none yet: since monitoring began"),
        pytest.param({}, None, None, id="none, and monitoring never ran"),
    ],
)
def test_one_backup_age_for_status_the_exporter_and_backup_status(last, since, age):
    """`orchestrator status` and the exporter (the snapshot) and `orchestrator backup status`
    (the disaster-recovery status) give one figure for one question."""
    assert dr_status(last, 0, None, 3600, NOW, since=since).backup_age_s == age
    assert backup_age_s(last, since, NOW) == (age or 0.0)
