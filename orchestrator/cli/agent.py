"""`orchestrator agent`: start an agent worker, or put one to sleep and wake it by hand.

`orchestrator agent --capabilities echo=1.0 [CELERY ARGS]` starts a worker (the verb other
services' tooling calls); `orchestrator agent sleep ID` and `orchestrator agent wake ID` act on a
running one through the same steps as the sleep/wake loop (orchestrator.scaling.sleepwake).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestrator.cli import common
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError
from orchestrator.models import AgentStatus, RegisteredAgent
from orchestrator.settings_parsers import parse_capabilities

if TYPE_CHECKING:
    from orchestrator.store.ports import CliStore

SOURCE = "cli"


class _AgentGroup(click.Group):
    """`sleep` and `wake` are subcommands; anything else starts an agent (`start`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_AgentGroup)
def agent() -> None:
    """Start an agent worker, or put one to sleep / wake it."""


@agent.command("start", context_settings={"ignore_unknown_options": True})
@click.option(
    "--capabilities",
    "-c",
    required=True,
    help="name=proficiency,... (0 < p <= 1; a bare name means 1.0)",
)
@click.option("--handlers", default=None, help="Modules to import handlers from (ORCH_HANDLERS).")
@click.option("--id", "agent_id", default=None, help="Agent id (default: the worker hostname).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def start(
    capabilities: str,
    handlers: str | None,
    agent_id: str | None,
    concurrency: int | None,
    celery_args: tuple[str, ...],
) -> None:
    """Start an agent worker (extra arguments go to `celery worker`).

    `orchestrator agent sleep ID` / `orchestrator agent wake ID` put a running agent to sleep
    and wake it.
    """
    try:
        parse_capabilities(capabilities)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--capabilities") from None
    env = {"ORCH_AGENT_CAPABILITIES": capabilities}
    if handlers:
        env["ORCH_HANDLERS"] = handlers
    if agent_id:
        env["ORCH_AGENT_ID"] = agent_id
    args = ["worker", "-l", "info"]
    if agent_id:
        args += ["-n", f"{agent_id}@%h"]
    if concurrency:
        args += ["-c", str(concurrency)]
    common.exec_celery([*args, *celery_args], env)


def _find(settings: Settings, agent_id: str) -> tuple[CliStore, RegisteredAgent, int]:
    """The store, the agent (effective status) and the messages waiting in its queue."""
    from orchestrator.routing.weights import effective_status
    from orchestrator.store import now_s
    from orchestrator.store.monitoring import MonitoringStore

    store = common.store(settings)
    now = now_s()
    try:
        found = {a.agent_id: a for a in store.load_fleet(settings.circuit_rule(), now).agents}
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    if agent_id not in found:
        known = ", ".join(sorted(found)) or "none registered"
        raise click.ClickException(f"no agent {agent_id!r} (agents: {known})")
    agent = found[agent_id]
    agent.status = effective_status(agent, now, settings.agent_timeout_s)
    waiting = MonitoringStore.of(store.r, settings).waiting([agent.queue]).get(agent.queue, 0)
    return store, agent, waiting


def _report(agent_id: str, status: AgentStatus, changed: bool, as_json: bool) -> None:
    if as_json:
        common.print_json({"agent_id": agent_id, "status": status.value, "changed": changed})
    else:
        click.echo(f"agent {agent_id} is {status.value}" + ("" if changed else " (unchanged)"))


@agent.command("sleep")
@click.argument("agent_id")
@click.option("--json", "as_json", is_flag=True, help="Print {agent_id, status, changed}.")
def sleep_cmd(agent_id: str, as_json: bool) -> None:
    """Put an active agent to sleep now: routing skips it and its worker stops consuming its
    queue (tasks it is running finish). The sleep/wake loop wakes it again when work needs
    it (a backlog, a parked task it can take)."""
    from orchestrator.runtime.celeryconf import create_app
    from orchestrator.scaling.sleep import MANUAL_REASON
    from orchestrator.scaling.sleepwake import put_to_sleep
    from orchestrator.store import now_s

    settings = common.settings()
    store, found, waiting = _find(settings, agent_id)
    if found.status is AgentStatus.SLEEPING:
        _report(agent_id, found.status, False, as_json)
        return
    if found.status is not AgentStatus.ACTIVE:
        raise click.ClickException(
            f"agent {agent_id} is {found.status.value}; only an active agent sleeps"
        )
    if waiting:
        raise click.ClickException(
            f"agent {agent_id} has {waiting} task(s) waiting in its queue; "
            "it can sleep once they have started"
        )
    app = create_app(settings, with_tasks=False)
    changed = put_to_sleep(store, app, found, now_s(), MANUAL_REASON, SOURCE)
    _report(agent_id, AgentStatus.SLEEPING, changed, as_json)


@agent.command("wake")
@click.argument("agent_id")
@click.option("--json", "as_json", is_flag=True, help="Print {agent_id, status, changed}.")
def wake_cmd(agent_id: str, as_json: bool) -> None:
    """Wake a sleeping agent: its worker consumes its queue again and parked tasks it can
    take are routed."""
    from orchestrator.runtime.celeryconf import create_app
    from orchestrator.scaling.sleepwake import PARKED_TASK, wake
    from orchestrator.store import now_s

    settings = common.settings()
    store, found, _waiting = _find(settings, agent_id)
    if found.status is AgentStatus.ACTIVE:
        _report(agent_id, found.status, False, as_json)
        return
    if found.status is not AgentStatus.SLEEPING:
        raise click.ClickException(f"agent {agent_id} is {found.status.value}, not sleeping")
    app = create_app(settings, with_tasks=False)
    changed = wake(store, app, found, now_s(), "manual", SOURCE)
    if changed:
        app.send_task(PARKED_TASK)
    _report(agent_id, AgentStatus.ACTIVE, changed, as_json)


def register(group: click.Group) -> None:
    """Attach `agent` to the `orchestrator` group."""
    group.add_command(agent)
