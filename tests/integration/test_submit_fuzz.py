"""Generated submissions through the real `orchestrator.submit`, by name.

Hypothesis draws FUZZ_EXAMPLES submit kwargs (default 1,000; `make fuzz` runs 10,000) from
tests/fuzz_specs.py; a plain `Celery(broker, backend)` app, as a service that never imports
this project, sends them all to one control worker and one echo agent, and then every answer
is checked against the oracle's prediction: an invalid spec fails with `invalid task: ...`
naming exactly the offending fields (on the submit id, and on its `task_id` when that one is
valid) and nothing is recorded; a valid runnable one resolves to the echoed payload; a valid
one needing a capability nobody has is parked; one a worker cannot take (kombu's JSON will
not decode it, it nests deeper than a worker can hand on, it has a keyword named `self`) is
refused at the edge, kept as poison, and its sender told why. Every submission is counted
once, as what it was. Afterwards both workers are the same processes (pool children too)
and serve one more task.

The examples are generated first and checked in one batch (sending them one by one through
`@given` would cost a round trip each), so a failure is reported with the offending kwargs
and the seed (FUZZ_SEED) that regenerates the batch, not shrunk.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, Phase, given, seed, settings
from kombu.utils import json as kombu_json

from orchestrator.store.keys import COUNTERS, PARKED, POISON, task_key
from tests.fuzz_oracle import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    RUNNABLE,
    SPEC_FIELDS,
    Undeliverable,
    Verdict,
    field_label,
    judge,
)
from tests.fuzz_specs import edge_cases, submissions
from tests.support import wait_for

pytestmark = pytest.mark.integration

MAX_PAYLOAD_BYTES = 4096
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
PREFIX = "invalid task: "
NO_ANSWER = {"status": "no answer", "result": None}


def generate(count: int, seed_value: int) -> list[dict[Any, Any]]:
    """`count` submit kwargs drawn by Hypothesis (generation only: nothing to shrink here)."""
    drawn: list[dict[Any, Any]] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(submissions(MAX_PAYLOAD_BYTES))
    def draw(kwargs: dict[Any, Any]) -> None:
        drawn.append(kwargs)

    draw()
    return drawn


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """Room to encode and decode MAX_DEPTH-deep payloads here, as a service in another
    language could send them."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 3 * MAX_DEPTH))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def named_fields(message: str, candidates: Iterable[str]) -> set[str]:
    """The fields a rejection names: each problem is `field: reason`, joined by "; "; the
    longest candidate at each problem's start wins (a reason may contain "; ")."""
    text = message.removeprefix(PREFIX)
    by_length = sorted(set(candidates), key=len, reverse=True)
    found: set[str] = set()
    cursor = 0
    for start in [0, *(m.end() for m in re.finditer("; ", text))]:
        if start < cursor:
            continue
        for name in by_length:
            if text.startswith(name + ": ", start):
                found.add(name)
                cursor = start + len(name) + 2
                break
    return found


def unique_ids(batch: list[dict[Any, Any]]) -> list[tuple[dict[Any, Any], Verdict | None]]:
    """Judge each example; a valid task_id drawn twice is replaced (a second submission of
    an id runs nothing again, so two examples must not share one)."""
    seen: set[str] = set()
    judged: list[tuple[dict[Any, Any], Verdict | None]] = []
    for i, kwargs in enumerate(batch):
        try:
            verdict = judge(kwargs, MAX_PAYLOAD_BYTES)
        except Undeliverable:
            judged.append((kwargs, None))
            continue
        if verdict.task_id is not None and verdict.task_id in seen:
            fresh = f"fuzz-{i}"
            while fresh in seen:
                fresh += "x"
            kwargs = {**kwargs, "task_id": fresh}
            verdict = judge(kwargs, MAX_PAYLOAD_BYTES)
        if verdict.task_id is not None:
            seen.add(verdict.task_id)
        judged.append((kwargs, verdict))
    return judged


def body_size(kwargs: dict[Any, Any]) -> int:
    return len(kombu_json.dumps([[], kwargs, {}]).encode())


def read_metas(app: Celery, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Stored results by id (decoded as any client decodes them); absent ids are missing."""
    backend = app.backend
    found: dict[str, dict[str, Any]] = {}
    for at in range(0, len(ids), 500):
        chunk = ids[at : at + 500]
        raw = backend.client.mget([backend.get_key_for_task(i) for i in chunk])
        for task_id, value in zip(chunk, raw, strict=True):
            if value is not None:
                found[task_id] = backend.decode_result(value)
    return found


def describe(n: int, kwargs: dict[Any, Any], verdict: Verdict | None, detail: str) -> str:
    with deep_recursion():
        shown = repr(kwargs)
    if len(shown) > 400:
        shown = shown[:400] + f"... ({len(shown)} chars)"
    predicted = "undeliverable" if verdict is None else sorted(verdict.problems) or "valid"
    return f"  #{n}: {detail}\n    kwargs: {shown}\n    predicted: {predicted}"


def category(verdict: Verdict | None) -> str:
    if verdict is None:
        return "undeliverable"
    if verdict.valid:
        return "valid, parked" if verdict.parks else "valid, run"
    return "invalid"


def wrong_answer(
    verdict: Verdict | None, submit_id: str, metas: dict[str, dict[str, Any]], redis_client: Any
) -> tuple[str, str] | None:
    """What is wrong with the service's answer to one submission: (kind, detail), or None."""
    if verdict is None:  # refused at the edge, and the sender told why
        meta = metas.get(submit_id, NO_ANSWER)
        error = meta["result"]
        if meta["status"] != "FAILURE" or type(error).__name__ != "MessageRefused":
            kind = f"refused message answered {meta['status']} {type(error).__name__}"
            return kind, f"{str(error)[:300]!r}"
        return None
    orchestration_id = verdict.task_id or submit_id
    if verdict.valid and not (verdict.runnable or verdict.parks):
        return "the strategy drew a valid spec this test cannot judge", ""
    if verdict.parks:
        if redis_client.zscore(PARKED, orchestration_id) is None:
            state = redis_client.hget(task_key(orchestration_id), "state")
            return "valid spec not parked", f"state {state}"
        return None
    if verdict.valid:
        meta = metas.get(orchestration_id, NO_ANSWER)
        if meta["status"] != "SUCCESS":
            return f"valid spec ended {meta['status']}", f"{str(meta['result'])[:300]!r}"
        if meta["result"] != verdict.payload:
            return "valid spec echoed another payload", f"{str(meta['result'])[:300]!r}"
        return None
    candidates = {*SPEC_FIELDS, *(field_label(k) for k in verdict.fields)}
    for result_id in [submit_id, *([verdict.task_id] if verdict.task_id else [])]:
        meta = metas.get(result_id, NO_ANSWER)
        error = meta["result"]
        message = str(error)
        where = "submit id" if result_id == submit_id else "task_id"
        if meta["status"] != "FAILURE" or type(error).__name__ != "InvalidTask":
            kind = f"rejection on the {where} is {meta['status']} {type(error).__name__}"
            return kind, f"{message[:300]!r}"
        if not message.startswith(PREFIX) or message.startswith(PREFIX * 2):
            return "message not 'invalid task: ...' once", f"{message[:300]!r}"
        named = named_fields(message, candidates)
        if named != verdict.problems:
            return "message names other fields", f"names {sorted(named)}: {message[:300]!r}"
    if verdict.task_id is not None and redis_client.exists(task_key(verdict.task_id)):
        return "a rejected spec was recorded", verdict.task_id
    return None


def test_generated_submissions_get_the_answer_the_spec_gives(
    start_control, start_agent, redis_url, redis_client
):
    seed_value = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    env = {"ORCH_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES)}
    control = start_control(concurrency=2, wait=False, **env)
    agent = start_agent("fuzz", RUNNABLE, concurrency=2, **env)
    control.wait_for_log("ready.", timeout=60)
    pids = (control.pid, tuple(control.child_pids()), agent.pid, tuple(agent.child_pids()))

    app = Celery(broker=redis_url, backend=redis_url)
    started = time.monotonic()
    with deep_recursion():
        batch = [*edge_cases(MAX_PAYLOAD_BYTES), *generate(EXAMPLES, seed_value)]
        generated = time.monotonic()
        judged = unique_ids(batch)
        oversized = [k for k, _ in judged if body_size(k) > MAX_BODY_BYTES]
        assert not oversized, f"the strategy built {len(oversized)} messages over the gate cap"
        sent = [app.send_task("orchestrator.submit", kwargs=k).id for k, _ in judged]
        published = time.monotonic()

        # The ids that must get a result: a refusal or a rejection on the submit id (and a
        # rejection on a valid task_id too), the echoed payload on the orchestration id.
        ids: list[str] = []
        for (_, verdict), submit_id in zip(judged, sent, strict=True):
            if verdict is None or not verdict.valid:
                ids.append(submit_id)
            if verdict is not None and verdict.task_id is not None and not verdict.parks:
                ids.append(verdict.task_id)
            elif verdict is not None and verdict.runnable:
                ids.append(submit_id)
        metas: dict[str, dict[str, Any]] = {}

        def answered() -> bool:
            missing = [i for i in ids if i not in metas]
            metas.update(read_metas(app, missing))
            return len(metas) == len(ids)

        # A submission that gets no answer is reported below with the others.
        with contextlib.suppress(AssertionError):
            wait_for(answered, timeout=max(60.0, EXAMPLES / 20), interval=0.5)
        answered_at = time.monotonic()
        parked = [v.task_id or i for (_, v), i in zip(judged, sent, strict=True) if v and v.parks]
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(redis_client.zscore(PARKED, i) for i in parked), timeout=10)

    tally: Counter[str] = Counter()
    failures: dict[str, list[str]] = {}
    for n, ((kwargs, verdict), submit_id) in enumerate(zip(judged, sent, strict=True)):
        tally[category(verdict)] += 1
        wrong = wrong_answer(verdict, submit_id, metas, redis_client)
        if wrong is not None:
            kind, detail = wrong
            failures.setdefault(kind, []).append(describe(n, kwargs, verdict, detail))

    report = ", ".join(f"{v} {k}" for k, v in sorted(tally.items()))
    timing = (
        f"generated {len(batch)} in {generated - started:.1f}s, published in "
        f"{published - generated:.1f}s, all answered {answered_at - published:.1f}s later"
    )
    print(f"\nfuzz: {report}; {timing}; FUZZ_SEED={seed_value}")
    assert not failures, (
        f"wrong answers (FUZZ_SEED={seed_value} regenerates the batch; {report}):\n"
        + "\n".join(
            f"{len(found)} x {kind}:\n" + "\n".join(found[:3]) for kind, found in failures.items()
        )
    )
    assert len(batch) == EXAMPLES + len(edge_cases(MAX_PAYLOAD_BYTES))
    assert redis_client.zcard(POISON) == tally["undeliverable"]  # kept for inspection
    assert tally["invalid"] and tally["valid, run"] and tally["valid, parked"]
    # Each submission counted once, as what it was.
    counters = {k: int(v) for k, v in redis_client.hgetall(COUNTERS).items()}
    valid = tally["valid, run"] + tally["valid, parked"]
    assert (counters.get("rejected", 0), counters.get("poison", 0)) == (
        tally["invalid"],
        tally["undeliverable"],
    )
    assert (counters.get("submitted", 0), counters.get("parked", 0)) == (
        valid,
        tally["valid, parked"],
    )
    assert counters.get("succeeded", 0) == tally["valid, run"]

    # Nothing stopped a worker: the same processes (pool children too) still serve.
    assert control.alive and agent.alive
    assert pids == (control.pid, tuple(control.child_pids()), agent.pid, tuple(agent.child_pids()))
    last = app.send_task("orchestrator.submit", kwargs={"type": RUNNABLE, "payload": {"n": 1}})
    assert last.get(timeout=30) == {"n": 1}
    app.close()
