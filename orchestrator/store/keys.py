"""Every Redis key the orchestrator uses, in one place (Celery's and kombu's own aside).

Naming scheme: no two ids or names can map to the same key, nor to the same hash field.
  - Every key is `orch:<kind>` (one fixed key) or `orch:<kind>:<id>` (one key per id), and
    each kind is a fixed word of its own: no kind's `orch:<kind>:` is the beginning of another
    kind's keys or of a fixed key (tests/unit/test_keys.py checks every builder below). So
    the id after a kind's prefix is the whole rest of the key, whatever characters it has:
    `orch:task:X:history` is task `X:history`'s ledger entry, never task X's history, which
    is `orch:history:X`. Nothing is ever appended after an id.
  - Where one key holds two ids (events:mark:<handler>:<event id>, events:taskmark:...) the
    last one is a stream entry id (`<ms>-<seq>`), which has no `:`, so the last `:` splits
    them.
  - Hash fields that join names (agent_stats `<agent>|<...>`, perf `<agent>|<capability>`,
    telemetry `<type>|...`) join them with `|`, which agent ids (ORCH_AGENT_ID, or the worker's
    node name, checked alike: 1-128 of [A-Za-z0-9._@:-]), task types and capabilities
    ([a-z0-9_.-]) cannot contain; the count of `|` tells the per-agent fields
    (`<agent>|ok`) from the per-type ones (`<agent>|<type>|n`).
  - Before this scheme a task's history was `orch:task:<id>:history`, so a task named
    `X:history` collided with task X's history. StateStore.migrate_keys() renames such lists
    (the control worker and `orchestrator dev` run it at start; idempotent), and a restore of
    an older backup maps the old names (legacy_history_task).

Key layout (prefix `orch:`; `orch:{orchestrator:events}:` where the state store is a Redis
Cluster, ORCH_STATE_CLUSTER, so that every key lies in the fixed event stream's slot):
  agents              hash  agent_id -> RegisteredAgent JSON (identity, capabilities, status)
  heartbeats          hash  agent_id -> unix time of the last heartbeat
  agent_stats         hash  "<agent_id>|<ok|fail|lat|sr>" -> number (and per task type)
  wrr:<capabilities>  hash  the smooth weighted round-robin's peers and state, kept under a
                            digest of the peers (lua/wrr_pick.lua: a leaf per peer, a node
                            per tournament node, `i:<agent_id>` -> the peer's index)
  affinity:<key>      str   agent_id the affinity key sticks to
  task:<id>           hash  the ledger entry (spec JSON, state, agent, attempts, times, error)
  history:<id>        list  JSON entries, one per state change (same TTL as task:<id>)
  parked              zset  task_id -> parked-at time
  dlq                 zset  task_id -> dead-lettered-at time
  poison              zset  poison id -> when a worker refused the message (runtime.gate)
  poison:msg          hash  poison id -> {id, queue, reason, size, excerpt, raw (base64,
                            capped), truncated, ts} JSON: the dead-letter store's "poison" kind
  counters            hash  cumulative counters (submitted, routed, succeeded, ...)
  (orchestrator:events stream: the event log, its name fixed for other services)
  (orchestrator:events:tasks stream: the task lifecycle events, TASK_EVENT_TYPES, apart)
  agent_status        hash  agent_id -> status (active|sleeping|quarantined|offline)
  quarantined_until   hash  agent_id -> unix time its quarantine ends
  fleet:version       str   a counter every change routers must see at once increments
                            (registration, status, breaker transition, scores): a router
                            re-reads the fleet when it moved (routing/router.py)
  sleep               hash  agent_id -> checkpoint JSON written when it fell asleep (why, when,
                            its stats then); removed when it wakes
  idle_since          hash  agent_id -> when the sleep/wake loop first saw it idle
  recycled            hash  agent_id -> the sleep window occurrence it was last recycled in
  failures:<agent>    zset  "<task_id>:<attempt>" -> when recovery took that failed attempt
                            (the quarantine tier's count; trimmed to ORCH_QUARANTINE_WINDOW_S)
  circuit:<agent>     hash  the agent's breaker (orchestrator.recovery.breaker.to_redis_hash)
  inflight:<agent>    set   task ids routed to the agent and not yet ended
  inflight_log        list  agent ids, one per change of an in-flight set (the newest few
                            thousand), so a round-robin pick re-checks only those agents' slots
  inflight_seq        str   how many entries inflight_log has ever had
  recovery            hash  task_id -> the open RecoveryPlan JSON
  recovery_deadlines  zset  task_id -> when its open plan escalates
  lock:<name>         str   a periodic task's singleton lock (token)
  outbox              zset  submit message id -> when OrchestratorClient last sent it
  outbox:msg          hash  submit message id -> {"kwargs", "queue"} JSON, until accepted
  handler_circuit:<n> keys  pybreaker's state for a handler's own outbound breaker: pybreaker
                            appends `:pybreaker:<state|fail_counter|success_counter|opened_at>`,
                            and no two names end alike under those suffixes
  scale:decisions     hash  capability -> the autoscaling loop's last ScaleDecision JSON
                            (desired count and its hysteresis state; store/scaling.py)
  scale:executed      hash  capability, or "*" for a pool-wide command -> the last
                            ORCH_SCALE_COMMAND run (ScaleExecution JSON)

Celery's broker lists `agent.<agent_id>` (and `agent.<agent_id>\x06\x16<p>` per priority) and
kombu's `unacked` / `unacked_index` are read, never written, except when a lost agent's queue
is emptied after its tasks were re-routed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from orchestrator.redis_urls import STATE_CLUSTER_LAYOUT
from orchestrator.store.codes import RejectionKind

#: Where the state store is a Redis Cluster (ORCH_STATE_CLUSTER), every key carries the hash
#: tag `{orchestrator:events}` after `orch:`: the cluster hashes only the tag, so every key lies
#: in the one slot of the event stream whose name is fixed (EVENTS), and every Lua step, which
#: writes that stream with the keys it changes, still touches one slot. The tag sits after
#: `orch:`, so `orch:*` still matches every key.
CLUSTER_TAG = "{orchestrator:events}"
PREFIX = f"orch:{CLUSTER_TAG}:" if STATE_CLUSTER_LAYOUT else "orch:"
AGENTS = PREFIX + "agents"
HEARTBEATS = PREFIX + "heartbeats"
AGENT_STATS = PREFIX + "agent_stats"
PARKED = PREFIX + "parked"
DLQ = PREFIX + "dlq"
POISON = PREFIX + "poison"
POISON_MSG = PREFIX + "poison:msg"
COUNTERS = PREFIX + "counters"
EVENTS = "orchestrator:events"  # a fixed name: other services read and write it
#: The KEYS of a Lua step that builds every key it touches itself (scripts' `slot`): the event
#: stream, unused by the step, names the Redis Cluster node that holds the slot of every key.
SLOT_KEYS = (EVENTS,)
#: The task lifecycle events: a stream of their own beside EVENTS, its name fixed alike.
#: On a Redis Cluster it is `{orchestrator:events}:tasks`, in the event stream's slot.
TASK_EVENTS = f"{CLUSTER_TAG}:tasks" if STATE_CLUSTER_LAYOUT else "orchestrator:events:tasks"
AGENT_STATUS = PREFIX + "agent_status"
QUARANTINED_UNTIL = PREFIX + "quarantined_until"
FLEET_VERSION = PREFIX + "fleet:version"
SLEEP = PREFIX + "sleep"
IDLE_SINCE = PREFIX + "idle_since"
RECYCLED = PREFIX + "recycled"
RECOVERY = PREFIX + "recovery"
RECOVERY_DEADLINES = PREFIX + "recovery_deadlines"
OUTBOX = PREFIX + "outbox"
OUTBOX_MSG = PREFIX + "outbox:msg"
CIRCUIT_PREFIX = PREFIX + "circuit:"
INFLIGHT_PREFIX = PREFIX + "inflight:"
INFLIGHT_LOG = PREFIX + "inflight_log"
INFLIGHT_SEQ = PREFIX + "inflight_seq"
INFLIGHT_LOG_KEEP = 4096  # entries kept: a pick further behind re-checks every peer
INFLIGHT_LOG_TRIM = 1024  # trimmed every this many entries
FAILURES_PREFIX = PREFIX + "failures:"
HANDLER_CIRCUIT_PREFIX = PREFIX + "handler_circuit:"
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
PRIORITY_SEP = "\x06\x16"


TASK_PREFIX = PREFIX + "task:"
HISTORY_PREFIX = PREFIX + "history:"
#: What the layout before HISTORY_PREFIX appended to a ledger key for its history list.
LEGACY_HISTORY_SUFFIX = ":history"


def task_key(task_id: str) -> str:
    return TASK_PREFIX + task_id


def history_key(task_id: str) -> str:
    return HISTORY_PREFIX + task_id


def legacy_history_key(task_id: str) -> str:
    """Where the older layout kept a task's history list (`orch:task:<id>:history`)."""
    return task_key(task_id) + LEGACY_HISTORY_SUFFIX


def legacy_history_task(key: str) -> str | None:
    """The task id whose history the older layout kept at `key`, or None when the name is
    not one. The name alone cannot tell a history list from the ledger entry of a task named
    `<id>:history`: only a key of type list is one (callers check the type)."""
    if not (key.startswith(TASK_PREFIX) and key.endswith(LEGACY_HISTORY_SUFFIX)):
        return None
    task_id = key[len(TASK_PREFIX) : -len(LEGACY_HISTORY_SUFFIX)]
    return task_id or None


def wrr_key(capability_key: str) -> str:
    return f"{PREFIX}wrr:{capability_key}"


def affinity_key(key: str) -> str:
    return f"{PREFIX}affinity:{key}"


def circuit_key(agent_id: str) -> str:
    return CIRCUIT_PREFIX + agent_id


def inflight_key(agent_id: str) -> str:
    return INFLIGHT_PREFIX + agent_id


def failures_key(agent_id: str) -> str:
    return FAILURES_PREFIX + agent_id


def lock_key(name: str) -> str:
    return f"{PREFIX}lock:{name}"


def queue_lists(queue: str, steps: range = range(10)) -> list[str]:
    """Every Redis list kombu keeps for one queue under the priority strategy."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{p}" for p in steps if p]


# --- monitoring loops (telemetry, alerts, SLA, anomaly, security, backup) --------
# tm:m:<minute> / tm:h:<hour>  hash  per-minute / per-hour telemetry buckets, fields
#     "<type>|ok|fail|rec", "<type>|l|<i>" (run-time histogram), "<type>|d|<i>"
#     (submit-to-start histogram), "<type>|lsum|dsum", "~avail|<cap>|good|total" (agent
#     availability samples); minute buckets live ~7 h, hour buckets ~32 d (see monitoring/stats.py)
# tm:total              hash  the same fields, cumulative and never expiring (the exporter)
# sec:m:<minute>        hash  client_id -> rejected submissions in that minute (invalid
#                             specs and rate-limited ones: what the threshold counts)
# sec:rl:<minute>       hash  client_id -> submissions refused by the rate limit that minute
# sec:blk:<minute>      hash  client_id -> submissions refused while blocked that minute
# rate:<client_id>      hash  the client's token bucket {t: tokens, ts: last refill} (TTL:
#                             until it would be full again)
# block:<client_id>     str   unix time the client's block ends (TTL: until then)
# blocks                zset  client_id -> when its block ends (the index the loop lists)
# alerts                hash  rule name -> ProductionAlert JSON (rule alerts)
# alerts:slo            hash  burn-rate alert name -> ProductionAlert JSON (SLA loop)
# alerts:acks           hash  alert name -> active_since of the acknowledged episode
# alerts:unsent         hash  alert name -> resolved alert JSON Alertmanager has not taken yet
# metrics:history       list  ProductionMetrics JSON snapshots, newest last, capped
# sla:compliant         hash  target name -> "1" | "0" at the last SLA evaluation
# sla:history           list  {ts, targets: {name: {value, budget, compliant}}} JSON, capped
# anomaly:state         hash  series -> {"slot": last minute fed, "state": DetectorState}
# anomaly:slot          str   the last complete minute the anomaly loop consumed
# anomaly:sensitivity   hash  metric family -> {"sensitivity", ...} JSON: the sensitivity
#                             `orchestrator anomaly tune --labels` chose on the operator's labels
# regressions           hash  task type -> Regression JSON while the regression lasts
# security:threats      hash  finding id -> {id, kind, severity, summary, since, data} JSON,
#                             the security loop's findings while they last (security/policy.py)
# security:checked      str   {ts, workers, flower} JSON: when the loop last ran and what it saw
# backup:last           hash  path, sha256, created_at, keys of the newest backup
# monitor:since         str   when monitoring first ran (age of "no backup yet")
# monitor:runs          list  {"loop", "ts", "task_id", "ran"} JSON per delivery, capped
# perf:scores           hash  "<agent>|<capability>" -> performance score (routing reads it)
# perf:seen             hash  "<agent>|<capability>" -> completions the score was computed from
TELEMETRY_TOTAL = PREFIX + "tm:total"
ALERTS = PREFIX + "alerts"
SLO_ALERTS = PREFIX + "alerts:slo"
ALERT_ACKS = PREFIX + "alerts:acks"
ALERTS_UNSENT = PREFIX + "alerts:unsent"
METRICS_HISTORY = PREFIX + "metrics:history"
SLA_COMPLIANT = PREFIX + "sla:compliant"
SLA_HISTORY = PREFIX + "sla:history"
ANOMALY_STATE = PREFIX + "anomaly:state"
ANOMALY_SLOT = PREFIX + "anomaly:slot"
ANOMALY_SENSITIVITY = PREFIX + "anomaly:sensitivity"
REGRESSIONS = PREFIX + "regressions"
SECURITY_THREATS = PREFIX + "security:threats"
SECURITY_CHECKED = PREFIX + "security:checked"
BLOCKS = PREFIX + "blocks"
BACKUP_LAST = PREFIX + "backup:last"
MONITOR_SINCE = PREFIX + "monitor:since"
MONITOR_RUNS = PREFIX + "monitor:runs"
PERF_SCORES = PREFIX + "perf:scores"
PERF_SEEN = PREFIX + "perf:seen"


def telemetry_key(resolution: str, slot: int) -> str:
    """`resolution` is "m" (slot = unix minute) or "h" (slot = unix hour)."""
    return f"{PREFIX}tm:{resolution}:{slot}"


#: Per-minute refusal counts by kind (codes.RejectionKind): "m" counts toward the threshold.
REJECTION_KINDS = tuple(RejectionKind)


def rejections_key(minute: int, kind: RejectionKind = RejectionKind.THRESHOLD) -> str:
    """`kind`: "m" (every rejection the threshold counts), "rl" (rate-limited), "blk"
    (refused while blocked)."""
    return f"{PREFIX}sec:{RejectionKind(kind).value}:{minute}"


def rate_key(client_id: str) -> str:
    return f"{PREFIX}rate:{client_id}"


def block_key(client_id: str) -> str:
    return f"{PREFIX}block:{client_id}"


# --- event processing (orchestrator/events, runtime/event_processing.py) -------------------
# The control workers read orchestrator:events (and orchestrator:events:tasks when a handler
# takes a task lifecycle type) as the consumer group EVENTS_GROUP (one consumer per worker
# process, "<worker hostname>:<pid>"); another service reading the streams uses a group of its
# own name and never takes their entries.
# events:mark:<handler>:<event id>  str  the handler's idempotency marker for one event:
#     "run:<token>" while a delivery runs it (TTL: the claim time, so a dead run's lapses),
#     then "done" or "failed" (TTL: EVENT_MARK_TTL_S)
# events:taskmark:<handler>:<event id>  str  the same, for an entry of orchestrator:events:tasks
# events:failed         list  {id, type, source, handler, error, deliveries, consumer, ts}
#                             JSON per handler given up on, newest last, capped
EVENTS_GROUP = "orchestrator"
EVENTS_FAILED = PREFIX + "events:failed"
#: How long a done/failed marker stays: far longer than an entry can stay pending.
EVENT_MARK_TTL_S = 7 * 24 * 3600
#: Failure records kept in EVENTS_FAILED.
EVENTS_FAILED_KEEP = 1000


def event_mark_key(handler: str, event_id: str, stream: str = EVENTS) -> str:
    """The marker of `handler` for the entry `event_id` of `stream`: the two streams' ids are
    independent (one id can name an entry in each), so the task stream's markers are a kind
    of their own."""
    kind = "taskmark" if stream == TASK_EVENTS else "mark"
    return f"{PREFIX}events:{kind}:{handler}:{event_id}"


# --- the two event streams ------------------------------------------------------------------
# Every task writes several lifecycle events on its normal path (submitted, routed, then
# succeeded or failed), from the Lua steps of the hot path and from Python. They go to
# TASK_EVENTS; every other type (agents, breakers, recovery, alerts, the rarer task events such
# as task.parked, task.dead_lettered and the on-demand task.queued / task.dispatched) stays in
# EVENTS. So the control workers' group reads TASK_EVENTS only when a handler of the process
# takes one of its types (streams_for), and otherwise never pays for the task events. Readers
# of the whole log (`orchestrator events`, StateStore.read_events) merge the two by entry id:
# both streams' ids come from the one Redis server's clock (store/event_log.py). Both are
# capped near ORCH_EVENTS_MAX_LEN each, and both are backed up.
# Before the split every type went to EVENTS: nothing moves at the upgrade. Entries already
# in EVENTS stay there (read and merged as ever), new task events go to TASK_EVENTS; another
# service that followed task events in EVENTS reads TASK_EVENTS too.
TASK_EVENT_TYPES = frozenset({"task.submitted", "task.routed", "task.succeeded", "task.failed"})
#: Both event streams, in the order a tie of ids is shown in (EVENTS first).
EVENT_STREAMS = (EVENTS, TASK_EVENTS)


def events_key(event_type: str) -> str:
    """The stream an event of `event_type` is written to."""
    return TASK_EVENTS if event_type in TASK_EVENT_TYPES else EVENTS


def streams_for(handled: Iterable[str]) -> tuple[str, ...]:
    """The streams a consumer group member with handlers for `handled` types reads: EVENTS
    always, TASK_EVENTS only when one of them is written there."""
    if TASK_EVENT_TYPES.isdisjoint(handled):
        return (EVENTS,)
    return EVENT_STREAMS


# --- autoscaling (orchestrator/scaling/autoscale.py, store/scaling.py) ----------
# One small entry per capability in each hash; capabilities no longer seen are dropped.
SCALE_DECISIONS = PREFIX + "scale:decisions"
SCALE_EXECUTED = PREFIX + "scale:executed"


# --- dispatch: slots and the backlog (store/backlog.py, lua/backlog.lua) ------------------
# A task no eligible agent has a free slot for waits in the backlog (ledger state `queued`,
# or `parked` when no capable agent exists at all). <set> is a task's capability set (its
# capability_key: names of [a-z0-9_.-] joined by ","), <p> its priority (one digit),
# <client> its client_id (or "*" with ORCH_FAIR_SHARE=off); none of them can hold "|".
# bl:sets             set   capability sets with tasks waiting (not counting keyed tasks
#                           waiting for a permit)
# bl:n                hash  capability set -> tasks waiting in it
# bl:p:<set>          zset  priorities waiting in the set (member and score: the priority)
# bl:c:<set>|<p>      zset  clients waiting at that priority -> fair-share tag
# bl:q:<set>|<p>|<client> list  task ids, oldest first
# fair:vt             hash  client -> virtual time (worker-seconds charged / weight)
# fair:v              hash  "<set>|<p>" -> that list's virtual time (the highest tag taken
#                           there): where a client that starts waiting in it starts
# bl:seq              str   a counter: each enqueued task's order (ledger `qseq`), by which
#                           ORCH_FAIR_SHARE=off compares capability sets (oldest first)
# fair:est            hash  client -> run-time estimate in seconds (EWMA of its settled runs)
# ck:h:<key>          set   task ids holding one of the concurrency key's permits (dispatched
#                           or waiting in the backlog, until they end)
# ck:w:<key>          list  task ids of the key waiting for a permit, oldest first
# ck:lim              hash  concurrency key -> the latest submitted limit
# events:want:<type>  set   control-worker consumers with a handler for an event the dispatch
#                           steps emit only when someone listens (task.queued,
#                           task.dispatched): joined at start, left at warm shutdown
# deferred            zset  task id -> when it is due (countdowns and retry back-offs held
#                           in Redis rather than in the broker)
# Ledger fields a waiting task carries: bl ("<set>|<p>|<client>"), blw (the key it waits for a
# permit of), queued_at, due, prefer (the agent to try first when due), fc and fest (the client
# charged and its estimate, corrected at settle), ckey (its concurrency key).
BL_SETS = PREFIX + "bl:sets"
BL_COUNT = PREFIX + "bl:n"
BL_PRIOS = PREFIX + "bl:p:"
BL_CLIENTS = PREFIX + "bl:c:"
BL_QUEUE = PREFIX + "bl:q:"
FAIR_VT = PREFIX + "fair:vt"
FAIR_V = PREFIX + "fair:v"
BL_SEQ = PREFIX + "bl:seq"
FAIR_EST = PREFIX + "fair:est"
CK_HOLDERS = PREFIX + "ck:h:"
CK_WAITING = PREFIX + "ck:w:"
CK_LIMITS = PREFIX + "ck:lim"
DEFERRED = PREFIX + "deferred"
EVENTS_WANT = PREFIX + "events:want:"
#: Events the dispatch steps emit only while a control worker has a handler for them.
ON_DEMAND_EVENTS = ("task.queued", "task.dispatched")


def backlog_queue(capability_key: str, priority: int, client: str) -> str:
    return f"{BL_QUEUE}{capability_key}|{priority}|{client}"


def backlog_clients(capability_key: str, priority: int) -> str:
    return f"{BL_CLIENTS}{capability_key}|{priority}"


def affixes(key_of: Callable[[str], str]) -> tuple[str, str]:
    """A per-id key builder as (prefix, suffix), for Lua to build the same names."""
    prefix, _, suffix = key_of("\x00").partition("\x00")
    return prefix, suffix


def lua_header(*only: str) -> str:
    """The key names Lua steps build themselves, as a Lua table `K` (scripts.py): all of
    them, or `only` those (a table built on every call costs a short script's time)."""
    task_pre, task_suf = affixes(task_key)
    hist_pre, hist_suf = affixes(history_key)
    names = {
        "TASK_PRE": task_pre,
        "TASK_SUF": task_suf,
        "HISTORY_PRE": hist_pre,
        "HISTORY_SUF": hist_suf,
        "AGENTS": AGENTS,
        "AGENT_STATUS": AGENT_STATUS,
        "HEARTBEATS": HEARTBEATS,
        "INFLIGHT": INFLIGHT_PREFIX,
        "INFLIGHT_LOG": INFLIGHT_LOG,
        "INFLIGHT_SEQ": INFLIGHT_SEQ,
        "CIRCUIT": CIRCUIT_PREFIX,
        "PARKED": PARKED,
        "COUNTERS": COUNTERS,
        "EVENTS": EVENTS,
        "TASK_EVENTS": TASK_EVENTS,
        "BL_SETS": BL_SETS,
        "BL_COUNT": BL_COUNT,
        "BL_PRIOS": BL_PRIOS,
        "BL_CLIENTS": BL_CLIENTS,
        "BL_QUEUE": BL_QUEUE,
        "FAIR_VT": FAIR_VT,
        "FAIR_V": FAIR_V,
        "BL_SEQ": BL_SEQ,
        "FAIR_EST": FAIR_EST,
        "CK_HOLDERS": CK_HOLDERS,
        "CK_WAITING": CK_WAITING,
        "CK_LIMITS": CK_LIMITS,
        "DEFERRED": DEFERRED,
        "OUTBOX": OUTBOX,
        "OUTBOX_MSG": OUTBOX_MSG,
        "EVENTS_WANT": EVENTS_WANT,
    }
    if only:
        names = {name: names[name] for name in only}
    items = [f"{name} = {json.dumps(value)}" for name, value in names.items()]
    if only:
        return f"local K = {{{', '.join(items)}}}\n"
    task_types = ", ".join(f"[{json.dumps(t)}] = true" for t in sorted(TASK_EVENT_TYPES))
    items.append(f"TASK_EVENT_TYPES = {{{task_types}}}")
    return f"local K = {{{', '.join(items)}}}\n" + _INFLIGHT_CHANGED


#: Every step that adds to or takes from an agent's in-flight set calls this, so the
#: round-robin learns which agents' fullness may have changed (lua/wrr_pick.lua).
_INFLIGHT_CHANGED = f"""local function inflight_changed(agent)
  local n = redis.call('INCR', K.INFLIGHT_SEQ)
  redis.call('RPUSH', K.INFLIGHT_LOG, agent)
  if n % {INFLIGHT_LOG_TRIM} == 0 then
    redis.call('LTRIM', K.INFLIGHT_LOG, -{INFLIGHT_LOG_KEEP}, -1)
  end
end
"""
