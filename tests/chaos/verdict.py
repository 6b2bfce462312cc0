"""The chaos verdict, pure: what was observed about each submitted id -> the report.

`judge(observations)` turns `Observation`s (raw facts per id, read from Redis by
tests/chaos/checker.py) into a `ChaosReport`: every accepted task ends succeeded, failed with
a reason, or dead-lettered; a completion is recorded once; nothing waits an hour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TERMINAL_STATES = frozenset({"succeeded", "failed", "dead_lettered"})


class Fate(StrEnum):
    """How one id ended, from the client's point of view."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    LOST = "lost"  # accepted (or durably in the broker) but not terminal by the deadline
    UNACCEPTED = "unaccepted"  # the submission never got in: no ledger, no message anywhere


@dataclass(frozen=True)
class Observation:
    """Everything recorded about one id, as read from Redis. No judgement here."""

    task_id: str
    state: str | None = None  # the ledger's state; None: no ledger entry at all
    agent: str | None = None
    attempts: int = 0
    error: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    starts: int = 0  # test:start:<id>, the handler's entries
    dones: int = 0  # test:done:<id>, the handler's completions
    start_times: tuple[float, ...] = ()  # test:started_at:<id>, when each run began
    finished_at: float | None = None  # the ledger's finished_at: when the end was recorded
    end_events: Mapping[str, int] = field(default_factory=dict)  # event type -> count
    result_status: str | None = None  # Celery result backend status; None: nothing stored
    result_error: str | None = None  # the stored exception, for a FAILURE
    in_dlq: bool = False
    broker: tuple[str, ...] = ()  # where messages for it still sit ("agent.b", "unacked:agent.b")
    submit_failed: bool = False  # the client's own submission raised (e.g. Redis was down)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def starts_after_end(self) -> int:
        """Runs begun after the end was recorded: a task already ended must never run again
        (a redelivered stale copy has to be recognised by the ledger, not executed)."""
        if self.finished_at is None:
            return 0
        return sum(1 for t in self.start_times if t > self.finished_at)

    def describe(self) -> str:
        """One line of evidence: what the ledger says and where the messages are."""
        states = " > ".join(str(h.get("state", "?")) + _at(h) for h in self.history[-8:])
        parts = [
            f"state={self.state or 'NO LEDGER'}",
            f"agent={self.agent}",
            f"attempts={self.attempts}",
            f"starts={self.starts}",
            f"dones={self.dones}",
            f"result={self.result_status or 'none'}"
            + (f"({self.result_error[:100]})" if self.result_error else ""),
        ]
        if self.end_events:
            ends = sorted(self.end_events.items())
            parts.append("events=" + ",".join(f"{k}x{v}" for k, v in ends))
        if self.starts_after_end:
            parts.append(f"starts_after_end={self.starts_after_end}")
        if self.in_dlq:
            parts.append("in orch:dlq")
        if self.broker:
            parts.append("broker=" + ",".join(self.broker))
        if self.error:
            parts.append(f"error={self.error[:120]!r}")
        if states:
            parts.append(f"history: {states}")
        return " ".join(parts)


def _at(entry: Mapping[str, Any]) -> str:
    agent = entry.get("agent")
    return f"@{agent}" if agent else ""


@dataclass(frozen=True)
class Verdict:
    """One id judged. `problems` are broken promises (they fail the suite); `notes` are
    allowed but worth seeing (a re-execution, a completion that did not stick)."""

    task_id: str
    fate: Fate
    duplicated: bool
    re_executed: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    observation: Observation
    re_completed: bool = False


def judge_one(
    obs: Observation, *, counted: bool = True, missing_ledger_is_lost: bool = True
) -> Verdict:
    """Judge one id.

    `counted`: its handler keeps the test:start/test:done counters, so a success with no
    completion, or two completions, can be seen. `missing_ledger_is_lost`: whether an id
    that left no trace at all (no ledger, no message in the broker, no event, never started)
    is lost (Redis stayed up: the client's submission was acknowledged, so it must be
    somewhere) or merely unaccepted (Redis crashed and took the AOF's last second with it).
    A submission that raised at the client and left no trace is always unaccepted.
    """
    problems: list[str] = []
    notes: list[str] = []
    traceless = obs.state is None and not obs.broker and not obs.end_events and not obs.starts
    if obs.terminal and obs.state is not None:
        fate = Fate(obs.state)
    elif traceless and (obs.submit_failed or not missing_ledger_is_lost):
        fate = Fate.UNACCEPTED
    else:
        fate = Fate.LOST
        if obs.state is not None:
            problems.append(f"not terminal: still {obs.state}")
        elif traceless:
            problems.append("no ledger entry and no message anywhere: the submission vanished")
        else:
            problems.append("no ledger entry, yet messages or runs exist for it")

    succeeded_events = obs.end_events.get("task.succeeded", 0)
    end_total = sum(obs.end_events.values())
    late = obs.starts_after_end if obs.terminal else 0
    duplicated = succeeded_events > 1 or end_total > 1 or late > 0
    if succeeded_events > 1:
        problems.append(f"task.succeeded emitted {succeeded_events} times")
    if late:
        problems.append(f"handler started {late} time(s) after the task was recorded {obs.state}")
    # Two completions of one handler are not a duplicate by themselves: an attempt SIGKILLed
    # after its handler returned and before the ledger recorded it is re-run (at-least-once),
    # and the re-run completes again. The promise is about the recorded completion (events
    # and ledger, above) and about never running after the end (`late`).
    re_completed = obs.dones > 1
    if re_completed:
        notes.append(
            f"handler completed {obs.dones} times (an attempt cut off between its handler "
            "returning and the ledger recording it)"
        )
    if end_total > 1 and succeeded_events <= 1:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(obs.end_events.items()))
        problems.append(f"more than one end event: {kinds}")
    re_executed = obs.starts > 1
    if re_executed:
        notes.append(f"handler started {obs.starts} times")

    if obs.terminal:
        expected_event = f"task.{obs.state}"
        if obs.end_events.get(expected_event, 0) == 0:
            problems.append(f"ledger says {obs.state} but no {expected_event} event")
        want = "SUCCESS" if obs.state == "succeeded" else "FAILURE"
        if obs.result_status is None:
            problems.append(
                f"ledger says {obs.state} but no Celery result: AsyncResult.get() would hang"
            )
        elif obs.result_status != want:
            problems.append(f"ledger says {obs.state} but the Celery result is {obs.result_status}")
        if obs.state in ("failed", "dead_lettered") and not (obs.error or "").strip():
            problems.append(f"{obs.state} without a reason (empty error)")
        if counted and obs.state == "succeeded" and obs.dones == 0:
            problems.append("ledger says succeeded but the handler never completed")
        if counted and obs.state != "succeeded" and obs.dones > 0:
            notes.append(f"handler completed {obs.dones} time(s) yet the task ended {obs.state}")
    if obs.state == "dead_lettered" and not obs.in_dlq:
        problems.append("dead-lettered but missing from orch:dlq")
    if obs.in_dlq and obs.state != "dead_lettered":
        problems.append(f"in orch:dlq but the ledger says {obs.state}")
    return Verdict(
        obs.task_id,
        fate,
        duplicated,
        re_executed,
        tuple(problems),
        tuple(notes),
        obs,
        re_completed,
    )


@dataclass
class ChaosReport:
    """The verdicts for one run, with the counts CI logs show."""

    verdicts: dict[str, Verdict]
    name: str = "chaos"
    waited_s: float = 0.0

    def ids(self, fate: Fate) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.fate is fate]

    @property
    def lost(self) -> list[str]:
        return self.ids(Fate.LOST)

    @property
    def unaccepted(self) -> list[str]:
        return self.ids(Fate.UNACCEPTED)

    @property
    def duplicated(self) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.duplicated]

    @property
    def re_executed(self) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.re_executed]

    @property
    def re_completed(self) -> list[str]:
        return [i for i, v in self.verdicts.items() if v.re_completed]

    @property
    def inconsistent(self) -> list[str]:
        """Ids with a broken promise other than being lost or duplicated (e.g. a terminal
        ledger whose Celery result was never stored)."""
        return [
            i
            for i, v in self.verdicts.items()
            if v.problems and v.fate is not Fate.LOST and not v.duplicated
        ]

    def failure_reasons(self) -> Counter[str]:
        return Counter(
            (v.observation.error or "(no reason)")[:80]
            for v in self.verdicts.values()
            if v.fate in (Fate.FAILED, Fate.DEAD_LETTERED)
        )

    def counts(self) -> dict[str, int]:
        starts = [v.observation.starts for v in self.verdicts.values()]
        return {
            "ids": len(self.verdicts),
            "succeeded": len(self.ids(Fate.SUCCEEDED)),
            "failed": len(self.ids(Fate.FAILED)),
            "dead_lettered": len(self.ids(Fate.DEAD_LETTERED)),
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "re_executed": len(self.re_executed),
            "re_completed": len(self.re_completed),
            "max_starts": max(starts, default=0),
            "inconsistent": len(self.inconsistent),
            "unaccepted": len(self.unaccepted),
            "submit_failed": sum(v.observation.submit_failed for v in self.verdicts.values()),
        }

    def summary(self) -> str:
        """The counts line, e.g. `chaos[agent-kill]: 120 ids | succeeded 120, failed 0, ...`."""
        c = self.counts()
        line = (
            f"{self.name}: {c['ids']} ids | succeeded {c['succeeded']}, failed {c['failed']}, "
            f"dead_lettered {c['dead_lettered']} | LOST {c['lost']}, "
            f"DUPLICATED {c['duplicated']}, re-executed {c['re_executed']} "
            f"(max starts {c['max_starts']}), re-completed {c['re_completed']}, "
            f"inconsistent {c['inconsistent']} | "
            f"unaccepted {c['unaccepted']} (client submit errors {c['submit_failed']}) | "
            f"settled in {self.waited_s:.1f}s"
        )
        reasons = self.failure_reasons()
        if reasons:
            line += " | reasons: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
        return line

    def details(self, ids: Iterable[str], limit: int = 10) -> str:
        ids = list(ids)
        lines = []
        for task_id in ids[:limit]:
            v = self.verdicts[task_id]
            lines.append(f"  {task_id}: {'; '.join(v.problems)}\n    {v.observation.describe()}")
        if len(ids) > limit:
            lines.append(f"  ... and {len(ids) - limit} more")
        return "\n".join(lines)

    def where_lost(self) -> Counter[str]:
        """Lost ids grouped by (ledger state, where their message sits): the pattern of a
        loss is usually one line here ("routed @b, in agent.b")."""
        groups: Counter[str] = Counter()
        for task_id in self.lost:
            o = self.verdicts[task_id].observation
            where = ",".join(sorted({b.split(":", 1)[0] for b in o.broker})) or "nowhere"
            groups[f"{o.state or 'no ledger'} @{o.agent} (broker: {where})"] += 1
        return groups

    def problems_text(self) -> str:
        sections = [self.summary()]
        if self.lost:
            sections.append(
                "LOST by (state @agent, broker):\n"
                + "\n".join(f"  {n:4d} {k}" for k, n in self.where_lost().most_common())
            )
            sections.append("LOST (first 10):\n" + self.details(self.lost))
        if self.duplicated:
            sections.append("DUPLICATED (first 10):\n" + self.details(self.duplicated))
        if self.inconsistent:
            sections.append("INCONSISTENT (first 10):\n" + self.details(self.inconsistent))
        return "\n".join(sections)

    def assert_nothing_lost(self) -> None:
        """Raise AssertionError naming every lost, duplicated and inconsistent id's story."""
        if self.lost or self.duplicated or self.inconsistent:
            raise AssertionError("chaos history check failed\n" + self.problems_text())


def judge(
    observations: Mapping[str, Observation],
    *,
    name: str = "chaos",
    counted: bool | Iterable[str] = True,
    waited_s: float = 0.0,
    missing_ledger_is_lost: bool = True,
) -> ChaosReport:
    """Judge every id. `counted`: True (all ids' handlers keep the counters), False, or the
    ids that do."""
    counted_ids = (
        set(observations) if counted is True else set() if counted is False else set(counted)
    )
    verdicts = {
        i: judge_one(o, counted=i in counted_ids, missing_ledger_is_lost=missing_ledger_is_lost)
        for i, o in observations.items()
    }
    return ChaosReport(verdicts, name, waited_s)
