"""A misspelt ORCH_* variable is named, with the nearest setting, once per process."""

from __future__ import annotations

import logging

import pytest

from orchestrator.config import setting_names
from orchestrator.env_names import unknown_variables, warn_unknown_variables


def test_the_setting_names_are_the_variables_the_settings_read():
    names = setting_names()
    assert {"ORCH_REDIS_URL", "ORCH_AGENT_CAPABILITIES", "ORCH_STATE_URL"} <= names
    assert all(name.startswith("ORCH_") and name == name.upper() for name in names)


@pytest.mark.parametrize(
    ("environ", "found"),
    [
        ({"ORCH_REDIS_URL": "x", "PATH": "/bin"}, []),
        ({"orch_redis_url": "x"}, []),  # read whatever its case, so not unknown
        ({"ORCHESTRA": "x", "MY_ORCH_REDIS_ULR": "x"}, []),  # not ORCH_*
        ({"ORCH_REDIS_ULR": "x"}, [("ORCH_REDIS_ULR", "ORCH_REDIS_URL")]),
        ({"ORCH_AGENT_CAPABILITES": "x"}, [("ORCH_AGENT_CAPABILITES", "ORCH_AGENT_CAPABILITIES")]),
        ({"orch_state_ulr": "x"}, [("orch_state_ulr", "ORCH_STATE_URL")]),
        ({"ORCH_ZZZZZZZZ": "1"}, [("ORCH_ZZZZZZZZ", None)]),
        ({"ORCH_PRIORITY": "1"}, [("ORCH_PRIORITY", None)]),  # not ORCH_METRICS_PORT
        ({"ORCH_HANDLER": "m"}, [("ORCH_HANDLER", "ORCH_HANDLERS")]),
        (
            {"ORCH_STATE_ULR": "x", "ORCH_BROKER_ULR": "y"},
            [("ORCH_BROKER_ULR", "ORCH_BROKER_URL"), ("ORCH_STATE_ULR", "ORCH_STATE_URL")],
        ),
    ],
)
def test_unknown_variables_and_the_nearest_setting(environ, found):
    assert unknown_variables(environ, setting_names()) == found


def test_each_unknown_variable_is_warned_of_once_per_process(caplog):
    environ = {"ORCH_QQQQQQQQQ1": "x", "ORCH_REDIS_URL": "redis://h:1/0"}
    with caplog.at_level(logging.WARNING, logger="orchestrator.config"):
        warn_unknown_variables(environ, setting_names())
        warn_unknown_variables(environ, setting_names())
        warn_unknown_variables({**environ, "ORCH_LOG_FROMAT": "y"}, setting_names())
    assert [r.getMessage() for r in caplog.records] == [
        "unknown variable ORCH_QQQQQQQQQ1 (ignored)",
        "unknown variable ORCH_LOG_FROMAT (ignored); did you mean ORCH_LOG_FORMAT?",
    ]
