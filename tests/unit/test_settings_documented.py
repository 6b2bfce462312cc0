"""Every ORCH_* setting is documented in the README and read by some code (no dead settings)."""

from __future__ import annotations

import re

import pytest

from orchestrator.config import Settings
from tests.support import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
CONFIG = REPO_ROOT / "orchestrator" / "config.py"
SOURCES = [
    p
    for p in [
        *(REPO_ROOT / "orchestrator").rglob("*.py"),
        *(REPO_ROOT / "workers").rglob("*.py"),
        REPO_ROOT / "beat_schedule.py",
    ]
    if p != CONFIG
]
CODE = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
# Read inside config.py itself only through a derived property or method (`self.<name>`).
CONFIG_READS = set(re.findall(r"self\.([a-z_]+)", CONFIG.read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_and_read_by_code(name):
    assert f"`ORCH_{name.upper()}`" in README, f"ORCH_{name.upper()} is not in the README"
    read = re.search(rf"\.{name}\b", CODE) is not None or name in CONFIG_READS
    assert read, f"ORCH_{name.upper()} is declared but nothing reads settings.{name}"
