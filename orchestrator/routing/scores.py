"""Performance scores per agent and capability: what `orchestrator.optimize` gives routing (pure).

Every completion updates, per agent and task type, a count and exponentially weighted success
rate and run time (store/lua/record_outcome.lua, in the settle step). Each optimize period
turns them into a score in [SCORE_FLOOR, 1]:

    score = success_rate x min(1, (reference + 50 ms) / (run time + 50 ms))

where the reference is the lower median run time of the agents with data for that capability
(the faster one of two), so a slow agent scores below a fast one and equals pay nothing. A
new agent, or a capability it has no data for, scores 1.0. An agent with no new completion
since the last period moves a quarter of the way back toward 1.0 per period, so one slow
spell cannot starve it for ever: with less work it gets less data, and without data it is
given another chance. The floor keeps every eligible agent some share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.routing.weights import performance_score

SCORE_FLOOR = 0.1
RECOVERY_PER_PERIOD = 0.25

Key = tuple[str, str]  # (agent_id, capability)


@dataclass(frozen=True)
class CapabilityStats:
    """One agent's recent record for one capability (from the stats hash)."""

    count: int  # completions recorded, ever
    success_rate: float  # EWMA
    latency_ms: float  # EWMA


@dataclass(frozen=True)
class Score:
    value: float
    seen: int  # the completion count this value was computed from


def parse_stats(fields: Mapping[str, str]) -> dict[Key, CapabilityStats]:
    """The per-capability records in the stats hash (`<agent>|<type>|n`, `|sr`, `|lat`);
    the per-agent fields (`<agent>|ok`, ...) have one bar and are skipped."""
    parts: dict[Key, dict[str, str]] = {}
    for name, value in fields.items():
        bits = name.split("|")
        if len(bits) == 3 and bits[2] in ("n", "sr", "lat"):
            parts.setdefault((bits[0], bits[1]), {})[bits[2]] = value
    out = {}
    for key, p in parts.items():
        if {"n", "sr", "lat"} <= p.keys():
            out[key] = CapabilityStats(int(p["n"]), float(p["sr"]), float(p["lat"]))
    return out


def references(stats: Mapping[Key, CapabilityStats]) -> dict[str, float]:
    """Per capability, the lower median run time among the agents with data for it."""
    by_cap: dict[str, list[float]] = {}
    for (_agent, cap), s in stats.items():
        by_cap.setdefault(cap, []).append(s.latency_ms)
    return {cap: sorted(values)[(len(values) - 1) // 2] for cap, values in by_cap.items()}


def next_score(
    previous: Score | None, stats: CapabilityStats | None, reference_ms: float | None
) -> Score:
    """One period's score: computed from fresh data, else decayed toward 1.0."""
    seen = previous.seen if previous is not None else 0
    if stats is None or stats.count <= seen:
        value = 1.0 if previous is None else previous.value
        return Score(min(1.0, value + (1.0 - value) * RECOVERY_PER_PERIOD), seen)
    raw = performance_score(0, 0, stats.latency_ms, reference_ms, stats.success_rate)
    return Score(max(SCORE_FLOOR, min(1.0, raw)), stats.count)


def optimize_scores(
    pairs: list[Key], stats: Mapping[Key, CapabilityStats], previous: Mapping[Key, Score]
) -> dict[Key, Score]:
    """The next score of every (agent, capability) pair of the registered fleet."""
    refs = references({k: s for k, s in stats.items() if k in set(pairs)})
    return {key: next_score(previous.get(key), stats.get(key), refs.get(key[1])) for key in pairs}
