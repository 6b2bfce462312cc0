"""Every ORCH_* setting is described, in the docs' reference too, and read by some code."""

from __future__ import annotations

import re

import pytest

from docs.reference_gen import cell, render
from orchestrator.config import Settings
from tests.support import REPO_ROOT

REFERENCE = render("settings")
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
def test_every_setting_is_described_in_the_reference_and_read_by_code(name):
    description = Settings.model_fields[name].description
    assert description and description.strip(), f"Settings.{name} has no description"
    variable = f"ORCH_{name.upper()}"
    assert f"| `{variable}` |" in REFERENCE, f"{variable} is not in the settings reference"
    assert cell(description) in REFERENCE, f"{variable}'s description is not in the reference"
    read = re.search(rf"\.{name}\b", CODE) is not None or name in CONFIG_READS
    assert read, f"{variable} is declared but nothing reads settings.{name}"
