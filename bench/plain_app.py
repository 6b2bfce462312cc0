"""A minimal plain Celery app: the baseline the routing benchmark compares against.

Configured like the orchestrator's app where it matters for throughput (JSON, late acks,
prefetch multiplier 1, same Redis for broker and results) and nothing else: no priorities,
no ledger, and no task events unless BENCH_TASK_EVENTS=1 (then it sends them as the
orchestrator's app does, for Flower: worker task events and task-sent events). Start it with

    BENCH_REDIS_URL=redis://127.0.0.1:PORT/0 celery -A bench.plain_app worker -c 2 -P prefork

`bench.relay` makes the two-hop baseline: a first worker (`-Q bench`) relays each task to a
second one (`-Q bench.hop2`) under the same id, the shape of the orchestrated path without
the orchestrator.

The URL comes from BENCH_REDIS_URL (or ORCH_REDIS_URL); there is deliberately no default, so a
benchmark can never fall back to the machine's own Redis on 6379.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

NOOP = "bench.noop"
RELAY = "bench.relay"
QUEUE = "bench"
HOP2_QUEUE = "bench.hop2"


def _redis_url() -> str:
    url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("ORCH_REDIS_URL")
    if not url:
        raise SystemExit("bench.plain_app: set BENCH_REDIS_URL (the benchmark's own Redis)")
    return url


def create_plain_app(url: str, task_events: bool = False) -> Celery:
    plain = Celery("bench", broker=url, backend=url)
    plain.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
        worker_send_task_events=task_events,
        task_send_sent_event=task_events,
    )
    return plain


app = create_plain_app(_redis_url(), os.environ.get("BENCH_TASK_EVENTS") == "1")


@app.task(name=NOOP)
def noop(value: Any = None) -> Any:
    """Does nothing: returns its argument."""
    return value


@app.task(name=RELAY, bind=True, ignore_result=True)
def relay(self: Task, value: Any = None) -> None:
    """Hop 1 of the two-hop baseline: hand `value` to `bench.noop` on the second worker's
    queue under this message's own id, as `orchestrator.submit` hands a task to an agent, so
    the client's result is the second hop's. No ledger, no routing decision: the bare cost of
    the extra Celery hop."""
    self.app.send_task(NOOP, args=[value], task_id=self.request.id, queue=HOP2_QUEUE)
