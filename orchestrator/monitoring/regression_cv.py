"""Leave-one-family-out evaluation of the regression rule, pure.

The regression rule's constants (regression.py) were chosen on the synthetic cases of
bench/regression_sim.py, and its bench scored it on the same cases. Here each family of
cases (a step, a slow drift, a faster run, a noisy series, a daily cycle) is held out in
turn: of a small grid of `RegressionParams`, the one with the best pooled score on the other
families is chosen, and the held-out family is scored with it. The choice and the pooling are
anomaly_cv's (`leave_one_group_out`), so both detectors are cross-validated alike.

A simulated series scores as a labelled one does in anomaly_eval: a series that got slower
holds one window, from the change to LATE_MINUTES after the change has played out (the end of
a drift's ramp); an onset inside it is a hit (+1), none a miss (-1), and every onset outside
it (before the change, or too late, or anywhere in a series that did not get slower) is a
false flag (-0.11). A family without a slower series has no score of its own, only false
flags, which count against the settings chosen on the families around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.monitoring.anomaly_cv import CrossValidation, leave_one_group_out
from orchestrator.monitoring.anomaly_eval import Score
from orchestrator.monitoring.regression import (
    ALPHA,
    CLEAR_SHIFT,
    MIN_SHIFT,
    RECENT_MINUTES,
    RegressionParams,
)

# An onset more than this long after the change has played out is too late to count.
LATE_MINUTES = 60

# The grid: the defaults first (they win every tie), then the entering shift, the p-value
# and the shift that keeps a regression flagged: 3 x 3 x 2 = 18 settings.
REGRESSION_GRID: tuple[dict[str, Any], ...] = tuple(
    {"min_shift": s, "alpha": a, "clear_shift": c, "recent_minutes": RECENT_MINUTES}
    for s in (MIN_SHIFT, 0.15, 0.3)
    for a in (ALPHA, 1e-3, 1e-5)
    for c in (CLEAR_SHIFT, 0.1)
)


def params_of(setting: Mapping[str, Any]) -> RegressionParams:
    return RegressionParams(**setting)


def score_run(
    name: str,
    onsets: Sequence[int],
    minutes: int,
    change_at: int | None,
    ramp_minutes: int = 0,
) -> Score:
    """One simulated series as a labelled one: `onsets` are the minutes regression.detected
    fired at; `change_at` the minute it got slower (None when it did not)."""
    if change_at is None:
        return Score(name=name, points=minutes, flags=len(onsets), false_flags=len(onsets))
    end = change_at + ramp_minutes + LATE_MINUTES
    inside = [t for t in onsets if change_at < t <= end]
    return Score(
        name=name,
        points=minutes,
        windows=1,
        hit=1 if inside else 0,
        false_flags=len(onsets) - len(inside),
        flags=len(onsets),
    )


def leave_one_family_out(
    settings: Sequence[Mapping[str, Any]],
    per_setting: Sequence[Sequence[Score]],
    families: Sequence[str],
) -> CrossValidation:
    """`per_setting[i][j]` is simulated series j's Score under settings[i], `families[j]` its
    family: each family scored with the setting chosen on the others."""
    return leave_one_group_out(settings, per_setting, families)
