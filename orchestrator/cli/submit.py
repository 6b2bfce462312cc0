"""`orchestrator submit`: submit a task, say what became of it, and wait for it if asked.

What the submitter is told beyond the id goes to stderr, so `id=$(orchestrator submit ...)`
keeps working: why a task is parked, that a known id came with another spec, the id as soon
as the task is accepted when it waits, and, when a wait runs out or is interrupted, that the
task goes on and how to follow it.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli import common
from orchestrator.errors import DuplicateTask, InvalidTask, OrchestratorError

if TYPE_CHECKING:
    from orchestrator.client import OrchestratorClient, Submission
    from orchestrator.config import Settings

#: Exit status of `submit --wait` when --wait-timeout ran out: the task has not failed, it
#: goes on (its state and how to follow it are on stderr).
STILL_WAITING = 3
#: Exit status of `submit --wait` stopped by Ctrl-C (SIGINT), as a shell reports one: the
#: task goes on.
INTERRUPTED = 130


def say(message: str) -> None:
    click.echo(message, err=True)


def tell(handle: Submission, settings: Settings) -> None:
    """What the submitter should know beyond the id: why the task is parked, and that its
    id was known with another spec."""
    if handle.parked and handle.reason:
        say(
            f"parked: {handle.reason}; it waits up to {settings.pending_timeout_s:g} s for one "
            "(ORCH_PENDING_TIMEOUT_S), then goes to the dead-letter store"
        )
    if handle.differs:
        say(f"warning: {DuplicateTask(handle.id, handle.differs)}")


def ledger_state(client: OrchestratorClient, task_id: str) -> tuple[str, str | None]:
    """The task's state in the ledger now, and why it is parked if it is."""
    from orchestrator.models import TaskState
    from orchestrator.routing.explain import parked_reason

    try:
        record = client.task(task_id)
    except OrchestratorError:
        return "unknown", None
    reason = parked_reason(record.history) if record.state is TaskState.PARKED else None
    return record.state.value, reason


def still_waiting(client: OrchestratorClient, task_id: str, waited: float, as_json: bool) -> None:
    state, reason = ledger_state(client, task_id)
    if as_json:
        said: dict[str, Any] = {"task_id": task_id, "state": state, "waited_s": waited}
        common.print_json({**said, "reason": reason} if reason else said)
    say(
        f"task {task_id} is still {state} after waiting {waited:g} s: it has not failed and "
        f"goes on; follow it with `orchestrator task {task_id}`"
    )
    if reason:
        say(f"parked: {reason}")
    raise click.exceptions.Exit(STILL_WAITING)


def interrupted(client: OrchestratorClient, task_id: str) -> None:
    state, _reason = ledger_state(client, task_id)
    say(
        f"interrupted: task {task_id} keeps running ({state}); only the wait stopped: follow "
        f"it with `orchestrator task {task_id}`"
    )
    raise click.exceptions.Exit(INTERRUPTED)


@click.command()
@click.argument("task_type")
@click.option("--payload", default="{}", help="JSON object given to the handler.")
@click.option("--priority", type=int, default=None, help="0-9, 9 is most urgent (default 5).")
@click.option("--task-id", default=None, help="Your own id (idempotent resubmission).")
@click.option(
    "--capability",
    "capabilities",
    multiple=True,
    help="Required capability (repeatable; default: the task type).",
)
@click.option("--timeout", "timeout_s", type=float, default=None, help="Handler timeout, s.")
@click.option("--max-retries", type=int, default=None)
@click.option("--affinity-key", default=None)
@click.option("--client-id", default="cli")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--wait-timeout", type=float, default=300.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def submit(
    task_type: str,
    payload: str,
    priority: int | None,
    task_id: str | None,
    capabilities: tuple[str, ...],
    timeout_s: float | None,
    max_retries: int | None,
    affinity_key: str | None,
    client_id: str,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Submit a task of TASK_TYPE; prints its id (and its result with --wait).

    Exit status: 0 accepted (with --wait: succeeded); 1 refused, or (with --wait) the task
    failed; 2 an option or a setting is wrong; 3 --wait-timeout ran out while the task goes
    on; 130 Ctrl-C stopped the wait (not the task).
    """
    from orchestrator.client import OrchestratorClient
    from orchestrator.models import parse_task

    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None
    fields: dict[str, Any] = {"client_id": client_id}
    for name, value in (
        ("priority", priority),
        ("task_id", task_id),
        ("timeout_s", timeout_s),
        ("max_retries", max_retries),
        ("affinity_key", affinity_key),
    ):
        if value is not None:
            fields[name] = value
    if capabilities:
        fields["required_capabilities"] = list(capabilities)
    settings = common.settings()
    try:  # the router checks again; checking here too gives the error before a round trip
        parse_task({"type": task_type, "payload": body, **fields}, settings.max_payload_bytes)
    except InvalidTask as exc:
        raise click.ClickException(str(exc)) from None
    common.preflight(settings)
    try:
        with OrchestratorClient(settings=settings) as client:
            run(client, settings, task_type, body, fields, wait, wait_timeout, as_json)
    except KeyboardInterrupt:  # before the task was accepted, or while it was being
        say("interrupted: the submission may or may not have been accepted")
        raise click.exceptions.Exit(INTERRUPTED) from None


def run(
    client: OrchestratorClient,
    settings: Settings,
    task_type: str,
    body: dict[str, Any],
    fields: dict[str, Any],
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    from celery.exceptions import TimeoutError as WaitRanOut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DuplicateTask)  # said below, as a line of ours
            handle = client.submit(task_type, body, **fields)
    except OrchestratorError as exc:  # RateLimited, ClientBlocked, the store unreachable
        raise common.failure(exc) from None
    if not wait:
        tell(handle, settings)
        if not as_json:
            click.echo(handle.id)
            return
        said: dict[str, Any] = {
            "task_id": handle.id,
            "outcome": handle.outcome.value if handle.outcome else None,
        }
        if handle.reason:
            said["reason"] = handle.reason
        if handle.differs:
            said["differs"] = list(handle.differs)
        common.print_json(said)
        return
    try:  # accepted: a Ctrl-C from here on, even one landing while this is said, stops the wait
        tell(handle, settings)
        say(f"accepted {handle.id}; waiting for its result (Ctrl-C stops the wait, not the task)")
    except KeyboardInterrupt:
        interrupted(client, handle.id)
    try:
        value = handle.get(timeout=wait_timeout, propagate=True)
    except KeyboardInterrupt:
        interrupted(client, handle.id)
    except WaitRanOut:
        still_waiting(client, handle.id, wait_timeout, as_json)
    except Exception as exc:  # the task's own failure, raised here again
        setting = common.redis_problem(exc)
        if setting is not None:  # the result backend failed us, not the task
            raise common.SettingProblem(setting) from None
        if as_json:
            common.print_json({"task_id": handle.id, "state": "failed", "error": str(exc)})
        raise click.ClickException(f"task {handle.id} failed: {exc}") from None
    if as_json:
        common.print_json({"task_id": handle.id, "state": "succeeded", "result": value})
    else:
        click.echo(f"{handle.id}: {json.dumps(value)}")


def register(group: click.Group) -> None:
    """Attach `submit` to the `orchestrator` group."""
    group.add_command(submit)
