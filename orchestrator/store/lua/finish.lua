-- KEYS: ledger, history, counters, plans, deadlines, parked, outbox, outbox_msg, dead_letters,
--   events
-- ARGV: state, entry, now, ttl, task_id, inflight, maxlen, fields[], event...
-- Record a terminal state once, with everything that goes with the end of a task: counted,
-- expired after the ledger TTL, out of recovery, parking, the outbox and its agent's in-flight
-- set, out of the backlog or the deferred set when it was waiting there, its concurrency
-- key's permit passed on (backlog.lua), into the dead-letter set when dead-lettered, announced.
-- The task `task_id`'s `ledger` entry goes to the new `state` at `now`, `entry` (its history
-- JSON) onto its `history`; both expire after `ttl`; `inflight` is its agent's in-flight set
-- ('' for none), `maxlen` the `events` stream's cap, `fields` the ledger fields to set
-- (field/value items) and `event` the event's field/value pairs. Returns {1, previous state},
-- {0, state} if it had already ended, {-1, ''} if no entry.
local ledger, history, counters, plans = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local deadlines, parked, outbox = KEYS[5], KEYS[6], KEYS[7]
local outbox_msg, dead_letters, events = KEYS[8], KEYS[9], KEYS[10]
local new_state, entry, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local task_id, inflight, maxlen = ARGV[5], ARGV[6], ARGV[7]
local state = redis.call('HGET', ledger, 'state')
if not state then return {-1, ''} end
if state == 'succeeded' or state == 'failed' or state == 'dead_lettered' then
  return {0, state}
end
local n = tonumber(ARGV[8])  -- fields: the count, then its items
redis.call('HSET', ledger, 'state', new_state)
for i = 9, 8 + n, 2 do redis.call('HSET', ledger, ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', history, entry)
redis.call('HINCRBY', counters, new_state, 1)
redis.call('EXPIRE', ledger, ttl)
redis.call('EXPIRE', history, ttl)
redis.call('HDEL', plans, task_id)
redis.call('HDEL', ledger, 'pm', 'pk', 'ps', 'pq', 'ph')  -- a message kept while it waited
redis.call('ZREM', deadlines, task_id)
redis.call('ZREM', parked, task_id)
redis.call('ZREM', outbox, task_id)
redis.call('HDEL', outbox_msg, task_id)
if inflight ~= '' and redis.call('SREM', inflight, task_id) == 1 then
  inflight_changed(string.sub(inflight, #K.INFLIGHT + 1))
end
bl_remove(task_id, ledger)
redis.call('ZREM', K.DEFERRED, task_id)
ck_release(task_id, ledger)
if new_state == 'dead_lettered' then redis.call('ZADD', dead_letters, now, task_id) end
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 9 + n))
return {1, state}
