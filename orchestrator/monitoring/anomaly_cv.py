"""Leave-one-group-out evaluation of the anomaly detector, pure apart from the grid runner.

A score measured on the very series its parameters were chosen on says little about a series
the detector has never seen. Here every setting of a small grid (a sensitivity and a few
`DetectorParams` fields) is scored once per series; then, for each group (a NAB category, or
an operator's metric family), the setting with the best pooled score on the *other* groups is
chosen and the held-out group is scored with it. What is reported per group is what the
detector would do on a kind of series nobody tuned it on.

The pooled score of a choice is the normalised NAB score of the summed Scores; a group without
windows (NAB's artificialNoAnomaly) has no score of its own, only false flags, but its false
flags still count against the settings chosen on the groups around it. Ties go to the earlier
setting of the grid, so the grid's first entry (the defaults) wins when nothing beats it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.monitoring.anomaly import backtest
from orchestrator.monitoring.anomaly_eval import Score, Series, evaluate, total

# One setting: {"sensitivity": s, **DetectorParams fields}.
Setting = Mapping[str, Any]

# The grid of the honest evaluation: the defaults first, then the sensitivity and the fields
# the anomalies page's one-at-a-time table found to matter. 2 x 2 x 2 x 4 = 32 settings: about
# three seconds each over the 41 tuning series, so the whole run takes about a minute on two
# processes.
DEFAULT_GRID: tuple[dict[str, Any], ...] = tuple(
    {"sensitivity": s, "history": h, "smooth": m, "refractory": r}
    for s in (2.0, 1.5, 2.5, 3.0)
    for h in (2000, 1000)
    for m in (12, 24)
    for r in (72, 144)
)


def group_of(name: str) -> str:
    """A series' group: the first folder of its name ("realTraffic/x.csv" -> "realTraffic");
    a name without a folder is its own group."""
    head, sep, _ = name.partition("/")
    return head if sep else name


class GroupResult(BaseModel):
    """One held-out group: the setting chosen without it, its score there, and (for
    comparison) the pooled score of that setting on the groups it was chosen on."""

    model_config = ConfigDict(frozen=True)

    group: str
    setting: dict[str, Any]
    held_out: Score
    chosen_on: float | None


class CrossValidation(BaseModel):
    """Per group, the mean of the groups' scores (groups with windows), the pooled
    out-of-group total, and the in-sample figure of the grid's first setting."""

    model_config = ConfigDict(frozen=True)

    groups: list[GroupResult]
    mean: float | None
    pooled: Score
    in_sample: Score
    in_sample_setting: dict[str, Any]
    settings: int = Field(ge=1)


def pooled_score(scores: Sequence[Score]) -> float | None:
    return total(scores).score


def best_setting(per_setting: Sequence[Sequence[Score]], keep: Sequence[bool]) -> int:
    """Index of the setting whose pooled score over the kept series is highest; the earlier
    one on a tie; 0 when none has a score (no kept window)."""
    best, best_score = 0, None
    for i, scores in enumerate(per_setting):
        value = pooled_score([s for s, k in zip(scores, keep, strict=True) if k])
        if value is not None and (best_score is None or value > best_score):
            best, best_score = i, value
    return best


def leave_one_group_out(
    settings: Sequence[Setting],
    per_setting: Sequence[Sequence[Score]],
    groups: Sequence[str],
) -> CrossValidation:
    """The cross-validation from precomputed scores: `per_setting[i][j]` is series j's Score
    under settings[i]; `groups[j]` is series j's group. Needs at least two groups."""
    if len(per_setting) != len(settings) or not settings:
        raise ValueError("one list of scores per setting, and at least one setting")
    names = list(dict.fromkeys(groups))
    if len(names) < 2:
        raise ValueError(f"cross-validation needs at least two groups (got {names})")
    results = []
    for name in names:
        keep = [g != name for g in groups]
        chosen = best_setting(per_setting, keep)
        scores = per_setting[chosen]
        held = total([s for s, k in zip(scores, keep, strict=True) if not k])
        results.append(
            GroupResult(
                group=name,
                setting=dict(settings[chosen]),
                held_out=held.model_copy(update={"name": name}),
                chosen_on=pooled_score([s for s, k in zip(scores, keep, strict=True) if k]),
            )
        )
    defined = [r.held_out.score for r in results if r.held_out.score is not None]
    mean = round(sum(defined) / len(defined), 2) if defined else None
    return CrossValidation(
        groups=results,
        mean=mean,
        pooled=total([r.held_out for r in results]),
        in_sample=total(per_setting[0]),
        in_sample_setting=dict(settings[0]),
        settings=len(settings),
    )


def split_setting(setting: Setting) -> tuple[float, dict[str, Any]]:
    params = dict(setting)
    return float(params.pop("sensitivity")), params


def score_setting(series: Sequence[Series], setting: Setting) -> list[Score]:
    """Every series scored under one setting (the live loop's backtest)."""
    sensitivity, params = split_setting(setting)

    def detector(points: Sequence[tuple[str, float]], s: float) -> list[str]:
        return backtest(points, s, **params)

    return evaluate(series, sensitivity, detector=detector)


# The series, set in the parent before forking so the workers inherit them unpickled.
_SERIES: list[Series] = []


def _job(setting: dict[str, Any]) -> list[Score]:
    return score_setting(_SERIES, setting)


def score_grid(
    series: Sequence[Series],
    settings: Sequence[Setting],
    processes: int = 2,
    on_setting: Callable[[int], None] | None = None,
) -> list[list[Score]]:
    """Scores of every series under every setting; `processes` > 1 forks that many workers
    (at most two: the machine is shared)."""
    processes = max(1, min(processes, 2))
    jobs = [dict(s) for s in settings]
    if processes == 1 or len(jobs) == 1:
        out = []
        for job in jobs:
            out.append(score_setting(series, job))
            if on_setting is not None:
                on_setting(len(out))
        return out
    _SERIES[:] = list(series)
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            out = []
            for scores in pool.imap(_job, jobs, chunksize=1):
                out.append(scores)
                if on_setting is not None:
                    on_setting(len(out))
            return out
    finally:
        _SERIES.clear()


def cross_validate(
    series: Sequence[Series],
    settings: Sequence[Setting] = DEFAULT_GRID,
    processes: int = 2,
    group: Callable[[str], str] = group_of,
    on_setting: Callable[[int], None] | None = None,
) -> CrossValidation:
    """Score the grid over the series and hold each group out in turn."""
    per_setting = score_grid(series, settings, processes, on_setting)
    return leave_one_group_out(settings, per_setting, [group(name) for name, _, _ in series])


# --- per-family sensitivity from an operator's own labels ----------------------------------

# The sensitivities `orchestrator anomaly tune` tries per metric family (the default is put
# first, so that it wins every tie).
TUNE_SENSITIVITIES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


class FamilyTuning(BaseModel):
    """The sensitivity of one metric family, chosen on the operator's labelled series.

    best: the sensitivity with the best pooled score on all the family's series; in_sample
    its score there. held_out: the same choice made with each series left out in turn and
    that series scored (leave-one-series-out), pooled: what the choice is worth on a series
    it was not made on. default: the default sensitivity's score on all the series (it
    involves no choice, so that is its held-out figure too). The best sensitivity is adopted
    only when its held-out score beats the default's: an in-sample gain alone changes nothing.
    """

    model_config = ConfigDict(frozen=True)

    family: str
    series: int
    windows: int
    best: float
    in_sample: Score
    held_out: Score | None
    default_sensitivity: float
    default: Score
    adopted: bool

    @property
    def sensitivity(self) -> float:
        return self.best if self.adopted else self.default_sensitivity


def tune_grid(default: float, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    values = [default, *(s for s in TUNE_SENSITIVITIES if s != default)]
    return [{"sensitivity": s, **params} for s in values]


def tune_family(
    family: str,
    settings: Sequence[Setting],
    per_setting: Sequence[Sequence[Score]],
    names: Sequence[str],
) -> FamilyTuning:
    """Choose one family's sensitivity from its scores under `settings` (the first of which
    is the default); `names` are its series, each held out in turn."""
    everything = [True] * len(names)
    chosen = best_setting(per_setting, everything)
    held_out = None
    if len(names) >= 2:
        held_out = leave_one_group_out(settings, per_setting, names).pooled
    default = total(per_setting[0])
    better = (
        held_out is not None
        and held_out.score is not None
        and default.score is not None
        and held_out.score > default.score
    )
    return FamilyTuning(
        family=family,
        series=len(names),
        windows=default.windows,
        best=float(settings[chosen]["sensitivity"]),
        in_sample=total(per_setting[chosen]).model_copy(update={"name": family}),
        held_out=None if held_out is None else held_out.model_copy(update={"name": family}),
        default_sensitivity=float(settings[0]["sensitivity"]),
        default=default.model_copy(update={"name": family}),
        adopted=better and chosen != 0,
    )


def tune(
    series: Sequence[Series],
    default: float,
    params_of: Callable[[str], Mapping[str, Any]],
    processes: int = 2,
) -> list[FamilyTuning]:
    """Per family (the first folder of a series' name), the sensitivity its labels support;
    `params_of(family)` gives the DetectorParams the live loop runs that family with."""
    families: dict[str, list[Series]] = {}
    for item in series:
        families.setdefault(group_of(item[0]), []).append(item)
    tuned = []
    for family, members in families.items():
        settings = tune_grid(default, params_of(family))
        per_setting = score_grid(members, settings, processes)
        tuned.append(tune_family(family, settings, per_setting, [m[0] for m in members]))
    return tuned
