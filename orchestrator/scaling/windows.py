"""Scheduled sleep windows (`ORCH_SLEEP_WINDOWS`), parsed and tested against a clock (pure).

A window is `HH:MM-HH:MM`, optionally followed by an IANA time zone (`02:00-03:00
Europe/Berlin`; UTC when none is given); several are separated by commas. A window whose end
is earlier than its start runs over midnight (`23:30-00:30`). Inside a window idle agents
beyond the minimum awake sleep at once and sleeping agents are recycled; when it ends the
agents it put to sleep wake (orchestrator.scaling.sleep).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})(?:\s+(\S+))?\Z")


@dataclass(frozen=True)
class SleepWindow:
    start_min: int  # minutes after local midnight
    end_min: int
    tz: str = "UTC"

    def __str__(self) -> str:
        def hm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return f"{hm(self.start_min)}-{hm(self.end_min)} {self.tz}"

    def occurrence(self, now: float) -> float | None:
        """The start (unix time) of the occurrence of this window that `now` is inside, or
        None when `now` is outside it."""
        local = datetime.fromtimestamp(now, ZoneInfo(self.tz))
        minute = local.hour * 60 + local.minute
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.start_min <= self.end_min:
            inside = self.start_min <= minute < self.end_min
            day = midnight
        elif minute >= self.start_min:  # over midnight, evening part
            inside, day = True, midnight
        else:  # over midnight, morning part: it started yesterday
            inside, day = minute < self.end_min, midnight - timedelta(days=1)
        if not inside:
            return None
        start = day.replace(tzinfo=None) + timedelta(minutes=self.start_min)
        return start.replace(tzinfo=ZoneInfo(self.tz)).timestamp()


def parse_windows(raw: str) -> list[SleepWindow]:
    """`02:00-03:00 Europe/Berlin,13:00-13:30` -> windows; ValueError naming the bad part."""
    windows = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        match = _WINDOW_RE.match(part)
        if match is None:
            raise ValueError(f"{part!r}: expected HH:MM-HH:MM with an optional time zone")
        h1, m1, h2, m2, tz = match.groups()
        if int(h1) > 23 or int(h2) > 23 or int(m1) > 59 or int(m2) > 59:
            raise ValueError(f"{part!r}: hours are 00-23 and minutes 00-59")
        start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if start == end:
            raise ValueError(f"{part!r}: a window must not be empty")
        try:
            ZoneInfo(tz or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{part!r}: unknown time zone {tz!r}") from None
        windows.append(SleepWindow(start, end, tz or "UTC"))
    return windows


def active_window(windows: list[SleepWindow], now: float) -> tuple[SleepWindow, float] | None:
    """The first window `now` is inside, with the start of that occurrence."""
    for window in windows:
        start = window.occurrence(now)
        if start is not None:
            return window, start
    return None
