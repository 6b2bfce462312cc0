"""The autoscaling decision (pure): per capability, the agents needed and the count to ask for.

The count is held with hysteresis and a cool-down so it does not flap. The need is the
largest of three rules over the figures of one moment (ScaleFigures):

* backlog: ceil(backlog / target_backlog), the rule of `signal.desired_agents`;
* utilisation: while tasks wait beyond those running (backlog > in flight), enough agents that
  the busy share of their slots falls to TARGET_UTILISATION (the HPA formula,
  ceil(current x utilisation / target)); otherwise the agents the running tasks fill,
  ceil(current x utilisation), so a count never drops under work in progress;
* latency: one agent more than now while tasks wait and the capability's delegation p95
  (submit to start, of tasks of the capability's type) is above the tightest latency objective
  of the SLA targets that apply to it: the queue, not the handler, is then what users wait on;

bounded by [lo, hi] and at least one agent while any task waits. The decision then holds the
count (`decide`):

* up at once: a need above the count held is followed immediately (an agent too few costs the
  SLA, one too many only money);
* down only after the need has stayed below the count for a whole cool-down, checked at every
  evaluation, and then to the highest need seen during that time, never lower: the dead band
  is the gap between the count held and that peak. The window restarts at every change, so two
  changes are at least a cool-down apart unless the second is an increase;
* the first decision for a capability holds the agents it has (within the bounds) as if it
  had decided them, so a fleet is never shrunk on first sight; a changed bound applies at once.

Nothing here reads Redis, a clock or the environment: `now` and the figures are passed in.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from orchestrator.models import AgentStatus, AutoScalingAction, RegisteredAgent, SLATarget
from orchestrator.monitoring.stats import WindowStats, quantile
from orchestrator.scaling.signal import action_for, capability_backlogs

#: The busy share of an agent's slots the utilisation rule scales toward.
TARGET_UTILISATION = 0.8
#: The SLIs whose objective (a ceiling in ms) the delegation p95 is held against.
LATENCY_SLIS = ("latency_p95_ms", "latency_p99_ms")
#: The key of the execution record of a command without `{capability}` (one pool for all).
POOL = "*"


@dataclass(frozen=True)
class ScalePolicy:
    """The settings the decision obeys (ORCH_SCALE_*), passed in as plain values."""

    target_backlog: int
    lo: int
    hi: int
    cooldown_s: float
    target_utilisation: float = TARGET_UTILISATION


@dataclass(frozen=True)
class ScaleFigures:
    """What one capability looks like now. `current` counts the live agents offering it,
    asleep ones too (they are the replicas a scale command adds or removes, and the sleep/wake
    loop wakes them before more are needed); the utilisation and latency rules count the
    awake ones."""

    capability: str
    current: int  # live agents offering it: active or sleeping
    backlog: int  # tasks waiting for it: every priority, unacknowledged, parked
    in_flight: int = 0  # tasks the active agents offering it are running
    slots: int = 0  # their summed concurrency
    delegation_p95_ms: float | None = None  # submit-to-start p95 of its tasks (window)
    latency_objective_ms: float | None = None  # tightest latency SLA objective that applies
    awake: int | None = None  # the active ones among them (None: all of them)

    @property
    def active(self) -> int:
        return self.current if self.awake is None else self.awake

    @property
    def utilisation(self) -> float | None:
        """Busy share of the active agents' slots (None without an active agent)."""
        if self.slots <= 0:
            return None
        return min(1.0, max(0.0, self.in_flight / self.slots))

    @property
    def late(self) -> bool:
        """Tasks wait and start later than the latency objective allows their whole run."""
        return (
            self.backlog > 0
            and self.delegation_p95_ms is not None
            and self.latency_objective_ms is not None
            and self.delegation_p95_ms > self.latency_objective_ms
        )


class ScaleDecision(BaseModel):
    """One capability's decision: what the exporter serves and the loop stores (the next
    evaluation reads `desired`, `changed_at`, `low_since` and `low_max` back)."""

    model_config = ConfigDict(frozen=True)

    capability: str
    action: AutoScalingAction
    current: int
    desired: int
    need: int
    backlog: int
    reason: str
    utilisation: float | None = None
    delegation_p95_ms: float | None = None
    latency_objective_ms: float | None = None
    decided_at: float
    changed_at: float  # when `desired` last changed
    low_since: float | None = None  # since when the need has stayed below `desired`
    low_max: int = 0  # the highest need seen since `low_since`


class ScaleExecution(BaseModel):
    """One run of ORCH_SCALE_COMMAND (the `scale.executed` event's data, and what is stored
    per capability, or per POOL, to know whether the count changed since)."""

    model_config = ConfigDict(frozen=True)

    capability: str
    desired: int
    argv: list[str]
    exit_code: int
    output: str = ""
    ts: float
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


# --- the figures ---------------------------------------------------------------------------


def latency_objective(capability: str, targets: Iterable[SLATarget]) -> float | None:
    """The tightest latency ceiling among the targets for this capability's task type or for
    every task (a target's task_type names a type; a type's default capability is itself)."""
    objectives = [
        t.objective for t in targets if t.sli in LATENCY_SLIS and t.task_type in (None, capability)
    ]
    return min(objectives, default=None)


def scale_figures(
    agents: Iterable[RegisteredAgent],
    depths: Mapping[str, int],
    parked: Mapping[str, int],
    window: WindowStats,
    targets: Sequence[SLATarget],
) -> list[ScaleFigures]:
    """One row per capability any registered agent offers or any parked task needs, sorted
    by name, as `signal.scaling_signal` lists them. `agents` carry their effective status;
    `window` is the metrics window's telemetry (the delegation p95 of the type named like the
    capability)."""
    agents = list(agents)
    backlogs = capability_backlogs(agents, depths, parked)
    current: dict[str, list[int]] = {cap: [0, 0, 0, 0] for cap in backlogs}
    for agent in agents:
        if agent.status not in (AgentStatus.ACTIVE, AgentStatus.SLEEPING):
            continue
        for cap in agent.capabilities:
            row = current.setdefault(cap, [0, 0, 0, 0])
            row[0] += 1
            if agent.status is AgentStatus.ACTIVE:
                row[1] += max(0, agent.in_flight)
                row[2] += max(1, agent.concurrency)
                row[3] += 1
    rows = []
    for cap in sorted(current):
        n, in_flight, slots, awake = current[cap]
        runs = window.types.get(cap)
        rows.append(
            ScaleFigures(
                capability=cap,
                current=n,
                backlog=backlogs.get(cap, 0),
                in_flight=in_flight,
                slots=slots,
                delegation_p95_ms=quantile(runs.delegation, 0.95) if runs else None,
                latency_objective_ms=latency_objective(cap, targets),
                awake=awake,
            )
        )
    return rows


# --- the need and the decision ------------------------------------------------------------


def agents_needed(fig: ScaleFigures, policy: ScalePolicy) -> tuple[int, str]:
    """The count the figures ask for now, within the bounds, and why (see the module doc)."""
    backlog = max(0, fig.backlog)
    candidates = [(math.ceil(backlog / policy.target_backlog), f"backlog {backlog}")]
    # each candidate: (agents, what asks for them)
    util = fig.utilisation
    if util is not None and fig.active > 0:
        if backlog > fig.in_flight:
            n = math.ceil(round(fig.active * util / policy.target_utilisation, 9))
        else:
            n = math.ceil(round(fig.active * util, 9))
        candidates.append((n, f"utilisation {util:.0%}"))
    if fig.late:
        candidates.append(
            (
                fig.active + 1,
                f"delegation p95 {fig.delegation_p95_ms:.0f} ms over the "
                f"{fig.latency_objective_ms:.0f} ms objective",
            )
        )
    n, what = max(candidates, key=lambda c: c[0])  # the first of equals: backlog explains best
    why = f"{what} needs {n}"
    floor = max(policy.lo, 1) if backlog > 0 else policy.lo
    if n < floor:
        return floor, f"floor {floor} ({why})"
    if n > policy.hi:
        return policy.hi, f"ceiling {policy.hi} ({why})"
    return n, why


def _clamp(n: int, policy: ScalePolicy) -> int:
    return min(max(n, policy.lo), policy.hi)


def decide(
    fig: ScaleFigures, previous: ScaleDecision | None, policy: ScalePolicy, now: float
) -> ScaleDecision:
    """The count to ask for now, given the last decision (None: the first)."""
    need, why = agents_needed(fig, policy)
    if previous is None:  # the agents there are, as if decided now
        previous = ScaleDecision(
            capability=fig.capability,
            action=AutoScalingAction.MAINTAIN,
            current=fig.current,
            desired=_clamp(fig.current, policy),
            need=need,
            backlog=fig.backlog,
            reason="",
            decided_at=now,
            changed_at=now,
        )
    held = _clamp(previous.desired, policy)
    changed_at = now if held != previous.desired else previous.changed_at
    low_since: float | None = None
    low_max = 0
    if need > held:
        desired, changed_at = need, now
        reason = f"up from {held}: {why}"
    elif need == held:
        desired, reason = held, why
    else:
        low_since = previous.low_since if previous.low_since is not None else now
        low_max = max(need, previous.low_max) if previous.low_since is not None else need
        waited = now - low_since
        if waited >= policy.cooldown_s:
            desired, changed_at = low_max, now
            reason = (
                f"down from {held} to the highest need of the last {waited:.0f} s, "
                f"{low_max}: now {why}"
            )
            low_since, low_max = (now, need) if need < desired else (None, 0)
        else:
            desired = held
            reason = (
                f"holding {held} for the cool-down ({waited:.0f} of "
                f"{policy.cooldown_s:.0f} s): {why}"
            )
    return ScaleDecision(
        capability=fig.capability,
        action=action_for(fig.current, desired),
        current=fig.current,
        desired=desired,
        need=need,
        backlog=fig.backlog,
        reason=reason,
        utilisation=fig.utilisation,
        delegation_p95_ms=fig.delegation_p95_ms,
        latency_objective_ms=fig.latency_objective_ms,
        decided_at=now,
        changed_at=changed_at,
        low_since=low_since,
        low_max=low_max,
    )


def is_fresh(decision: ScaleDecision, now: float, max_age_s: float) -> bool:
    """A stored decision still speaks for the loop (it ran within `max_age_s`)."""
    return 0.0 <= now - decision.decided_at <= max_age_s


# --- ORCH_SCALE_COMMAND -------------------------------------------------------------------


def per_capability(template: str) -> bool:
    """A command naming `{capability}` runs once per capability; without it, once for the
    pool, with the largest desired count of all."""
    return "{capability}" in template


def command_argv(template: str, n: int, capability: str) -> list[str]:
    """The command's argv (no shell): split like a POSIX shell would, then `{n}` and
    `{capability}` replaced in each word. ValueError when it cannot be split or is empty."""
    words = shlex.split(template)
    if not words:
        raise ValueError("ORCH_SCALE_COMMAND is empty")
    return [w.replace("{n}", str(n)).replace("{capability}", capability) for w in words]


def command_targets(
    template: str, decisions: Sequence[ScaleDecision]
) -> list[tuple[str, str, int]]:
    """(record key, capability, count) for each run the decisions ask of the command: one per
    capability, or one for POOL with the largest count (its capability: the first, by name,
    that asks for it)."""
    if per_capability(template):
        return [(d.capability, d.capability, d.desired) for d in decisions]
    if not decisions:
        return []
    top = min(decisions, key=lambda d: (-d.desired, d.capability))
    return [(POOL, top.capability, top.desired)]


def execution_due(
    last: ScaleExecution | None, desired: int, now: float, retry_after_s: float
) -> bool:
    """Run the command when its count changed since the last run; a failed run is tried
    again after `retry_after_s` (the cool-down), not at every evaluation."""
    if last is None or last.desired != desired:
        return True
    return not last.ok and now - last.ts >= retry_after_s


def output_tail(text: str, limit: int = 2000) -> str:
    """The end of a command's output, where the error usually is."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
