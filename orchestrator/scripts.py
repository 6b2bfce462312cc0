"""The Lua scripts the state store runs: each is one atomic round trip to Redis.

Their keys come in as KEYS/ARGV from orchestrator.store; the pure Python twins they must agree
with (routing.wrr_step, breaker.record_success/record_failure) are tested against them.
"""

# Smooth weighted round-robin: ARGV = agent, weight, agent, weight, ... sorted by agent id
# (ties go to the first, as in routing.wrr_step). The whole state is rewritten, so agents that
# are no longer eligible drop out of it.
WRR_PICK = """
local cur = redis.call('HGETALL', KEYS[1])
local state = {}
for i = 1, #cur, 2 do state[cur[i]] = tonumber(cur[i + 1]) end
local total, best, bestv = 0, nil, nil
local new = {}
for i = 1, #ARGV, 2 do
  local peer, w = ARGV[i], tonumber(ARGV[i + 1])
  local c = (state[peer] or 0) + w
  new[#new + 1] = peer
  new[#new + 1] = c
  total = total + w
  if bestv == nil or c > bestv then best = i + 1; bestv = c end
end
new[best] = new[best] - total
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(new))
return new[best - 1]
"""

# The whole fleet in one round trip. KEYS = agents, heartbeats, agent_stats, agent_status;
# ARGV = circuit key prefix. Returns {agents, heartbeats, stats, statuses, {id, circuit}...}.
LOAD_FLEET = """
local agents = redis.call('HGETALL', KEYS[1])
local circuits = {}
for i = 1, #agents, 2 do
  circuits[#circuits + 1] = agents[i]
  circuits[#circuits + 1] = redis.call('HGETALL', ARGV[1] .. agents[i])
end
return {agents, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4]), circuits}
"""

# Accept a submission: KEYS = ledger, history, counters, events, outbox, outbox messages;
# ARGV = submit_id, now, spec JSON, type, history entry JSON, ttl, events max length, task id,
# the outbox message ('' for none: kept in the outbox until routed), then the
# `task.submitted` event's field/value pairs. Returns {"new"} or {"resume", state} (the
# same submit message redelivered before it finished routing) or {"duplicate", state}.
ACCEPT = """
if redis.call('HSETNX', KEYS[1], 'submit_id', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'accepted', 'submitted_at', ARGV[2], 'spec', ARGV[3],
             'type', ARGV[4], 'attempts', 0, 'dispatch', 0)
  redis.call('RPUSH', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'submitted', 1)
  if ARGV[9] ~= '' then
    redis.call('ZADD', KEYS[5], ARGV[2], ARGV[8])
    redis.call('HSET', KEYS[6], ARGV[8], ARGV[9])
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 10))
  return {'new', 'accepted'}
end
local owner = redis.call('HGET', KEYS[1], 'submit_id')
local state = redis.call('HGET', KEYS[1], 'state') or ''
if owner == ARGV[1] then return {'resume', state} end
return {'duplicate', state}
"""

# Move a ledger entry from one of the allowed states to another.
# KEYS = ledger, history; ARGV = new state, history JSON, n, allowed..., then field/value pairs.
TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, ''} end
local n = tonumber(ARGV[3])
local ok = (n == 0)
for i = 4, 3 + n do if ARGV[i] == state then ok = true end end
if not ok then return {0, state} end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 4 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[2])
return {1, state}
"""

# Hand a task to an agent: a new dispatch number, so any older copy of its message (a kombu
# restore, a queue of a lost agent) is recognised as stale; counted and announced in the same
# step; with drop-outbox 1 the submission also leaves the client's outbox (a router that
# publishes in-process drops it itself once the publish succeeded). KEYS = ledger, history,
# counters, agent_stats, parked, events, outbox, outbox messages; ARGV = agent, now, history
# JSON, in-flight key prefix, task id, events max length, drop-outbox, expected dispatch ('':
# any; else only a task still `routed` under that dispatch moves), then the `task.routed`
# event's field/value pairs. Returns {dispatch, previous state}, or {0, state} if it ended or
# is not as expected.
ROUTE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'accepted' and state ~= 'parked' and state ~= 'routed' and state ~= 'running'
   and state ~= 'recovering' then
  return {0, state or ''}
end
if ARGV[8] ~= '' and (state ~= 'routed' or redis.call('HGET', KEYS[1], 'dispatch') ~= ARGV[8])
then
  return {0, state}
end
local prev = redis.call('HGET', KEYS[1], 'agent')
if prev then redis.call('SREM', ARGV[4] .. prev, ARGV[5]) end
local dispatch = redis.call('HINCRBY', KEYS[1], 'dispatch', 1)
redis.call('HSET', KEYS[1], 'state', 'routed', 'agent', ARGV[1], 'routed_at', ARGV[2],
           'deliveries', 0)
redis.call('HDEL', KEYS[1], 'pid')
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('SADD', ARGV[4] .. ARGV[1], ARGV[5])
redis.call('HINCRBY', KEYS[3], 'routed', 1)
redis.call('HINCRBY', KEYS[4], ARGV[1] .. '|inflight', 1)
redis.call('ZREM', KEYS[5], ARGV[5])
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[7], ARGV[5])
  redis.call('HDEL', KEYS[8], ARGV[5])
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', unpack(ARGV, 9))
return {dispatch, state}
"""

# Record a terminal state once, with everything that goes with the end of a task: counted,
# expired after the ledger TTL, out of recovery, parking, the outbox and its agent's in-flight
# set, into the dead-letter set when dead-lettered, announced. KEYS = ledger, history,
# counters, recovery plans, recovery deadlines, parked, outbox, outbox messages, dead letters,
# events; ARGV = new state, history JSON, now, ttl, task id, in-flight key ('' for none),
# events max length, n, then n field/value items for the ledger, then the event's field/value
# pairs. Returns {1, previous state}, {0, state} if it had already ended, {-1, ''} if no entry.
FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, ''} end
if state == 'succeeded' or state == 'failed' or state == 'dead_lettered' then
  return {0, state}
end
local n = tonumber(ARGV[8])
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 9, 8 + n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[5])
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('ZREM', KEYS[6], ARGV[5])
redis.call('ZREM', KEYS[7], ARGV[5])
redis.call('HDEL', KEYS[8], ARGV[5])
if ARGV[6] ~= '' then redis.call('SREM', ARGV[6], ARGV[5]) end
if ARGV[1] == 'dead_lettered' then redis.call('ZADD', KEYS[9], ARGV[3], ARGV[5]) end
redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 9 + n))
return {1, state}
"""

# Add counts to the telemetry buckets. KEYS = minute bucket, hour bucket, and optionally the
# cumulative hash; ARGV = minute TTL, hour TTL, then field/count pairs.
TELEMETRY_ADD = """
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  if KEYS[3] then redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Start running a delivered copy. KEYS = ledger, history; ARGV = agent, now, history JSON,
# dispatch, pid, max deliveries, force. Returns {attempt, previous state, submitted_at} to run,
# or:
#   {-1, state}  already ended: do not run
#   {-2, state}  a stale copy (an older dispatch): do not run
#   {-3, n}      delivered more than max deliveries times: poison
#   {-4, pid}    this agent's child `pid` was running it: the caller checks whether that child
#                is alive (a restored copy of a running task) or died (worker lost), then
#                calls again with force=1 to run it
#   {-5, ''}     no ledger entry (expired, or never accepted)
BEGIN_ATTEMPT = """
local f = redis.call('HMGET', KEYS[1], 'state', 'dispatch', 'agent', 'pid', 'submitted_at')
local state, dispatch, agent, pid = f[1], tonumber(f[2] or '0'), f[3], f[4]
if not state then return {-5, ''} end
if state == 'succeeded' or state == 'failed' or state == 'dead_lettered' then
  return {-1, state}
end
if tonumber(ARGV[4]) < dispatch then return {-2, state} end
if state == 'running' and agent == ARGV[1] and pid and ARGV[7] ~= '1' then return {-4, pid} end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[6]) then return {-3, tostring(deliveries - 1)} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'agent', ARGV[1], 'started_at', ARGV[2],
           'pid', ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[3])
return {attempts, state, f[5] or ''}
"""

# One outcome in an agent's stats. KEYS = stats hash; ARGV = agent, ok (1/0), latency ms,
# success alpha, latency alpha, settle (1: the task left the agent).
RECORD_OUTCOME = """
local a = ARGV[1]
local ok = tonumber(ARGV[2])
local lat = tonumber(ARGV[3])
if ok == 1 then redis.call('HINCRBY', KEYS[1], a .. '|ok', 1)
else redis.call('HINCRBY', KEYS[1], a .. '|fail', 1) end
local sr = tonumber(redis.call('HGET', KEYS[1], a .. '|sr') or '1')
sr = sr + tonumber(ARGV[4]) * (ok - sr)
redis.call('HSET', KEYS[1], a .. '|sr', tostring(sr))
local old = redis.call('HGET', KEYS[1], a .. '|lat')
if old then lat = tonumber(old) + tonumber(ARGV[5]) * (lat - tonumber(old)) end
redis.call('HSET', KEYS[1], a .. '|lat', tostring(lat))
if ARGV[6] == '1' then
  local inflight = redis.call('HINCRBY', KEYS[1], a .. '|inflight', -1)
  if inflight < 0 then redis.call('HSET', KEYS[1], a .. '|inflight', 0) end
end
return 1
"""

# breaker.record_success / record_failure, atomically. KEYS = circuit hash; ARGV = ok (1/0),
# now, failure threshold, successes to close, window size, minimum calls, failure-rate
# threshold. Returns the transition ('opened', 'closed') or ''.
RECORD_CIRCUIT = """
local h = redis.call('HGETALL', KEYS[1])
local s = {}
for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
local state = s['state'] or 'closed'
if state == '' then state = 'closed' end
local ok = ARGV[1] == '1'
local function open()
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2], 'consecutive_failures', 0,
             'half_open_calls', 0, 'half_open_successes', 0, 'outcomes', '',
             'half_opened_at', '')
  return 'opened'
end
if state == 'closed' then
  local outcomes = (s['outcomes'] or '') .. (ok and 'S' or 'F')
  local window = tonumber(ARGV[5])
  if #outcomes > window then outcomes = string.sub(outcomes, #outcomes - window + 1) end
  if ok then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'consecutive_failures', 0,
               'outcomes', outcomes)
    return ''
  end
  local failures = tonumber(s['consecutive_failures'] or '0') + 1
  local _, nf = string.gsub(outcomes, 'F', '')
  if failures >= tonumber(ARGV[3]) or
     (#outcomes >= tonumber(ARGV[6]) and nf / #outcomes >= tonumber(ARGV[7])) then
    return open()
  end
  redis.call('HSET', KEYS[1], 'state', 'closed', 'consecutive_failures', failures,
             'outcomes', outcomes)
  return ''
elseif state == 'half_open' then
  if not ok then return open() end
  local successes = tonumber(s['half_open_successes'] or '0') + 1
  if successes >= tonumber(ARGV[4]) then
    redis.call('DEL', KEYS[1])
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'half_open_successes', successes)
end
return ''
"""

# An agent's heartbeat; it also tells the agent whether the cluster gave it up for lost.
# KEYS = heartbeats, agent_status, quarantined_until; ARGV = agent, now.
# Returns the status after the beat ('' when the agent is not registered).
HEARTBEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local status = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if status == 'quarantined' then
  local untilts = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if untilts <= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[2], ARGV[1], 'active')
    redis.call('HDEL', KEYS[3], ARGV[1])
    return 'active'
  end
end
return status
"""

# Tasks of one agent still `routed` since before a moment whose message is nowhere: not in
# the agent's queue lists, not among kombu's unacknowledged deliveries (kombu pops a message
# before recording it as unacknowledged, and a Redis restart from its AOF can keep the first
# and lose the second). Each message is parsed once for its header id. KEYS = in-flight set,
# unacked hash, the queue's lists; ARGV = ledger key prefix, routed before. Returns
# {task id, dispatch, ...}.
VANISHED = """
local old = {}
local any = false
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'state', 'routed_at', 'dispatch')
  if f[1] == 'routed' and tonumber(f[2] or '0') < tonumber(ARGV[2]) then
    old[id] = f[3]
    any = true
  end
end
if not any then return {} end
local function seen(raw)
  local id = string.match(raw, '"id": "([^"]*)"')
  if id then old[id] = nil end
end
for _, raw in ipairs(redis.call('HVALS', KEYS[2])) do seen(raw) end
for i = 3, #KEYS do
  for _, raw in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do seen(raw) end
end
local out = {}
for id, dispatch in pairs(old) do
  out[#out + 1] = id
  out[#out + 1] = dispatch
end
return out
"""

# Compare-and-delete: release a lock only if it still holds our token.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _as_function(name: str, body: str) -> str:
    """A script's body as a local Lua function of its own KEYS and ARGV."""
    return f"local function {name}(KEYS, ARGV)\n{body.strip()}\nend\n"


# RECORD_OUTCOME and RECORD_CIRCUIT in one round trip (the agent's hot path), their texts
# unchanged. KEYS = stats hash, circuit hash; ARGV = RECORD_OUTCOME's six, then
# RECORD_CIRCUIT's seven. Returns RECORD_CIRCUIT's transition.
RECORD_OUTCOME_AND_CIRCUIT = (
    _as_function("outcome", RECORD_OUTCOME)
    + _as_function("circuit", RECORD_CIRCUIT)
    + """
outcome({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]})
return circuit({KEYS[2]}, {ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]})
"""
)


# How a composed script splits its ARGV: each part is a count, then that many items.
_SECTIONS = """
local function section(from)
  local n = tonumber(ARGV[from])
  local out = {}
  for i = 1, n do out[i] = ARGV[from + i] end
  return out, from + n + 1
end
"""

# The end of a handler run on an agent, in one round trip (the agent's hot path): the agent's
# stats, its breaker (when the circuit part is not empty), the ledger's terminal state, and,
# when this run is the one that ended the task, its telemetry. KEYS = stats hash, circuit
# hash, FINISH's ten keys, the three telemetry keys; ARGV = four sections (RECORD_OUTCOME's
# six, RECORD_CIRCUIT's seven or none, FINISH's, TELEMETRY_ADD's). Returns {FINISH's two
# items, RECORD_CIRCUIT's transition}.
SETTLE_RUN = (
    _as_function("outcome", RECORD_OUTCOME)
    + _as_function("circuit", RECORD_CIRCUIT)
    + _as_function("finish", FINISH)
    + _as_function("count", TELEMETRY_ADD)
    + _SECTIONS
    + """
local stats, at = section(1)
local breaker, at2 = section(at)
local ending, at3 = section(at2)
local counts = section(at3)
outcome({KEYS[1]}, stats)
local transition = ''
if #breaker > 0 then transition = circuit({KEYS[2]}, breaker) end
local done = finish({KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
                     KEYS[11], KEYS[12]}, ending)
if done[1] == 1 and #counts > 2 then count({KEYS[13], KEYS[14], KEYS[15]}, counts) end
return {done[1], done[2], transition}
"""
)

# A client's submission in one atomic step: ACCEPT and ROUTE (to an agent chosen beforehand)
# and the broker message's own Redis pushes (built for dispatch 1, a new task's first). A task
# that is not new changes nothing and nothing is pushed. KEYS = ACCEPT's six, ROUTE's eight,
# then one list key per push; ARGV = three sections (ACCEPT's, ROUTE's, the payloads).
# Returns {"routed", "1"} or ACCEPT's {"resume" | "duplicate", state}.
ACCEPT_AND_ROUTE = (
    _as_function("accept", ACCEPT)
    + _as_function("route", ROUTE)
    + _SECTIONS
    + """
local accepting, at = section(1)
local routing, at2 = section(at)
local payloads = section(at2)
local got = accept({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, accepting)
if got[1] ~= 'new' then return got end
-- ACCEPT has just set the new task's dispatch to 0, so ROUTE makes it 1, as in the message.
route({KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]}, routing)
for i = 1, #payloads do redis.call('LPUSH', KEYS[14 + i], payloads[i]) end
return {'routed', '1'}
"""
)

# A message refused at a worker's edge (orchestrator.gate), kept for inspection: KEYS = poison
# zset, poison detail hash, counters, events; ARGV = id, ts, detail JSON, how many to keep,
# events maxlen, then the event's flat fields. The oldest beyond `keep` are forgotten.
POISON_RECORD = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'poison', 1)
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
return excess
"""

# A submission's per-client limits in one round trip (run only when one of them is on):
# KEYS = the client's block key, its token bucket; ARGV = now, rate per second (0: no rate
# limit), burst, "1" to check the block. The bucket is security.take_token's: refill at `rate`
# up to `burst` since the last refill (never backwards), then take one token if there is one.
# Returns {"ok", ""}, {"blocked", until} or {"limited", seconds until a token is there}.
ADMIT_CLIENT = """
local now = tonumber(ARGV[1])
if ARGV[4] == '1' then
  local untl = redis.call('GET', KEYS[1])
  if untl and tonumber(untl) > now then return {'blocked', untl} end
end
local rate = tonumber(ARGV[2])
if rate <= 0 then return {'ok', ''} end
local burst = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[2], 't', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
ts = math.max(ts, now)
local verdict, value = 'ok', ''
if tokens >= 1 then
  tokens = tokens - 1
else
  verdict, value = 'limited', string.format('%.17g', (1 - tokens) / rate)
end
redis.call('HSET', KEYS[2], 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 1000)
return {verdict, value}
"""
