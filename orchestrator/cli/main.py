"""The `orchestrator` command: start roles, submit work, and read the cluster's state."""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING

import click
from rich.table import Table

from orchestrator.cli import common
from orchestrator.errors import OrchestratorError
from orchestrator.models import TaskState

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.models import TaskRecord
    from orchestrator.store.ports import CliStore

console = common.console
err_console = common.err_console
_settings = common.settings
_print_json = common.print_json
_preflight = common.preflight
_store = common.store
_fmt_ts = common.fmt_ts


_exec_celery = common.exec_celery


@click.group(cls=common.OrchestratorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hive-orchestrator")
def main() -> None:
    """Hive Orchestrator: capability-weighted task routing for agent fleets.

    Configuration comes from ORCH_* environment variables (or .env); every one is listed in
    docs/reference/settings.md. An error that concerns one reads `Error: ORCH_X: what is
    wrong` and exits with status 2.
    """


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def control(celery_args: tuple[str, ...]) -> None:
    """Start a control worker (routing, recovery, monitoring queues)."""
    _exec_celery(
        ["worker", "-n", "control@%h", "-l", "info", *celery_args], {"ORCH_AGENT_CAPABILITIES": ""}
    )


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def task(task_id: str, as_json: bool) -> None:
    """Show a task's ledger entry: state, agent, attempts, history (and, for a parked task,
    why no agent can take it)."""
    settings = _settings()
    store = _store(settings)
    try:
        record = store.task_record(task_id)
    except OrchestratorError as exc:  # UnknownTask, the store unreachable
        raise common.failure(exc) from None
    if as_json:
        _print_json(record.model_dump(mode="json"))
        return
    console.print(
        f"[bold]{record.task_id}[/] {record.type}: [bold]{record.state.value}[/] "
        f"on {record.agent_id or '-'} after {record.attempts} attempt(s)"
    )
    if record.state is TaskState.PARKED:
        console.print(f"parked: {_parked_reason(store, settings, record)}", markup=False)
    if record.error:
        console.print(f"error: {record.error}")
    table = Table("time", "state", "details")
    for entry in record.history:
        details = {k: v for k, v in entry.items() if k not in ("ts", "state")}
        table.add_row(
            _fmt_ts(entry.get("ts")),
            str(entry.get("state")),
            json.dumps(details) if details else "",
        )
    console.print(table)


def _parked_reason(store: CliStore, settings: Settings, record: TaskRecord) -> str:
    """The reason recorded when the task was parked; for one parked without (a restore, a
    dead letter replayed), the reason the fleet gives now."""
    from orchestrator.routing.explain import park_reason, parked_reason
    from orchestrator.store import now_s

    recorded = parked_reason(record.history)
    if recorded is not None:
        return recorded
    now = now_s()
    fleet = store.load_fleet(settings.circuit_rule(), now)
    return park_reason(record.required_capabilities, fleet.agents, now, settings.agent_timeout_s)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def agents(as_json: bool) -> None:
    """List agents: capabilities, status, circuit, performance."""
    from orchestrator.routing.weights import effective_status
    from orchestrator.store import now_s

    settings = _settings()
    now = now_s()
    try:
        found = _store(settings).load_fleet(settings.circuit_rule(), now).agents
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    for a in found:
        a.status = effective_status(a, now, settings.agent_timeout_s)
    if as_json:
        _print_json([a.model_dump(mode="json") for a in found])
        return
    table = Table(
        "agent",
        "status",
        "capabilities",
        "circuit",
        "score",
        "ok",
        "failed",
        "latency ms",
        "in flight",
        "heartbeat",
    )
    for a in found:
        caps = ", ".join(f"{n}={p:g}" for n, p in sorted(a.capabilities.items()))
        table.add_row(
            a.agent_id,
            a.status.value,
            caps,
            a.circuit.value,
            f"{a.performance_score:.2f}",
            str(a.tasks_succeeded),
            str(a.tasks_failed),
            "-" if a.latency_ms is None else f"{a.latency_ms:.1f}",
            str(a.in_flight),
            f"{now - a.last_heartbeat:.1f}s ago",
        )
    console.print(table if found else "no agents registered")


#: A stream entry id as --since takes it: `<ms>-<seq>`, or `<ms>` alone (0: the start).
STREAM_ID_RE = re.compile(r"^[0-9]{1,20}(-[0-9]{1,20})?\Z")


@main.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (Ctrl-C stops).")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option(
    "--since",
    "since_id",
    default=None,
    metavar="ID",
    help="Every event after the stream entry ID (0: from the start; a bare millisecond time "
    "works too), as XREAD hands them out: pass the last id seen to resume.",
)
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many: the newest 50 by default; with --since, every one after ID.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(
    follow: bool, types: tuple[str, ...], since_id: str | None, count: int | None, as_json: bool
) -> None:
    """Read the event log (orchestrator:events and orchestrator:events:tasks, merged by id),
    oldest first, each line with its id."""
    from orchestrator.models import OrchestrationEvent

    if since_id is not None and not STREAM_ID_RE.match(since_id):
        raise click.BadParameter(
            f"{since_id!r} is not a stream entry id (like 1718000000000-0, or 0)",
            param_hint="--since",
        )
    store = _store(_settings())
    shown = 0

    def show(event: OrchestrationEvent) -> None:
        nonlocal shown
        if types and event.type not in types:
            return
        shown += 1
        if as_json:
            click.echo(event.model_dump_json())
        else:
            click.echo(
                f"{event.id} {_fmt_ts(event.ts)} {event.severity.value:8} {event.type:20} "
                f"{event.source:24} {json.dumps(event.data, default=str)}"
            )

    try:
        if since_id is not None:
            last = since_id
            while count is None or shown < count:
                try:
                    page = store.events_after(last, 1000)
                except ValueError as exc:
                    raise click.BadParameter(str(exc), param_hint="--since") from None
                if not page:
                    break
                for event in page:
                    # Never between two events of one id (one in each stream): resuming
                    # after the last id shown must find neither again.
                    if count is not None and shown >= count and event.id != last:
                        break
                    show(event)
                    last = event.id or last
        else:
            wanted = count or 50
            recent = store.tail_events(wanted if not types else wanted * 20, settled=True)
            matching = [e for e in recent if not types or e.type in types]
            for event in matching[-wanted:]:
                show(event)
            # None settled yet: whatever there is was written this millisecond.
            last = recent[-1].id if recent and recent[-1].id else "0-0"
        if follow:
            while True:
                last, batch = store.follow_events(last)
                for event in batch:
                    show(event)
    except KeyboardInterrupt:
        pass
    except OrchestratorError as exc:
        raise common.failure(exc) from None


@main.command()
@click.option("--task", "task_id", default=None, help="Re-route this task now.")
@click.option(
    "--agent",
    "agent_id",
    default=None,
    help="Treat this agent as lost: move everything it holds elsewhere.",
)
def recover(task_id: str | None, agent_id: str | None) -> None:
    """Trigger recovery by hand (runs on a control worker)."""
    from orchestrator.runtime.celeryconf import create_app

    if bool(task_id) == bool(agent_id):
        raise click.UsageError("give exactly one of --task or --agent")
    settings = _settings()
    sender = create_app(settings, with_tasks=False)
    if task_id:
        if not _store(settings).task_exists(task_id):
            raise click.ClickException(f"no task {task_id!r} in the ledger")
        sender.send_task(
            "orchestrator.recover", kwargs={"task_id": task_id, "kind": "crash", "error": "manual"}
        )
        click.echo(f"recovery of task {task_id} requested")
    else:
        sender.send_task(
            "orchestrator.recover_agent", kwargs={"agent_id": agent_id, "reason": "manual"}
        )
        click.echo(f"recovery of agent {agent_id} requested")


@main.command()
@click.option(
    "--agents",
    "n_agents",
    type=click.IntRange(0, 16),
    default=3,
    show_default=True,
    help="Demo agents running examples/handlers.py.",
)
@click.option("--flower-port", type=int, default=5555, show_default=True)
@click.option(
    "--exporter-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the metrics exporter [default: ORCH_EXPORTER_PORT, 9808].",
)
@click.option("--no-beat", is_flag=True, help="Do not start celery beat.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=".run",
    show_default=True,
    help="Where logs and the embedded Redis's data (RUN_DIR/redis) go.",
)
@click.option(
    "--redis-port",
    type=click.IntRange(0, 65535),
    default=common.DEV_REDIS_PORT,
    show_default=True,
    help="Port of the stack's own redis-server, started when ORCH_REDIS_URL is not set; "
    "a free port instead when this one is taken (0: a free port). 6379 is never used.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Start with empty data (`make run-fresh`): remove the embedded Redis's data "
    "(RUN_DIR/redis: tasks, parked and dead-lettered ones, findings, alerts of earlier runs) "
    "first. Refused when ORCH_REDIS_URL names a Redis that answers: the stack never wipes "
    "one it did not start.",
)
@click.option(
    "--stop-file",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Write PATH, and stop everything once it is removed (`make run` passes its "
    "target, which make removes when it is interrupted).",
)
@click.option(
    "--outlive-parent",
    is_flag=True,
    help="Keep running when the process that started this one exits (by default "
    "everything stops then: make or an IDE killed).",
)
def dev(
    n_agents: int,
    flower_port: int,
    exporter_port: int | None,
    no_beat: bool,
    no_flower: bool,
    run_dir: str,
    redis_port: int,
    fresh: bool,
    stop_file: str | None,
    outlive_parent: bool,
) -> None:
    """Start everything locally: a Redis, a control worker, demo agents, beat, Flower and the
    metrics exporter, until Ctrl-C.

    The Redis is the one ORCH_REDIS_URL names (started there if nothing answers), else the
    stack's own redis-server on --redis-port; the banner prints what to export in a second
    terminal. Everything runs under ORCH_PROFILE=dev unless ORCH_PROFILE is set: a typo in a
    task name or a slow demo task is a warning, not a page."""
    from orchestrator.cli.dev import DevStack

    settings = _settings()
    if "profile" not in settings.model_fields_set:
        settings = _settings(profile="dev")
    stack = DevStack(
        settings,
        run_dir=run_dir,
        n_agents=n_agents,
        flower_port=flower_port,
        exporter_port=exporter_port,
        beat=not no_beat,
        flower=not no_flower,
        redis_port=redis_port,
        fresh=fresh,
        stop_file=stop_file,
        watch_parent=not outlive_parent,
    )
    sys.exit(stack.run())


def _register_extensions() -> None:
    from orchestrator.cli import agent as cli_agent
    from orchestrator.cli import anomaly as cli_anomaly
    from orchestrator.cli import backlog as cli_backlog
    from orchestrator.cli import bench as cli_bench
    from orchestrator.cli import dlq as cli_dlq
    from orchestrator.cli import monitoring as cli_monitoring
    from orchestrator.cli import submit as cli_submit

    cli_agent.register(main)
    cli_anomaly.register(main)
    cli_backlog.register(main)
    cli_bench.register(main)
    cli_dlq.register(main)
    cli_monitoring.register(main)
    cli_submit.register(main)
    __import__("orchestrator.cli.scale", fromlist=["register"]).register(main)


_register_extensions()

if __name__ == "__main__":
    main()
