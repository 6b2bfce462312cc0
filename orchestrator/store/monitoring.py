"""Redis I/O of the monitoring loops: telemetry windows, queue depths, and each loop's state.

Key names come from orchestrator.store.keys; the decisions made over what is read here live in the
pure modules (stats, alerting, slo, anomaly). Telemetry is written by orchestrator.store.telemetry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator.config import DEFAULT_SENTINEL_MASTER, Settings
from orchestrator.models import AlertState, ProductionAlert
from orchestrator.monitoring.stats import WindowStats, parse_fields, sum_fields
from orchestrator.security.policy import Finding, finding_id
from orchestrator.store.codes import RejectionKind
from orchestrator.store.connect import broker_client, redis_client
from orchestrator.store.keys import (
    AGENT_STATS,
    ALERT_ACKS,
    ALERTS,
    ALERTS_UNSENT,
    ANOMALY_SENSITIVITY,
    ANOMALY_SLOT,
    ANOMALY_STATE,
    BACKUP_LAST,
    BL_COUNT,
    DLQ,
    FLEET_VERSION,
    KOMBU_UNACKED,
    MONITOR_RUNS,
    MONITOR_SINCE,
    PARKED,
    PERF_SCORES,
    PERF_SEEN,
    POISON,
    PRIORITY_SEP,
    REGRESSIONS,
    REJECTION_KINDS,
    SECURITY_CHECKED,
    SECURITY_THREATS,
    SLA_COMPLIANT,
    SLO_ALERTS,
    TELEMETRY_TOTAL,
    queue_lists,
    rejections_key,
    telemetry_key,
)
from orchestrator.store.telemetry import MINUTE_WINDOW_MAX_S, TelemetryWriter

RUNS_KEPT = 1000
MAX_HOUR_WINDOW_S = 31 * 86400

# Count kombu's unacked entries per routing key without shipping their (maybe large) bodies:
# each value is JSON `[message, exchange, routing_key]`, so the last string is the key.
_UNACKED_BY_ROUTING_KEY = """
local counts = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local rk = string.match(v, '"([^"]*)"%s*%]%s*$')
  if rk then counts[rk] = (counts[rk] or 0) + 1 end
end
local out = {}
for k, n in pairs(counts) do out[#out + 1] = k; out[#out + 1] = n end
return out
"""


#: Waiting messages per queue, summed over its priority lists, in one step: ARGV = the
#: priority separator, the highest priority step, then the queues (keys.queue_lists: the
#: queue, then `<queue><sep><p>` for each step p above 0). One reply per queue, in order.
_WAITING = """
local sep, top = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local q = ARGV[i]
  local n = redis.call('LLEN', q)
  for p = 1, top do n = n + redis.call('LLEN', q .. sep .. p) end
  out[#out + 1] = n
end
return out
"""


def window_slots(window_s: float, now: float) -> tuple[str, int, int]:
    """(resolution, first slot, last slot) of the buckets covering [now - window, now].

    Minute buckets up to six hours, hour buckets beyond (they are kept ~31 days); the
    current, partial bucket is included.
    """
    if window_s <= MINUTE_WINDOW_MAX_S:
        return "m", int((now - window_s) // 60) + 1, int(now // 60)
    window_s = min(window_s, MAX_HOUR_WINDOW_S)
    return "h", int((now - window_s) // 3600) + 1, int(now // 3600)


def _slot_s(resolution: str) -> int:
    return 60 if resolution == "m" else 3600


#: Parked tasks read per scrape for the scaling signal (oldest first).


@dataclass
class TelemetrySeries:
    """Telemetry buckets fetched once and summed into any number of windows."""

    now: float
    buckets: dict[str, dict[int, dict[str, int]]] = field(default_factory=dict)

    def fields(self, window_s: float) -> tuple[dict[str, int], float]:
        """Summed fields of a window and the seconds it actually covers."""
        res, first, last = window_slots(window_s, self.now)
        got = self.buckets.get(res, {})
        summed = sum_fields(got[s] for s in range(first, last + 1) if s in got)
        return summed, max(self.now - first * _slot_s(res), 1.0)

    def window(self, window_s: float) -> tuple[WindowStats, float]:
        summed, span = self.fields(window_s)
        return parse_fields(summed), span

    def minute(self, slot: int) -> WindowStats:
        return parse_fields(self.buckets.get("m", {}).get(slot, {}))


class MonitoringStore:
    """All reads and writes of monitoring state. One instance per process."""

    def __init__(self, client: redis.Redis, broker: redis.Redis | None = None) -> None:
        self.r = client
        #: The broker's Redis: the agent queues and kombu's unacked hash (by default the
        #: state store's, where both are one Redis).
        self.broker = broker if broker is not None else client
        self.telemetry = TelemetryWriter(client)
        self._unacked = self.broker.register_script(_UNACKED_BY_ROUTING_KEY)
        self._waiting = self.broker.register_script(_WAITING)

    @classmethod
    def of(cls, client: redis.Redis, settings: Settings) -> MonitoringStore:
        """Over the state store's `client`, reading the agent queues in ORCH_BROKER_URL's
        Redis where that is another one."""
        return cls(client, None if settings.broker_is_state_store else broker_client(settings))

    @classmethod
    def from_url(cls, url: str, sentinel_master: str = DEFAULT_SENTINEL_MASTER) -> MonitoringStore:
        client = redis_client(
            url, sentinel_master=sentinel_master, decode_responses=True, health_check_interval=30
        )
        return cls(client)

    # --- telemetry ---------------------------------------------------------------------

    def series(self, windows: Iterable[float], now: float) -> TelemetrySeries:
        """Fetch every bucket the given windows need, in one round trip."""
        spans: dict[str, tuple[int, int]] = {}
        for w in windows:
            res, first, last = window_slots(w, now)
            lo, hi = spans.get(res, (first, last))
            spans[res] = (min(lo, first), max(hi, last))
        pipe = self.r.pipeline(transaction=False)
        order: list[tuple[str, int]] = []
        for res, (first, last) in spans.items():
            for slot in range(first, last + 1):
                pipe.hgetall(telemetry_key(res, slot))
                order.append((res, slot))
        series = TelemetrySeries(now=now)
        for (res, slot), raw in zip(order, pipe.execute(), strict=True):
            if raw:
                series.buckets.setdefault(res, {})[slot] = {k: int(v) for k, v in raw.items()}
        return series

    def window(self, window_s: float, now: float) -> tuple[WindowStats, float]:
        return self.series([window_s], now).window(window_s)

    def totals(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(TELEMETRY_TOTAL).items()}

    def rejections(
        self, window_s: float, now: float, kind: RejectionKind = RejectionKind.THRESHOLD
    ) -> dict[str, int]:
        """Refused submissions per client over the window; `kind` as in keys.rejections_key."""
        kind = RejectionKind(kind)
        return self.refusals(window_s, now, (kind,))[kind]

    def refusals(
        self, window_s: float, now: float, kinds: Sequence[RejectionKind] = REJECTION_KINDS
    ) -> dict[RejectionKind, dict[str, int]]:
        """Several kinds of refusal counts over the window, in one round trip."""
        first, last = int((now - window_s) // 60) + 1, int(now // 60)
        pipe = self.r.pipeline(transaction=False)
        for kind in kinds:
            for slot in range(first, last + 1):
                pipe.hgetall(rejections_key(slot, kind))
        replies = pipe.execute()
        per = last - first + 1
        return {
            RejectionKind(k): sum_fields(replies[i * per : (i + 1) * per])
            for i, k in enumerate(kinds)
        }

    def poison_refused(self, window_s: float, now: float) -> int:
        """Messages a worker refused at its edge within the window (the poison store's zset,
        scored by when each was refused; read only)."""
        return int(self.r.zcount(POISON, f"({now - window_s!r}", repr(now)))

    # --- the broker --------------------------------------------------------------------

    def waiting(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue (every priority list), not yet fetched: one Lua step
        for all of them (a pipeline of ten LLENs per queue cost redis-py ~0.1 ms each to pack
        and parse, 100 ms a call at 1,000 agents)."""
        if not queues:
            return {}
        top = len(queue_lists("q")) - 1  # the priority lists beside the queue's own
        lengths = self._waiting(args=[PRIORITY_SEP, top, *queues])
        return {q: int(n) for q, n in zip(queues, lengths, strict=True)}

    def queue_depths(
        self, queues: Sequence[str], waiting: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Messages waiting in each queue (every priority list) plus those fetched by a worker
        and not yet acknowledged (kombu's `unacked` hash, matched by routing key). `waiting`:
        this call's own waiting(queues), when the caller has just read it."""
        depths = dict(waiting) if waiting is not None else self.waiting(queues)
        flat = self._unacked(keys=[KOMBU_UNACKED])
        for i in range(0, len(flat), 2):
            routing_key = str(flat[i])
            if routing_key in depths:
                depths[routing_key] += int(flat[i + 1])
        return depths

    def backlog(self) -> tuple[int, int]:
        """(parked tasks, dead letters)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(PARKED)
        pipe.zcard(DLQ)
        parked, dead = pipe.execute()
        return int(parked), int(dead)

    def waiting_requirements(self) -> dict[frozenset[str], int]:
        """Tasks waiting in the backlog (queued for a slot, or parked with no capable agent)
        per set of required capabilities: exact, one read of the backlog's counts."""
        needs: dict[frozenset[str], int] = {}
        for key, n in self.r.hgetall(BL_COUNT).items():
            if int(n) > 0:
                caps = frozenset(key.split(","))
                needs[caps] = needs.get(caps, 0) + int(n)
        return needs

    def waiting_needs(self) -> dict[str, int]:
        """Backlog tasks per required capability (a task needing two counts toward both)."""
        needs: dict[str, int] = {}
        for caps, n in self.waiting_requirements().items():
            for cap in caps:
                needs[cap] = needs.get(cap, 0) + n
        return needs

    # --- alerts ------------------------------------------------------------------------

    def alerts(self, key: str = ALERTS) -> dict[str, ProductionAlert]:
        return {
            name: ProductionAlert.model_validate_json(raw)
            for name, raw in self.r.hgetall(key).items()
        }

    def all_alerts(self) -> list[ProductionAlert]:
        return [*self.alerts(ALERTS).values(), *self.alerts(SLO_ALERTS).values()]

    def save_alerts(self, alerts: Mapping[str, ProductionAlert], key: str = ALERTS) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        if alerts:
            pipe.hset(key, mapping={n: a.model_dump_json() for n, a in alerts.items()})
        pipe.execute()

    def acks(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(ALERT_ACKS).items()}

    def ack(self, name: str, active_since: float) -> None:
        self.r.hset(ALERT_ACKS, name, repr(active_since))

    def forget_acks(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            self.r.hdel(ALERT_ACKS, *names)

    def unsent(self) -> dict[str, ProductionAlert]:
        """Resolved alerts Alertmanager has not accepted yet (sent again next time)."""
        return self.alerts(ALERTS_UNSENT)

    def keep_unsent(self, alerts: Iterable[ProductionAlert]) -> None:
        resolved: dict[str | bytes, str] = {
            a.name: a.model_dump_json() for a in alerts if a.state is AlertState.RESOLVED
        }
        if resolved:
            self.r.hset(ALERTS_UNSENT, mapping=resolved)

    def drop_unsent(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            self.r.hdel(ALERTS_UNSENT, *names)

    # --- lists, small hashes, markers --------------------------------------------------

    def push_history(self, key: str, entry: Mapping[str, Any], keep: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(entry, default=str))
        pipe.ltrim(key, -keep, -1)
        pipe.execute()

    def history(self, key: str, count: int = 1440) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(key, -count, -1)]

    def json_hash(self, key: str) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.r.hgetall(key).items()}

    def save_json_hash(self, key: str, values: Mapping[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        if values:
            pipe.hset(key, mapping={k: json.dumps(v, default=str) for k, v in values.items()})
        pipe.execute()

    def compliance(self) -> dict[str, bool]:
        return {k: v == "1" for k, v in self.r.hgetall(SLA_COMPLIANT).items()}

    def save_compliance(self, values: Mapping[str, bool]) -> None:
        self.save_json_hash(SLA_COMPLIANT, {k: int(v) for k, v in values.items()})

    def anomaly_slot(self) -> int | None:
        value = self.r.get(ANOMALY_SLOT)
        return int(value) if value is not None else None

    def set_anomaly_slot(self, slot: int) -> None:
        self.r.set(ANOMALY_SLOT, slot)

    def detector_states(self) -> dict[str, Any]:
        return self.json_hash(ANOMALY_STATE)

    def save_detector_states(self, states: Mapping[str, Any]) -> None:
        self.save_json_hash(ANOMALY_STATE, states)

    def anomaly_tuning(self) -> dict[str, Any]:
        """Per metric family, what `orchestrator anomaly tune --labels` wrote."""
        return self.json_hash(ANOMALY_SENSITIVITY)

    def anomaly_sensitivities(self) -> dict[str, float]:
        """Per metric family, the tuned sensitivity the live loop uses instead of the default
        (an entry that does not hold a positive number is ignored)."""
        found = {}
        for family, entry in self.anomaly_tuning().items():
            value = entry.get("sensitivity") if isinstance(entry, dict) else None
            if isinstance(value, int | float) and value > 0:
                found[family] = float(value)
        return found

    def set_anomaly_tuning(self, family: str, entry: Mapping[str, Any] | None) -> None:
        """Write one family's tuned sensitivity; None removes it (the default applies)."""
        if entry is None:
            self.r.hdel(ANOMALY_SENSITIVITY, family)
        else:
            self.r.hset(ANOMALY_SENSITIVITY, family, json.dumps(dict(entry), default=str))

    def regressions(self) -> dict[str, Any]:
        return self.json_hash(REGRESSIONS)

    def findings(self) -> dict[str, Finding]:
        """The security loop's standing findings (orchestrator.security), by id. A finding an
        older version stored under an id not made from its kind (`rejections:<client>` for
        rejected_submissions) is read under today's id, so it stays the same finding (its
        `since`, no second announcement, no second auto-block)."""
        out = {}
        for key, raw in self.r.hgetall(SECURITY_THREATS).items():
            try:
                found = Finding.model_validate_json(raw)
            except ValueError:
                continue  # written by an older version: found again at the next run
            if key != found.kind and not key.startswith(found.kind + ":"):
                about = key.partition(":")[2]
                found = found.model_copy(update={"id": finding_id(found.kind, about or None)})
            out[found.id] = found
        return out

    def save_findings(self, findings: Mapping[str, Finding], checked: Mapping[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(SECURITY_THREATS)
        if findings:
            pipe.hset(
                SECURITY_THREATS, mapping={k: f.model_dump_json() for k, f in findings.items()}
            )
        pipe.set(SECURITY_CHECKED, json.dumps(checked, default=str))
        pipe.execute()

    def security_checked(self) -> dict[str, Any]:
        """When the security loop last ran and what it saw ({} before its first run)."""
        raw = self.r.get(SECURITY_CHECKED)
        return json.loads(raw) if raw else {}

    def threats(self) -> dict[str, Finding]:
        """Findings of severity error or critical: the `security_threats` metric."""
        return {k: f for k, f in self.findings().items() if f.alerting}

    def last_backup(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(BACKUP_LAST).items()}

    def set_last_backup(self, info: Mapping[str, Any]) -> None:
        mapping: dict[str | bytes, str] = {
            k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in info.items()
        }
        self.r.hset(BACKUP_LAST, mapping=mapping)

    def monitoring_began(self) -> float | None:
        """When monitoring first ran here, or None (it never has)."""
        since = self.r.get(MONITOR_SINCE)
        return None if since is None else float(since)

    def monitoring_since(self, now: float) -> float:
        """When monitoring first ran here (set once); the age of "no backup yet"."""
        self.r.set(MONITOR_SINCE, repr(now), nx=True)
        return float(self.r.get(MONITOR_SINCE) or now)

    def record_run(self, loop: str, now: float, task_id: str | None, ran: bool = True) -> None:
        """Log every delivery of a loop's task, also those that skipped (lock held)."""
        entry = {"loop": loop, "ts": now, "task_id": task_id, "ran": ran}
        self.push_history(MONITOR_RUNS, entry, RUNS_KEPT)

    def runs(self, count: int = RUNS_KEPT) -> list[dict[str, Any]]:
        return self.history(MONITOR_RUNS, count)

    def agent_stats(self) -> dict[str, str]:
        """Every agent's outcome figures (`<agent>|...` and `<agent>|<type>|...`)."""
        return {str(k): str(v) for k, v in self.r.hgetall(AGENT_STATS).items()}

    def save_scores(self, scores: Mapping[str, float], seen: Mapping[str, int]) -> None:
        """Replace the performance scores (`<agent>|<capability>` -> score, what routing
        reads) and the completion counts they were computed from, in one step."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(PERF_SCORES, PERF_SEEN)
        pipe.incr(FLEET_VERSION)  # routers weigh agents by these scores
        if scores:
            values: dict[str | bytes, str] = {k: repr(v) for k, v in scores.items()}
            pipe.hset(PERF_SCORES, mapping=values)
        if seen:
            counts: dict[str | bytes, int] = {k: int(v) for k, v in seen.items()}
            pipe.hset(PERF_SEEN, mapping=counts)
        pipe.execute()

    def scores(self) -> tuple[dict[str, float], dict[str, int]]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(PERF_SCORES)
        pipe.hgetall(PERF_SEEN)
        scores, seen = pipe.execute()
        return (
            {str(k): float(v) for k, v in scores.items()},
            {str(k): int(v) for k, v in seen.items()},
        )
