"""`orchestrator dlq`: the dead-letter store, both its kinds.

`task`: tasks recovery gave up on, or parked past their timeout (ledger entries, replayable).
`poison`: messages a worker refused at its edge (orchestrator.runtime.gate): no task, so nothing to
replay; kept with their raw bytes for inspection until purged.
"""

from __future__ import annotations

import base64
import sys
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from orchestrator.cli import common
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.store.ports import CliStore

console = common.console
err_console = common.err_console

KINDS = ("task", "poison", "all")


def _store() -> CliStore:
    return common.store(common.settings())


def _task_rows(store: CliStore, limit: int) -> list[dict[str, Any]]:
    rows = []
    for task_id, ts in store.dead_letters(limit):
        fields = store.task_fields(task_id)
        rows.append(
            {
                "kind": "task",
                "task_id": task_id,
                "dead_lettered_at": ts,
                "type": fields.get("type"),
                "attempts": int(fields.get("attempts", 0)),
                "error": fields.get("error"),
            }
        )
    return rows


def _poison_rows(store: CliStore, limit: int) -> list[dict[str, Any]]:
    return [{"kind": "poison", **row} for row in store.poison_messages(limit)]


@click.group()
def dlq() -> None:
    """The dead-letter store: tasks given up on (kind task) and refused messages (poison)."""


@dlq.command("list")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="task",
    show_default=True,
    help="task: dead-lettered tasks; poison: messages refused at a worker's edge; all: both.",
)
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(kind: str, limit: int, as_json: bool) -> None:
    """Dead letters, newest first."""
    try:
        store = _store()
        tasks = _task_rows(store, limit) if kind in ("task", "all") else []
        poison = _poison_rows(store, limit) if kind in ("poison", "all") else []
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    if as_json:
        common.print_json(tasks + poison)
        return
    fmt = common.fmt_ts
    if kind in ("task", "all"):
        table = Table("task", "type", "when", "attempts", "reason", title="dead-lettered tasks")
        for row in tasks:
            table.add_row(
                row["task_id"],
                str(row["type"]),
                fmt(row["dead_lettered_at"]),
                str(row["attempts"]),
                str(row["error"]),
            )
        console.print(table if tasks else "no dead-lettered task")
    if kind in ("poison", "all"):
        table = Table("id", "queue", "when", "bytes", "reason", "excerpt", title="poison messages")
        for row in poison:
            table.add_row(
                row["id"],
                row["queue"],
                fmt(row["ts"]),
                str(row["size"]),
                row["reason"],
                row["excerpt"],
            )
        console.print(table if poison else "no poison message")


@dlq.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_show(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """One dead letter: a task with its whole history, or a poison message with its bytes."""
    from orchestrator.store.dlq import is_poison_id

    if not is_poison_id(entry_id):
        ctx.invoke(common.root_command(ctx, "task"), task_id=entry_id, as_json=as_json)
        return
    try:
        entry = _store().poison_message(entry_id)
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    if entry is None:
        raise click.ClickException(f"no poison message {entry_id!r} (purged, or never kept)")
    if as_json:
        common.print_json({"kind": "poison", **entry})
        return
    raw = base64.b64decode(entry.get("raw", ""))
    console.print(
        f"[bold]{entry['id']}[/] from queue [bold]{entry['queue']}[/] at "
        f"{common.fmt_ts(entry['ts'])}, {entry['size']} bytes"
        + (f" (first {len(raw)} kept)" if entry.get("truncated") else "")
    )
    console.print(f"refused: {entry['reason']}")
    click.echo(raw.decode("utf-8", "backslashreplace"))


@dlq.command("replay")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead-lettered task.")
@click.option("--json", "as_json", is_flag=True)
def dlq_replay(task_ids: tuple[str, ...], replay_all: bool, as_json: bool) -> None:
    """Run dead-lettered tasks again: same id, fresh attempt count, history kept."""
    from orchestrator.runtime.celeryconf import create_app
    from orchestrator.store import now_s
    from orchestrator.store.dlq import is_poison_id

    settings = common.settings()
    store = common.store(settings)
    ids = [t for t, _ in store.dead_letters(100_000)] if replay_all else list(task_ids)
    if not ids:
        raise click.UsageError("name at least one TASK_ID, or --all")
    replayed, errors = [], {}
    for task_id in ids:
        if is_poison_id(task_id):
            errors[task_id] = "a poison message is no task: it cannot be replayed (dlq show it)"
            continue
        try:
            store.reopen_dead_letter(task_id, now_s())
            replayed.append(task_id)
        except OrchestratorError as exc:
            errors[task_id] = str(exc)
    if replayed:
        create_app(settings, with_tasks=False).send_task("orchestrator.route_parked")
    if as_json:
        common.print_json({"replayed": replayed, "errors": errors})
    else:
        for task_id in replayed:
            click.echo(f"replayed {task_id}")
        for task_id, error in errors.items():
            err_console.print(f"[red]{task_id}: {error}[/]")
    if errors:
        sys.exit(1)


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="task",
    show_default=True,
    help="With --all: which kind to empty.",
)
@click.option("--all", "purge_all", is_flag=True, help="Empty the store (of --kind).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(entry_ids: tuple[str, ...], kind: str, purge_all: bool, yes: bool) -> None:
    """Forget dead letters (a task's ledger entry expires on its own)."""
    from orchestrator.store.dlq import is_poison_id

    if not entry_ids and not purge_all:
        raise click.UsageError("name at least one id, or --all")
    if purge_all and not yes:
        what = {"task": "dead-lettered task", "poison": "poison message", "all": "dead letter"}
        click.confirm(f"Remove every {what[kind]}?", abort=True)
    try:
        store = _store()
        if purge_all:
            tasks = store.purge_dead_letters(None) if kind in ("task", "all") else 0
            poison = store.purge_poison(None) if kind in ("poison", "all") else 0
        else:
            tasks = store.purge_dead_letters([i for i in entry_ids if not is_poison_id(i)])
            poison = store.purge_poison([i for i in entry_ids if is_poison_id(i)])
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    click.echo(f"removed {tasks} dead letter(s) and {poison} poison message(s)")


def register(group: click.Group) -> None:
    """Attach this module's commands to the `orchestrator` group."""
    group.add_command(dlq)
