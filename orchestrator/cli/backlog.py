"""`orchestrator backlog` and `orchestrator cancel`: what waits for a slot, and taking it out.

The decision per ledger state is orchestrator.routing.cancel's; this module does the I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich import box
from rich.table import Table

from orchestrator.cli import common
from orchestrator.errors import Cancelled, OrchestratorError

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.store.ports import CliStore

#: How long `cancel` waits for the running task's worker to confirm it stopped the handler.
REVOKE_TIMEOUT_S = 3.0


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _counts(counts: dict[Any, int]) -> str:
    return "  ".join(f"{k}:{n}" for k, n in counts.items())


def backlog_report(store: CliStore, now: float) -> dict[str, Any]:
    """The backlog as `orchestrator backlog --json` prints it."""
    groups = store.backlog(now)
    return {
        "ts": now,
        "waiting": sum(g.waiting for g in groups),
        "capability_sets": [
            {
                "capabilities": g.capability_key,
                "waiting": g.waiting,
                "oldest_s": round(g.oldest_s, 3),
                "by_priority": {str(p): n for p, n in g.by_priority.items()},
                "by_client": dict(sorted(g.by_client.items(), key=lambda cn: (-cn[1], cn[0]))),
            }
            for g in sorted(groups, key=lambda g: (-g.waiting, g.capability_key))
        ],
        "concurrency_keys": {
            key: {"limit": limit, "holding": holding, "waiting": waiting}
            for key, (limit, holding, waiting) in sorted(store.concurrency_keys().items())
        },
        "deferred": store.deferred_count(),
        "parked": store.parked_count(),
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def backlog(as_json: bool) -> None:
    """What waits for a free slot, per capability set.

    A task waits in the backlog when no eligible agent has a free slot for it (an agent holds
    at most its concurrency + ORCH_AGENT_PREFETCH unfinished tasks). One row per capability
    set (the capabilities a task needs) with tasks waiting: how many, how long the oldest has
    waited, and how many of each priority (9 most urgent, taken first) and of each client
    (fair share between them). Parked tasks (no capable agent at all) are in the rows too.

    Below the rows: each concurrency key's limit, the tasks holding one of its permits, and
    the tasks waiting for one (not in the rows until they get it); deferred tasks (countdowns
    and retry back-offs held until due); parked tasks.

    `orchestrator cancel ID` takes a waiting task out.
    """
    from orchestrator.store import now_s

    try:
        report = backlog_report(common.store(common.settings()), now_s())
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    if as_json:
        common.print_json(report)
        return
    console = common.console
    rows = report["capability_sets"]
    if rows:
        table = Table(box=box.SIMPLE_HEAD, title=f"backlog: {report['waiting']} task(s) waiting")
        table.add_column("capabilities", no_wrap=True)
        table.add_column("waiting", justify="right")
        table.add_column("oldest", justify="right", no_wrap=True)
        table.add_column("by priority")
        table.add_column("by client")
        for row in rows:
            table.add_row(
                row["capabilities"],
                str(row["waiting"]),
                _age(row["oldest_s"]),
                _counts(row["by_priority"]),
                _counts(row["by_client"]),
            )
        console.print(table)
    else:
        console.print("nothing waits in the backlog")
    keys = report["concurrency_keys"]
    if keys:
        table = Table(box=box.SIMPLE_HEAD, title="concurrency keys")
        table.add_column("key", no_wrap=True)
        for name in ("limit", "holding", "waiting"):
            table.add_column(name, justify="right")
        for key, row in keys.items():
            table.add_row(key, str(row["limit"]), str(row["holding"]), str(row["waiting"]))
        console.print(table)
    console.print(
        f"deferred: {report['deferred']} (held until due)  "
        f"parked: {report['parked']} (no capable agent)",
        highlight=False,
        markup=False,
    )


def _refuse(task_id: str, state: str | None, problem: str, as_json: bool) -> NoReturn:
    if as_json:
        common.print_json(
            {"task_id": task_id, "cancelled": False, "state": state, "error": problem}
        )
    raise click.ClickException(problem)


def _stop(app: Celery, store: CliStore, task_id: str, agent_id: str | None) -> bool:
    """Revoke the task, terminating its handler; True when its worker confirmed. The worker
    stores its own `REVOKED` state as it does so: the caller stores `Cancelled` after."""
    node = next((a.node for a in store.load_agents() if a.agent_id == agent_id and a.node), None)
    replies = app.control.revoke(
        task_id,
        terminate=True,
        destination=[node] if node else None,
        reply=True,
        timeout=REVOKE_TIMEOUT_S,
        limit=1 if node else None,
    )
    return bool(replies)


@click.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cancel(task_id: str, as_json: bool) -> None:
    """Cancel a task: a waiting one never runs, a running one is stopped.

    A task waiting in the backlog (queued, parked, deferred), routed to an agent but not
    started, or between recovery steps ends `failed` at once: it leaves the backlog, its
    concurrency key's permit passes on, and a copy already in an agent's queue is skipped
    when it arrives. A running task ends the same way and its handler is terminated (a
    Celery revoke). Either way its result raises orchestrator.errors.Cancelled, and the
    freed slot or permit goes to the next waiting task.

    Exit status 1, naming the state, when there is nothing to cancel: no such task, or it
    has already ended.
    """
    from orchestrator.models import TaskState
    from orchestrator.routing.cancel import plan_cancel, revoke_needed
    from orchestrator.runtime.canvas import task_failer
    from orchestrator.runtime.celeryconf import create_app
    from orchestrator.store import now_s

    settings = common.settings()
    try:
        store = common.store(settings)
        before = store.task_fields(task_id)
        plan = plan_cancel(task_id, before)
        if not plan.end:
            _refuse(task_id, plan.state, plan.problem or "nothing to cancel", as_json)
        error = Cancelled(task_id, plan.state)
        done = store.finish(
            task_id,
            state=TaskState.FAILED,
            agent_id=None,
            now=now_s(),
            error=str(error),
            task_type=before.get("type"),
        )
        after = store.task_fields(task_id)
        if not done:  # it ended (or expired) between the read and now
            late = plan_cancel(task_id, after)
            _refuse(task_id, late.state, late.problem or "nothing to cancel", as_json)
        app = create_app(settings, with_tasks=False)
        revoke = revoke_needed(plan, before, after)
        stopped = _stop(app, store, task_id, after.get("agent")) if revoke else False
        task_failer(app, store.load_spec)(task_id, error)  # its links fail with it
        # The freed slot, or the key's permit passed on, goes to the next waiting task.
        app.send_task("orchestrator.route_parked")
    except OrchestratorError as exc:
        raise common.failure(exc) from None
    if as_json:
        common.print_json(
            {
                "task_id": task_id,
                "cancelled": True,
                "state": plan.state,
                "revoked": revoke,
                "stopped": stopped,
                "error": str(error),
            }
        )
        return
    how = ""
    if revoke:
        how = (
            ": its handler was stopped"
            if stopped
            else f": revoked, but no worker confirmed within {REVOKE_TIMEOUT_S:g} s"
        )
    click.echo(f"cancelled task {task_id} (was {plan.state}){how}")


def register(group: click.Group) -> None:
    """Attach `backlog` and `cancel` to the `orchestrator` group."""
    group.add_command(backlog)
    group.add_command(cancel)
