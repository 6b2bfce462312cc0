-- KEYS: ledger, history, counters, plans, deadlines, parked, outbox, outbox_msg, dead_letters,
--   events
-- ARGV: state, entry, now, ttl, task_id, inflight, maxlen, fields[], event...
-- Record a terminal state once, with everything that goes with the end of a task: counted,
-- expired after the ledger TTL, out of recovery, parking, the outbox and its agent's in-flight
-- set, out of the backlog or the deferred set when it was waiting there, its concurrency
-- key's permit passed on (backlog.lua), into the dead-letter set when dead-lettered, announced.
-- KEYS: the ledger entry, its history, counters, recovery plans and deadlines, the parked set,
-- the outbox and its messages, the dead letters, the events stream. ARGV: the new state, its
-- history entry (JSON), now, the ledger TTL, the task id, its agent's in-flight set ('' for
-- none), the events stream's cap, the ledger fields to set (field/value items), then the
-- event's field/value pairs. Returns {1, previous state}, {0, state} if it had already ended, {-1, ''} if no entry.
local ledger, history, counters, plans = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local deadlines, parked, outbox = KEYS[5], KEYS[6], KEYS[7]
local outbox_msg, dead_letters, events = KEYS[8], KEYS[9], KEYS[10]
local state = redis.call('HGET', ledger, 'state')
if not state then return {-1, ''} end
if state == 'succeeded' or state == 'failed' or state == 'dead_lettered' then
  return {0, state}
end
local n = tonumber(ARGV[8])
redis.call('HSET', ledger, 'state', ARGV[1])
for i = 9, 8 + n, 2 do redis.call('HSET', ledger, ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', history, ARGV[2])
redis.call('HINCRBY', counters, ARGV[1], 1)
redis.call('EXPIRE', ledger, ARGV[4])
redis.call('EXPIRE', history, ARGV[4])
redis.call('HDEL', plans, ARGV[5])
redis.call('ZREM', deadlines, ARGV[5])
redis.call('ZREM', parked, ARGV[5])
redis.call('ZREM', outbox, ARGV[5])
redis.call('HDEL', outbox_msg, ARGV[5])
if ARGV[6] ~= '' then redis.call('SREM', ARGV[6], ARGV[5]) end
bl_remove(ARGV[5], ledger)
redis.call('ZREM', K.DEFERRED, ARGV[5])
ck_release(ARGV[5], ledger)
if ARGV[1] == 'dead_lettered' then redis.call('ZADD', dead_letters, ARGV[3], ARGV[5]) end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 9 + n))
return {1, state}
