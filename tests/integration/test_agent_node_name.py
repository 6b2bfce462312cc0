"""An agent id taken from the worker's node name obeys ORCH_AGENT_ID's rule.

A real `celery worker` with agent capabilities and no ORCH_AGENT_ID takes its node name as
its id: one that breaks the rule (a `|` would split the agent's stats fields) stops the
worker at start with one line naming the node name and the rule, and registers nothing."""

from __future__ import annotations

import pytest

from orchestrator.store.keys import AGENTS

pytestmark = pytest.mark.integration


def test_an_agent_whose_node_name_breaks_the_id_rule_refuses_to_start(
    celery_procs, orch_env, redis_client
):
    node = "h*st{1}|x@vm"
    proc = celery_procs(
        ["worker", "-n", node, "--without-gossip", "--without-mingle", "-P", "solo"],
        {**orch_env, "ORCH_AGENT_CAPABILITIES": "echo", "ORCH_HANDLERS": "tests.handlers"},
        name="bad-node",
    )
    assert proc.wait(timeout=60) == 2
    refusals = [line for line in proc.log_text().splitlines() if "refused to start" in line]
    assert refusals == [
        f"hive-orchestrator: agent refused to start: its id, the worker's node name {node!r} "
        "(-n), must be 1-128 chars of [A-Za-z0-9._@:-] as ORCH_AGENT_ID must: choose another "
        "-n or set ORCH_AGENT_ID"
    ]
    assert redis_client.hlen(AGENTS) == 0
