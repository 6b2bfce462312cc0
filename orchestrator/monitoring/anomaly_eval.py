"""Scoring the anomaly detector on labelled series, pure: the simplified NAB score.

For each series, flags in its first 15 % of points (probation) are ignored; a labelled window
with at least one flag inside it (edges included) scores +1, one with none -1, and each flag
outside every window -0.11. Several flags in one window count once and cost nothing. The
total is normalised as NAB does: 100 * (raw + windows) / (2 * windows), so 0 is the detector
that flags nothing and 100 the one that hits every window without a false flag.

`evaluate` runs the backtest over labelled series and scores each; the readers at the end
(labels file, a folder of CSVs) are the one piece of I/O, shared by `orchestrator anomaly
evaluate` and bench/bench_anomaly.py so both measure the same thing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, computed_field

from orchestrator.monitoring.anomaly import backtest, read_series_csv, ts_key

Points = Sequence[tuple[str, float]]
Windows = Sequence[tuple[str, str]]
# A labelled series: its name (the labels file's key), its points, its windows.
Series = tuple[str, Points, Windows]
# What is evaluated: points and a sensitivity -> the timestamps it pages at (backtest's shape).
Detector = Callable[[Points, float], list[str]]

PROBATION = 0.15
FALSE_FLAG_COST = 0.11

# NAB's own result files at its standard-profile thresholds, scored by this rule on the
# 41-series tuning set (../shared/data/nab-tuning/README.md): (windows hit, false flags, score).
PUBLISHED: dict[str, tuple[int, int, float]] = {
    "Numenta HTM": (55, 59, 80.9),
    "KNN-CAD": (47, 117, 63.4),
    "Twitter ADVec (S-H-ESD)": (41, 128, 53.1),
    "Skyline": (38, 113, 49.7),
    "windowed Gaussian": (39, 177, 45.7),
    "random": (24, 264, 14.8),
    "null (flags nothing)": (0, 0, 0.0),
}


def normalised(raw: float, windows: int) -> float | None:
    """NAB's normalisation; None when there is no window to hit (the score is undefined)."""
    if windows == 0:
        return None
    return 100.0 * (raw + windows) / (2 * windows)


class Score(BaseModel):
    """Windows hit and missed and false flags of one series, or summed over many."""

    model_config = ConfigDict(frozen=True)

    name: str = "total"
    points: int = Field(default=0, ge=0)
    windows: int = Field(default=0, ge=0)
    hit: int = Field(default=0, ge=0)
    false_flags: int = Field(default=0, ge=0)
    flags: int = Field(default=0, ge=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def missed(self) -> int:
        return self.windows - self.hit

    @computed_field  # type: ignore[prop-decorator]
    @property
    def raw(self) -> float:
        return round(self.hit - self.missed - FALSE_FLAG_COST * self.false_flags, 6)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def score(self) -> float | None:
        value = normalised(self.raw, self.windows)
        return None if value is None else round(value, 2)


def score_series(
    name: str,
    timestamps: Sequence[str | float],
    flags: Sequence[str | float],
    windows: Sequence[tuple[str | float, str | float]],
) -> Score:
    """Score one series: `timestamps` are all its points in order, `flags` the ones the
    detector paged at, `windows` the labelled [start, end] pairs."""
    n = len(timestamps)
    probation_end = math.floor(PROBATION * n)
    start_key = ts_key(timestamps[probation_end]) if probation_end < n else math.inf
    spans = [(ts_key(a), ts_key(b)) for a, b in windows]
    for (a, b), raw in zip(spans, windows, strict=True):
        if b < a:
            raise ValueError(f"{name}: window {list(raw)} ends before it starts")
    hit = [False] * len(spans)
    false_flags = counted = 0
    for flag in flags:
        key = ts_key(flag)
        if key < start_key:
            continue
        counted += 1
        inside = [i for i, (a, b) in enumerate(spans) if a <= key <= b]
        for i in inside:
            hit[i] = True
        if not inside:
            false_flags += 1
    return Score(
        name=name,
        points=n,
        windows=len(spans),
        hit=sum(hit),
        false_flags=false_flags,
        flags=counted,
    )


def total(scores: Sequence[Score]) -> Score:
    return Score(
        name="total",
        points=sum(s.points for s in scores),
        windows=sum(s.windows for s in scores),
        hit=sum(s.hit for s in scores),
        false_flags=sum(s.false_flags for s in scores),
        flags=sum(s.flags for s in scores),
    )


def parse_labels(data: object) -> dict[str, list[tuple[str, str]]]:
    """`windows.json`: {"path/of/series.csv": [[start, end], ...], ...}; a clear error when
    it is anything else."""
    if not isinstance(data, Mapping):
        raise ValueError("labels must be a JSON object mapping series files to windows")
    labels: dict[str, list[tuple[str, str]]] = {}
    for name, windows in data.items():
        if not isinstance(windows, list):
            raise ValueError(f"labels[{name!r}]: expected a list of [start, end] pairs")
        pairs = []
        for i, pair in enumerate(windows):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"labels[{name!r}][{i}]: expected [start, end], got {pair!r}")
            start, end = str(pair[0]), str(pair[1])
            try:
                ordered = ts_key(start) <= ts_key(end)
            except ValueError as exc:
                raise ValueError(f"labels[{name!r}][{i}]: {exc}") from None
            if not ordered:
                raise ValueError(f"labels[{name!r}][{i}]: window {pair!r} ends before it starts")
            pairs.append((start, end))
        labels[str(name)] = pairs
    return labels


def check_timestamps(points: Points) -> None:
    """Every timestamp readable by ts_key and none before the one above it: probation is the
    first 15 % of points *in time*. Raises ValueError naming the point (1-based) and its text."""
    previous = -math.inf
    for i, (ts, _) in enumerate(points, start=1):
        try:
            key = ts_key(ts)
        except ValueError as exc:
            raise ValueError(f"point {i}: {exc}") from None
        if key < previous:
            raise ValueError(f"point {i}: timestamp {ts!r} is earlier than the point before it")
        previous = key


def evaluate(
    series: Iterable[Series],
    sensitivity: float,
    *,
    detector: Detector = backtest,
    on_series: Callable[[Score], None] | None = None,
) -> list[Score]:
    """Run the detector (the live loop's backtest unless told otherwise) over each labelled
    series and score where it pages; `on_series` sees each Score as it is done (a progress
    bar). A bad series raises ValueError whose message starts with its name."""
    scores = []
    for name, points, windows in series:
        try:
            check_timestamps(points)
            fired = detector(points, sensitivity)
            score = score_series(name, [ts for ts, _ in points], fired, windows)
        except ValueError as exc:
            message = str(exc).removeprefix(f"{name}: ")
            raise ValueError(f"{name}: {message}") from None
        scores.append(score)
        if on_series is not None:
            on_series(score)
    return scores


# --- reading a labelled folder: the one piece of I/O here ----------------------------------


def read_labels(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A windows.json file, parsed; ValueError naming the file (and the line, for bad JSON)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return parse_labels(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def missing_series(root: Path, labels: Mapping[str, object]) -> list[str]:
    """Labelled series with no file under `root`."""
    return [name for name in labels if not (root / name).is_file()]


def unlabelled_series(root: Path, labels: Mapping[str, object]) -> list[str]:
    """CSV files under `root` (any depth) that the labels do not name, relative to `root`."""
    named = {Path(name).as_posix() for name in labels}
    found = (p.relative_to(root).as_posix() for p in root.rglob("*.csv") if p.is_file())
    return sorted(name for name in found if name not in named)


def read_labelled(root: Path, labels: Mapping[str, Windows]) -> Iterator[Series]:
    """Each labelled series read from `root`, lazily, in the labels' order; ValueError naming
    the file and line of a bad CSV."""
    for name, windows in labels.items():
        path = root / name
        try:
            points = read_series_csv(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        yield name, points, windows
