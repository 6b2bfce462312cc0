"""Every name rule matches the whole name, a trailing newline included.

Every name rule matches the whole name: `re.match("^...$")` lets one trailing newline
through (`$` also matches before it), which the fuzzer found in the task spec's rules."""

from __future__ import annotations

import json

import pytest

from orchestrator.backup.archive import NAME_RE as BACKUP_NAME_RE
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.monitoring.alerting import load_rules
from orchestrator.monitoring.slo import load_targets
from orchestrator.monitoring.stats import client_label
from orchestrator.settings_parsers import MODULE_RE, NAME_RE, parse_capabilities


def test_an_agent_id_with_a_trailing_newline_is_refused() -> None:
    assert load_settings(agent_id="alpha").agent_id == "alpha"
    with pytest.raises(ConfigError, match="ORCH_AGENT_ID"):
        load_settings(agent_id="alpha\n")


@pytest.mark.parametrize("name", ["echo\n", "echo\n\n"])
def test_capability_and_module_names_match_in_full(name: str) -> None:
    assert NAME_RE.match("echo") and not NAME_RE.match(name)
    assert MODULE_RE.match("examples.handlers") and not MODULE_RE.match("examples.handlers\n")
    with pytest.raises(ValueError, match="capability name"):
        parse_capabilities({name: 1.0})


def test_a_client_label_with_a_trailing_newline_is_invalid() -> None:
    assert client_label("billing") == "billing"
    assert client_label("billing\n") == "invalid"


def test_rule_and_target_names_match_in_full() -> None:
    rule = {"name": "HighErrors\n", "metric": "error_rate", "op": ">", "threshold": 0.5}
    with pytest.raises(ConfigError, match="name: must match"):
        load_rules(json.dumps({"rules": [rule]}), "json")
    label = {**rule, "name": "HighErrors", "labels": {"team\n": "ops"}}
    with pytest.raises(ConfigError, match="label names must match"):
        load_rules(json.dumps({"rules": [label]}), "json")
    target = {"name": "echo-latency\n", "sli": "error_rate", "objective": 0.1}
    with pytest.raises(ConfigError, match="name: must match"):
        load_targets(json.dumps({"targets": [target]}), "json")


def test_a_backup_file_name_matches_in_full() -> None:
    name = "orch-backup-20261202T134501123Z.jsonl.gz"
    assert BACKUP_NAME_RE.match(name) and not BACKUP_NAME_RE.match(name + "\n")
