"""ORCH_LOG_FORMAT=json: the fields of a JSON log line, and the setting's validation."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.runtime.logs import JsonLogFormatter, iso_utc, json_handler

URL = "redis://127.0.0.1:1/0"  # never connected to: settings only


def record(
    message: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    level: int = logging.INFO,
    name: str = "orchestrator.test",
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)  # what logging does with `extra=`
    return made


def line(rec: logging.LogRecord, agent_id: str | None = None) -> dict[str, Any]:
    text = JsonLogFormatter(lambda: agent_id).format(rec)
    assert "\n" not in text, "one record, one line"
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_a_line_has_the_time_level_logger_and_message_in_that_order():
    rec = record(level=logging.WARNING)
    rec.created = 1_700_000_000.25
    assert line(rec) == {
        "ts": "2023-11-14T22:13:20.250Z",
        "level": "WARNING",
        "logger": "orchestrator.test",
        "message": "hello world",
    }
    assert list(line(rec)) == ["ts", "level", "logger", "message"]


@pytest.mark.parametrize(
    ("created", "iso"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.0, "2023-11-14T22:13:20.000Z"),
        (1_700_000_000.9999, "2023-11-14T22:13:20.999Z"),
    ],
)
def test_the_time_is_iso_8601_in_utc(created, iso):
    assert iso_utc(created) == iso
    assert datetime.fromisoformat(iso).tzinfo == UTC


def test_the_agent_id_is_there_when_known_and_absent_otherwise():
    assert line(record(), agent_id="agent-7")["agent_id"] == "agent-7"
    assert "agent_id" not in line(record(), agent_id=None)


@pytest.mark.parametrize(
    ("extra", "task_id"),
    [
        ({}, None),
        ({"task_id": "t-named"}, "t-named"),
        ({"task_id": "???"}, None),  # Celery's TaskFormatter outside a task
        # Celery's "Task ... received/succeeded" lines: the id, never the arguments or result.
        ({"data": {"id": "t-data", "kwargs": "{'secret': 1}"}}, "t-data"),
    ],
)
def test_the_task_id_comes_from_the_record(extra, task_id):
    parsed = line(record(**extra))
    assert parsed.get("task_id") == task_id
    assert "data" not in parsed and "task_name" not in parsed


def test_the_task_id_is_the_running_tasks_inside_a_celery_task():
    app = Celery("log-format-test", set_as_current=False)
    formatter = JsonLogFormatter(lambda: "agent-1")

    @app.task(bind=True)
    def probe(self: Any) -> str:
        return formatter.format(record())

    # apply() runs the task here, under Celery's task stack as a worker's pool child does.
    parsed = json.loads(probe.apply(task_id="t-running").get())
    assert (parsed["task_id"], parsed["agent_id"]) == ("t-running", "agent-1")
    assert "task_id" not in line(record())  # and none once it has returned


def test_an_exception_comes_with_its_traceback():
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        parsed = line(record("it failed", (), logging.ERROR, exc_info=sys.exc_info()))
    assert parsed["message"] == "it failed"
    assert parsed["exc_info"].startswith("Traceback (most recent call last):")
    assert parsed["exc_info"].endswith("ValueError: broken on purpose")


def test_fields_passed_as_extra_are_fields_of_the_line():
    parsed = line(record(address="http://127.0.0.1:9808/metrics", pid=42))
    assert (parsed["address"], parsed["pid"]) == ("http://127.0.0.1:9808/metrics", 42)


def test_the_handler_writes_one_json_object_per_line():
    stream = io.StringIO()
    logger = logging.getLogger("orchestrator.test.handler")
    logger.propagate = False
    logger.addHandler(json_handler(stream))
    try:
        logger.warning("first")
        logger.warning("second\nwith a newline")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert [json.loads(text)["message"] for text in lines] == ["first", "second\nwith a newline"]


@pytest.mark.parametrize("value", ["text", "json"])
def test_the_two_formats_are_accepted(monkeypatch, value):
    monkeypatch.setenv("ORCH_LOG_FORMAT", value)
    assert load_settings(redis_url=URL).log_format == value


def test_the_format_is_text_unless_told(monkeypatch):
    monkeypatch.delenv("ORCH_LOG_FORMAT", raising=False)
    assert load_settings(redis_url=URL).log_format == "text"


@pytest.mark.parametrize("value", ["xml", "JSON ", ""])
def test_any_other_format_stops_start_up_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("ORCH_LOG_FORMAT", value)
    with pytest.raises(ConfigError) as info:
        load_settings(redis_url=URL)
    assert "ORCH_LOG_FORMAT" in str(info.value)
    assert "'text' or 'json'" in str(info.value)
