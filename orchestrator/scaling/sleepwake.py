"""The sleep/wake loop (`orchestrator.sleep_wake`) and the acts it shares with the CLI.

Each tick reads the fleet, its queues, the parked tasks and the loop's marks, asks
orchestrator.scaling.sleep.plan what to do, and does it:

* sleep: the status goes `sleeping` with a checkpoint of the agent's figures and
  `agent.sleeping` (routers skip it from then on), then Celery's `cancel_consumer` tells the
  worker to stop consuming its queue;
* wake: `active` and `agent.woken`, Celery's `add_consumer`, then the parked tasks are routed;
* recycle: Celery's `pool_restart` (the pool's processes are replaced), `agent.recycled`.

The remote control commands are sent without waiting for replies: an agent also enforces
its stored status at every heartbeat (runtime.agent), so a missed command costs at most one
heartbeat interval. A control worker runs this; `orchestrator agent sleep|wake` runs the
same acts by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.models import AgentStatus, RegisteredAgent
from orchestrator.monitoring.loops import LoopContext
from orchestrator.routing.weights import effective_status
from orchestrator.scaling.sleep import AgentView, Decision, SleepPolicy, plan
from orchestrator.scaling.windows import active_window
from orchestrator.store.ports import SleepWakeStore

log = logging.getLogger(__name__)
SOURCE = "sleep-wake"
PARKED_TASK = "orchestrator.route_parked"


def _tell(app: Any, command: str, agent: RegisteredAgent, **arguments: Any) -> None:
    """A remote control command to the agent's worker alone, not waiting for its reply."""
    if app is None or not agent.node:
        return
    app.control.broadcast(command, arguments=arguments, destination=[agent.node], reply=False)


def put_to_sleep(
    store: SleepWakeStore, app: Any, agent: RegisteredAgent, now: float, reason: str, source: str
) -> bool:
    """Sleep an active agent; False (nothing done) when it was not active."""
    if not store.fall_asleep(agent, now=now, reason=reason, source=source):
        return False
    _tell(app, "cancel_consumer", agent, queue=agent.queue)
    log.info("agent %s sleeps (%s)", agent.agent_id, reason)
    return True


def wake(
    store: SleepWakeStore, app: Any, agent: RegisteredAgent, now: float, reason: str, source: str
) -> bool:
    """Wake a sleeping agent; False (nothing done) when it was not asleep. The caller routes
    the parked tasks afterwards (once for every agent woken together)."""
    if not store.wake_up(agent.agent_id, now=now, reason=reason, source=source):
        return False
    _tell(app, "add_consumer", agent, queue=agent.queue)
    log.info("agent %s wakes (%s)", agent.agent_id, reason)
    return True


def recycle(
    store: SleepWakeStore, app: Any, agent: RegisteredAgent, now: float, window: str
) -> None:
    """Restart the agent's pool (its processes are replaced; a running task finishes first)."""
    _tell(app, "pool_restart", agent, reload=False)
    store.mark_recycled([agent.agent_id], window)
    store.event("agent.recycled", now=now, source=SOURCE, agent_id=agent.agent_id, window=window)
    log.info("agent %s recycled in sleep window %s", agent.agent_id, window)


def _views(
    ctx: LoopContext, agents: list[RegisteredAgent], now: float
) -> tuple[list[AgentView], dict[str, int]]:
    """Each agent as the decisions see it, and the tasks waiting per capability in awake
    agents' queues (messages waiting or fetched and unacknowledged)."""
    queues = [a.queue for a in agents]
    waiting = ctx.mon.waiting(queues)
    depths = ctx.mon.queue_depths(queues, waiting)
    active = [a for a in agents if a.status is AgentStatus.ACTIVE]
    since = ctx.store.mark_idle({a.agent_id: depths.get(a.queue, 0) == 0 for a in active}, now)
    checkpoints = ctx.store.sleep_checkpoints()
    recycled = ctx.store.recycled_marks()
    views = [
        AgentView(
            agent_id=a.agent_id,
            capabilities=frozenset(a.capabilities),
            status=a.status,
            idle_s=now - since[a.agent_id] if a.agent_id in since else None,
            waiting=waiting.get(a.queue, 0),
            slept_for=checkpoints.get(a.agent_id, {}).get("reason"),
            recycled_in=recycled.get(a.agent_id),
        )
        for a in agents
    ]
    backlog: dict[str, int] = {}
    for agent in active:
        for cap in agent.capabilities:
            backlog[cap] = backlog.get(cap, 0) + depths.get(agent.queue, 0)
    return views, backlog


def decide(ctx: LoopContext, now: float) -> tuple[list[Decision], dict[str, RegisteredAgent]]:
    """This tick's decisions and the fleet they are about."""
    settings = ctx.settings
    agents = ctx.store.load_agents()
    for agent in agents:
        agent.status = effective_status(agent, now, settings.agent_timeout_s)
    views, backlog = _views(ctx, agents, now)
    waiting = ctx.mon.waiting_requirements()
    for needs, n in waiting.items():
        for cap in needs:
            backlog[cap] = backlog.get(cap, 0) + n
    found = active_window(settings.sleep_windows, now)
    window = f"{found[0]}@{found[1]:.0f}" if found is not None else None
    policy = SleepPolicy(
        idle_after_s=settings.sleep_after_idle_s,
        min_awake=settings.min_awake_agents,
        target_backlog=settings.scale_target_backlog,
    )
    decisions = plan(views, backlog, waiting, policy, window)
    return decisions, {a.agent_id: a for a in agents}


def run_sleep_wake(ctx: LoopContext, now: float) -> dict[str, Any]:
    """One tick: decide, then sleep, wake and recycle; route the parked tasks after a wake.
    With sleep off (no ORCH_SLEEP_AFTER_IDLE_S, no ORCH_SLEEP_WINDOWS, the defaults) and no
    agent put to sleep by hand there is nothing to decide: one read of the statuses, not
    the whole fleet and every queue (about 0.5 % of a core at 1,000 agents)."""
    done = {"slept": 0, "woken": 0, "recycled": 0}
    s = ctx.settings
    if not s.sleep_after_idle_s and not s.sleep_windows and not ctx.store.anyone_sleeping():
        return done
    decisions, fleet = decide(ctx, now)
    for decision in decisions:
        agent = fleet[decision.agent_id]
        if decision.action == "wake":
            done["woken"] += wake(ctx.store, ctx.app, agent, now, decision.reason, SOURCE)
        elif decision.action == "sleep":
            done["slept"] += put_to_sleep(ctx.store, ctx.app, agent, now, decision.reason, SOURCE)
        else:
            recycle(ctx.store, ctx.app, agent, now, decision.reason)
            done["recycled"] += 1
    if done["woken"] and ctx.app is not None:
        ctx.app.send_task(PARKED_TASK)
    return done
