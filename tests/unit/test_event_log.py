"""The two event streams as one log, as tables.

Which stream a type goes to, which streams a consumer reads, and the merge of both streams'
pages by entry id."""

from __future__ import annotations

import pytest

from orchestrator.events.catalogue import CATALOGUE
from orchestrator.store.event_log import entry_order, first, merge
from orchestrator.store.keys import (
    EVENTS,
    TASK_EVENT_TYPES,
    TASK_EVENTS,
    event_mark_key,
    events_key,
    streams_for,
)

M, T = EVENTS, TASK_EVENTS


def page(*ids: str, stream: str = M) -> list[tuple[str, dict[str, str]]]:
    return [(i, {"stream": stream}) for i in ids]


@pytest.mark.parametrize(
    ("event_type", "stream"),
    [
        ("task.submitted", T),
        ("task.routed", T),
        ("task.succeeded", T),
        ("task.failed", T),
        ("task.parked", M),  # a built-in handler takes it
        ("task.queued", M),  # on demand: written only for a handler
        ("task.dispatched", M),
        ("task.dead_lettered", M),
        ("task.rejected", M),
        ("agent.lost", M),
        ("test.effect", M),  # a team's own type
    ],
)
def test_each_type_goes_to_its_stream(event_type: str, stream: str) -> None:
    assert events_key(event_type) == stream


def test_the_task_stream_holds_the_catalogue_types_marked_so() -> None:
    assert {s.type for s in CATALOGUE if s.task_stream} == TASK_EVENT_TYPES
    assert not any(s.on_demand for s in CATALOGUE if s.task_stream)


@pytest.mark.parametrize(
    ("handled", "streams"),
    [
        ((), (M,)),
        (("agent.lost", "task.parked", "circuit.opened"), (M,)),  # the built-ins'
        (("task.queued", "task.dispatched"), (M,)),
        (("agent.lost", "task.succeeded"), (M, T)),
        (("task.routed",), (M, T)),
    ],
)
def test_a_consumer_reads_the_task_stream_only_for_a_handler_of_its_types(
    handled: tuple[str, ...], streams: tuple[str, ...]
) -> None:
    assert streams_for(handled) == streams


@pytest.mark.parametrize(
    ("entry_id", "order"),
    [("0-0", (0, 0)), ("1718000000000-7", (1718000000000, 7)), ("5", (5, 0))],
)
def test_entry_order_compares_as_redis_does(entry_id: str, order: tuple[int, int]) -> None:
    assert entry_order(entry_id) == order


@pytest.mark.parametrize(
    ("main", "tasks", "count", "merged"),
    [
        # Interleaved by time; a millisecond's sequence numbers compared numerically.
        (["1-0", "3-0"], ["2-0", "4-0"], None, ["1-0", ("2-0", T), "3-0", ("4-0", T)]),
        (["5-2", "5-10"], ["5-9"], None, ["5-2", ("5-9", T), "5-10"]),
        # One id in both streams: EVENTS' entry first.
        (["7-0"], ["7-0", "7-1"], None, ["7-0", ("7-0", T), ("7-1", T)]),
        ([], [], 10, []),
        (["1-0"], [], 10, ["1-0"]),
        # A full page may have more after it: nothing later than its last entry is taken.
        (["1-0", "9-0"], ["2-0", "3-0"], 2, ["1-0", ("2-0", T), ("3-0", T)]),
        (["1-0", "2-0"], ["3-0", "4-0"], 2, ["1-0", "2-0"]),
        (["1-0", "4-0"], ["2-0", "4-0"], 2, ["1-0", ("2-0", T), "4-0", ("4-0", T)]),
        # Not full: complete up to now.
        (["1-0"], ["2-0", "3-0"], 3, ["1-0", ("2-0", T), ("3-0", T)]),
    ],
)
def test_merge_orders_by_id_and_stops_where_a_page_may_go_on(
    main: list[str], tasks: list[str], count: int | None, merged: list[str | tuple[str, str]]
) -> None:
    """`merged`: entry ids of EVENTS, (id, TASK_EVENTS) for the task stream's."""
    out = merge({T: page(*tasks, stream=T), M: page(*main)}, count)
    assert [(i, f["stream"]) for i, f in out] == [
        (m, M) if isinstance(m, str) else m for m in merged
    ]


@pytest.mark.parametrize(
    ("ids", "count", "kept"),
    [
        (["1-0", "2-0", "3-0"], 2, ["1-0", "2-0"]),
        (["1-0", "2-0", "2-0", "3-0"], 2, ["1-0", "2-0", "2-0"]),  # never between one id's two
        (["1-0", "2-0"], 5, ["1-0", "2-0"]),
        (["1-0"], 0, []),
    ],
)
def test_a_page_never_ends_between_two_entries_of_one_id(
    ids: list[str], count: int, kept: list[str]
) -> None:
    assert [i for i, _ in first(page(*ids), count)] == kept


def test_a_handlers_markers_of_one_id_in_each_stream_are_two_keys() -> None:
    main, task = event_mark_key("h.f", "5-0", M), event_mark_key("h.f", "5-0", T)
    assert main == "orch:events:mark:h.f:5-0" and main != task
    assert task.rsplit(":", 1)[1] == "5-0"
