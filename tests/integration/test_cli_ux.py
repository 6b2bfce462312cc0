"""What a submitter and an operator are told by the CLI and the client, beyond the result.

Why a task is parked, that a wait ran out or was interrupted (and the task goes on), that a
known id came with another spec, that a variable is misspelt, and which variable points at a
Redis that refuses (real Redis, real workers, the CLI as a process).

The waits run the CLI as a plain subprocess, not forked from the tests' zygote: what happens
at interpreter exit (a traceback from a result's finaliser) shows only in a process that
exits as a real one does.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
from collections.abc import Iterator

import click
import pytest

from orchestrator.client import OrchestratorClient
from orchestrator.errors import DuplicateTask
from orchestrator.routing.dispatch import OutcomeStatus
from orchestrator.runtime.celeryconf import SUBMIT
from tests.integration.conftest import ledger
from tests.support import CLI, RedisServer, cli, free_port, wait_for, worker_environ

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SHARED_AGENTS = {"a1": ("echo,hold", 2)}
WRONGPASS = "authentication failed (WRONGPASS invalid username-password pair or user is disabled)"
#: The exit status of `submit --wait` whose wait ran out while the task goes on.
STILL_WAITING = 3


def no_exit_noise(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- parking says why --------------------------------------------------------------------


def test_a_task_no_agent_can_take_says_why_it_is_parked(shared):
    done = cli(shared.env, "submit", "nosuch")
    task_id = done.stdout.strip()
    assert "parked: no agent offers 'nosuch'" in done.stderr, done.stderr
    assert ledger(shared.redis, task_id)["state"] == "parked"

    shown = cli(shared.env, "task", task_id)
    assert "parked: no agent offers 'nosuch'" in shown.stdout, shown.stdout
    record = json.loads(cli(shared.env, "task", task_id, "--json").stdout)
    assert record["history"][-1]["reason"] == "no agent offers 'nosuch'"

    both = json.loads(
        cli(
            shared.env, "submit", "echo", "--capability", "echo", "--capability", "gpu", "--json"
        ).stdout
    )
    assert both["outcome"] == "parked" and both["reason"] == "no agent offers 'gpu'", both

    parked = shared.client.submit("nosuch")
    assert parked.parked and parked.outcome is OutcomeStatus.PARKED
    assert parked.reason == "no agent offers 'nosuch'"
    routed = shared.client.submit("echo", {"x": 1})
    assert not routed.parked and routed.outcome is OutcomeStatus.ROUTED and routed.reason is None
    assert routed.get(timeout=30) == {"x": 1}  # still the task's AsyncResult
    [event] = shared.events(("task.parked",))[:1]
    assert event.data["reason"] == "no agent offers 'nosuch'"


# --- a wait that runs out, or is interrupted ---------------------------------------------


def test_a_wait_that_runs_out_says_the_task_goes_on(shared):
    hold = json.dumps({"key": "w1", "max_s": 60})
    done = run_cli(shared.env, "submit", "hold", "--payload", hold, "--wait", "--wait-timeout", "2")
    assert done.returncode == STILL_WAITING, done.stderr
    task_id = done.stderr.split()[1].rstrip(";")  # the first line: `accepted <id>; ...`
    assert f"task {task_id} is still running" in done.stderr, done.stderr
    assert f"orchestrator task {task_id}" in done.stderr and "failed:" not in done.stderr
    no_exit_noise(done.stderr)
    assert done.stdout == ""
    assert ledger(shared.redis, task_id)["state"] == "running"
    shared.redis.set("test:release:w1", 1)

    parked = run_cli(shared.env, "submit", "nosuch", "--wait", "--wait-timeout", "1", "--json")
    assert parked.returncode == STILL_WAITING, parked.stderr
    said = json.loads(parked.stdout)
    assert said["state"] == "parked" and said["reason"] == "no agent offers 'nosuch'", said
    assert f"task {said['task_id']} is still parked" in parked.stderr, parked.stderr
    no_exit_noise(parked.stderr)


def first_line(stream) -> str:
    """The first line of `stream`, or "" if none came within 60 s."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(60)
    return got[0] if got else ""


def test_ctrl_c_while_waiting_says_the_task_goes_on(shared):
    hold = json.dumps({"key": "c1", "max_s": 60})
    proc = subprocess.Popen(
        [*CLI, "submit", "hold", "--payload", hold, "--wait"],
        env=shared.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        accepted = first_line(proc.stderr)
        assert accepted.startswith("accepted "), accepted  # said before the wait
        task_id = accepted.split()[1].rstrip(";")
        wait_for(lambda: ledger(shared.redis, task_id).get("state") == "running", timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert f"task {task_id} keeps running" in err and f"orchestrator task {task_id}" in err, err
    no_exit_noise(err)
    assert "Aborted" not in err and out == ""
    assert ledger(shared.redis, task_id)["state"] == "running"  # the task went on
    shared.redis.set("test:release:c1", 1)
    wait_for(lambda: ledger(shared.redis, task_id).get("state") == "succeeded", timeout=30)


def test_ctrl_c_while_the_acceptance_is_being_written_says_the_task_goes_on(client, monkeypatch):
    """Ctrl-C can land while `accepted <id>` is being written: the line has reached the
    terminal, the write has not returned. The task was accepted, so the user is told it goes
    on (a loaded machine showed it: 3 in 40 Ctrl-Cs after `running` said "may or may not")."""
    from orchestrator.cli import submit as verb

    said: list[str] = []

    def say(message: str) -> None:
        said.append(message)
        if message.startswith("accepted "):
            raise KeyboardInterrupt  # the signal, arrived during the write

    monkeypatch.setattr(verb, "say", say)
    with pytest.raises(click.exceptions.Exit) as stopped:
        verb.run(client, client.settings, "echo", {}, {}, True, 5.0, False)
    assert stopped.value.exit_code == verb.INTERRUPTED
    task_id = said[-2].split()[1].rstrip(";")
    assert said[-1].startswith(f"interrupted: task {task_id} keeps running (parked)"), said


# --- a known id with another spec --------------------------------------------------------


def test_a_known_id_with_another_payload_is_told_and_runs_nothing_again(shared):
    env = shared.env
    first = cli(env, "submit", "echo", "--task-id", "dup-1", "--payload", '{"x": 1}', "--wait")
    assert "duplicate" not in first.stderr
    same = cli(env, "submit", "echo", "--task-id", "dup-1", "--payload", '{"x": 1}')
    assert same.stdout.strip() == "dup-1" and "duplicate" not in same.stderr, same.stderr
    other = cli(env, "submit", "echo", "--task-id", "dup-1", "--payload", '{"x": 2}')
    assert other.stdout.strip() == "dup-1"
    assert "warning: duplicate id with a different payload" in other.stderr, other.stderr
    assert "payload" in other.stderr.split("payload", 1)[1]  # names the field that differs

    again = shared.client.submit("echo", {"x": 1}, task_id="dup-1")  # no warning: same spec
    assert again.duplicate and again.differs == ()
    with pytest.warns(DuplicateTask, match="duplicate id with a different payload") as caught:
        changed = shared.client.submit("echo", {"x": 3}, task_id="dup-1", priority=7)
    assert caught[0].message.task_id == "dup-1"  # type: ignore[union-attr]
    assert changed.duplicate and changed.differs == ("payload", "priority")
    assert changed.get(timeout=10) == {"x": 1}  # the first submission's result

    # By name (another service's Celery app): nobody to tell but the counters.
    shared.client.app.send_task(
        SUBMIT, kwargs={"type": "echo", "payload": {"x": 4}, "task_id": "dup-1"}
    )
    wait_for(lambda: shared.counter("duplicates_differing") == 3, timeout=30)
    assert shared.counter("duplicates_ignored") == 5
    assert shared.client.task("dup-1").attempts == 1


# --- misspelt variables -------------------------------------------------------------------


def test_a_misspelt_variable_is_named_with_the_nearest_setting(shared, start_agent):
    done = cli({**shared.env, "ORCH_REDIS_ULR": "redis://elsewhere:1/0"}, "status")
    assert done.stderr.count("ORCH_REDIS_ULR") == 1, done.stderr
    assert "did you mean ORCH_REDIS_URL?" in done.stderr, done.stderr

    agent = start_agent("typo", "echo", ORCH_AGENT_PREFECH="1")
    log = agent.log_text()
    assert log.count("unknown variable ORCH_AGENT_PREFECH") == 1, log
    assert "did you mean ORCH_AGENT_PREFETCH?" in log


def test_a_client_warns_of_a_misspelt_variable(redis_url, monkeypatch, caplog):
    monkeypatch.setenv("ORCH_REDIS_URL", redis_url)
    monkeypatch.setenv("ORCH_RESULT_BACKEDN", "redis://elsewhere:1/0")
    with caplog.at_level(logging.WARNING, logger="orchestrator.config"):
        OrchestratorClient().close()
        OrchestratorClient().close()
    said = [r.getMessage() for r in caplog.records if "ORCH_RESULT_BACKEDN" in r.getMessage()]
    assert said == [
        "unknown variable ORCH_RESULT_BACKEDN (ignored); did you mean ORCH_RESULT_BACKEND?"
    ]


# --- errors that concern a setting ----------------------------------------------------------


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(
        workdir=tmp_path_factory.mktemp("locked"),
        extra_args=["--requirepass", "right"],
        password="right",
    )
    with server:
        yield server


COMMANDS = [("status",), ("backup", "status"), ("scale",), ("agents",), ("submit", "echo")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_wrong_password_names_the_variable_in_every_command(locked_redis, command):
    env = worker_environ(locked_redis.url_as(None, "wrong"))
    done = cli(env, *command, check=False)
    assert (done.returncode, done.stderr.strip()) == (2, f"Error: ORCH_REDIS_URL: {WRONGPASS}")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_closed_port_names_the_variable_in_every_command(command):
    port = free_port()
    done = cli(worker_environ(f"redis://127.0.0.1:{port}/0"), *command, check=False)
    said = done.stderr.strip()
    assert done.returncode == 2, said
    assert said.startswith("Error: ORCH_REDIS_URL: Redis not reachable (") and f":{port}" in said
    assert len(said.splitlines()) == 1, said


def test_the_variable_named_is_the_override_in_use(locked_redis):
    env = {**worker_environ(locked_redis.url), "ORCH_STATE_URL": locked_redis.url_as(None, "no")}
    for command in (("status",), ("backup", "status"), ("agents",)):
        done = cli(env, *command, check=False)
        assert (done.returncode, done.stderr.strip()) == (
            2,
            f"Error: ORCH_STATE_URL: {WRONGPASS}",
        ), command


def test_an_invalid_setting_reads_the_same_way(locked_redis):
    env = {**worker_environ(locked_redis.url), "ORCH_AGENT_TIMEOUT_S": "-1"}
    for command in (("status",), ("scale",), ("backup", "status")):
        done = cli(env, *command, check=False)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("Error: ORCH_AGENT_TIMEOUT_S: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
