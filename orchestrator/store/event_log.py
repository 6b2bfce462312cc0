"""The event log as its readers see it: the two event streams merged into one, by entry id.

Events are written to two streams (keys.events_key): orchestrator:events, and
orchestrator:events:tasks for the task lifecycle types. A reader of the whole log
(`orchestrator events`, tests) reads both and merges them by entry id: both streams' ids are
`<ms>-<seq>` from the one Redis server's clock, so they interleave by time. Within one
millisecond the two sequence numbers are counted apart, so one id can name an entry in each
stream (shown EVENTS' first), and an entry written later in the same millisecond can get a
lower id than one already read from the other stream.

So a reader that resumes "after id X" (`--since X`, a page, a follow) reads only settled
entries: those of milliseconds before the server's clock at the read (TIME, read first).
Every entry written afterwards has a later millisecond, and so a greater id than any entry
read, in either stream; and a page never ends between two entries of one id. Resuming after
the last id shown then misses nothing and repeats nothing. A plain snapshot (read_events,
tail_events) reads whatever is there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import redis

from orchestrator.models import OrchestrationEvent
from orchestrator.store.base import StoreBase, _parse_event
from orchestrator.store.keys import EVENT_STREAMS

#: One stream entry as redis-py returns it: (id, fields).
Entry = tuple[str, Mapping[str, str]]
#: Entries a follow reads per stream and call.
FOLLOW_COUNT = 100


def entry_order(entry_id: str) -> tuple[int, int]:
    """A full entry id (`<ms>-<seq>`) as a value that sorts as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def merge(pages: Mapping[str, Sequence[Entry]], count: int | None = None) -> list[Entry]:
    """The entries of each stream's page (each oldest first), merged by id (a tie: in
    EVENT_STREAMS' order), and cut where they are complete: when a stream's page is full
    (`count` entries, so more may follow), nothing after its last entry is taken."""
    rank = {stream: i for i, stream in enumerate(EVENT_STREAMS)}
    limits = [
        entry_order(page[-1][0])
        for page in pages.values()
        if count is not None and page and len(page) >= count
    ]
    limit = min(limits) if limits else None
    tagged = [
        (entry_order(entry_id), rank.get(stream, len(rank)), entry_id, fields)
        for stream, page in pages.items()
        for entry_id, fields in page
    ]
    tagged.sort(key=lambda t: (t[0], t[1]))
    return [(i, f) for order, _, i, f in tagged if limit is None or order <= limit]


def first(entries: Sequence[Entry], count: int) -> list[Entry]:
    """The first `count` entries, and any after them that share the last one's id: a reader
    resuming after that id has then seen both."""
    if count <= 0:
        return []
    if len(entries) <= count:
        return list(entries)
    cut = count
    while cut < len(entries) and entries[cut][0] == entries[count - 1][0]:
        cut += 1
    return list(entries[:cut])


def before_ms(now_ms: int) -> str:
    """The exclusive end of a range of settled entries: those of milliseconds before now_ms."""
    return f"({now_ms}-0"


class EventLogStore(StoreBase):
    """Reading the whole event log: both streams, merged by entry id."""

    def _now_ms(self) -> int:
        seconds, micros = self.r.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def read_events(
        self, since_id: str = "-", count: int = 1000, types: Sequence[str] = ()
    ) -> list[OrchestrationEvent]:
        """Up to `count` events from `since_id` on (an XRANGE start: `(<id>` excludes it),
        oldest first, of `types` if given: what both streams hold now."""
        with self._translate():
            pipe = self.r.pipeline(transaction=False)
            for stream in EVENT_STREAMS:
                pipe.xrange(stream, min=since_id, count=count)
            pages = dict(zip(EVENT_STREAMS, pipe.execute(), strict=True))
        events = (_parse_event(i, f) for i, f in merge(pages, count)[:count])
        return [e for e in events if not types or e.type in types]

    def tail_events(self, count: int = 20, *, settled: bool = False) -> list[OrchestrationEvent]:
        """The newest `count` events, oldest first; `settled`: only those a reader may resume
        after (milliseconds before now), as `orchestrator events` shows them."""
        with self._translate():
            newest = before_ms(self._now_ms()) if settled else "+"
            pipe = self.r.pipeline(transaction=False)
            for stream in EVENT_STREAMS:
                pipe.xrevrange(stream, max=newest, count=count)
            pages = {
                s: list(reversed(p)) for s, p in zip(EVENT_STREAMS, pipe.execute(), strict=True)
            }
        return [_parse_event(i, f) for i, f in merge(pages)[-count:]]

    def events_after(self, last_id: str, count: int = 1000) -> list[OrchestrationEvent]:
        """Settled events written after the entry `last_id` ("0": from the start), oldest
        first: `count` of them, or a few more that share the last one's id."""
        with self._translate():
            newest = before_ms(self._now_ms())
            pipe = self.r.pipeline(transaction=False)
            for stream in EVENT_STREAMS:
                pipe.xrange(stream, min=f"({last_id}", max=newest, count=count)
            try:
                pages = dict(zip(EVENT_STREAMS, pipe.execute(), strict=True))
            except redis.ResponseError as exc:  # not a stream entry id
                raise ValueError(f"{last_id!r} is not a stream entry id: {exc}") from exc
        return [_parse_event(i, f) for i, f in first(merge(pages, count), count)]

    def follow_events(
        self, last_id: str = "$", block_ms: int = 1000
    ) -> tuple[str, list[OrchestrationEvent]]:
        """The settled events after `last_id` ("$": from now), oldest first, waiting up to
        `block_ms` for some; with the id to follow on from."""
        with self._translate():
            if last_id == "$":
                last_id = f"{self._now_ms() - 1}-18446744073709551615"
            pipe = self.r.pipeline(transaction=False)
            pipe.time()  # before the reads: what they return of milliseconds before it is all
            pipe.xread(dict.fromkeys(EVENT_STREAMS, last_id), count=FOLLOW_COUNT)
            (seconds, micros), reply = pipe.execute()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            pages: dict[str, list[Entry]] = {s: list(e) for s, e in reply or []}
            got = merge(pages, FOLLOW_COUNT)
            shown = [(i, f) for i, f in got if entry_order(i)[0] < now_ms]
            if not shown:
                if got:  # only this millisecond's: settled in a moment
                    time.sleep(0.001)
                else:
                    self._wait_for_new(last_id, block_ms)
                return last_id, []
        return shown[-1][0], [_parse_event(i, f) for i, f in shown]

    def _wait_for_new(self, last_id: str, block_ms: int) -> None:
        """Block until either stream has an entry after `last_id` (or block_ms passed); what
        came is read by the next follow_events, settled."""
        self.r.xread(dict.fromkeys(EVENT_STREAMS, last_id), count=1, block=block_ms)
