-- Record a terminal state once, with everything that goes with the end of a task: counted,
-- expired after the ledger TTL, out of recovery, parking, the outbox and its agent's in-flight
-- set, out of the backlog or the deferred set when it was waiting there, its concurrency
-- key's permit passed on (backlog.lua), into the dead-letter set when dead-lettered, announced. KEYS = ledger, history,
-- counters, recovery plans, recovery deadlines, parked, outbox, outbox messages, dead letters,
-- events; ARGV = new state, history JSON, now, ttl, task id, in-flight key ('' for none),
-- events max length, n, then n field/value items for the ledger, then the event's field/value
-- pairs. Returns {1, previous state}, {0, state} if it had already ended, {-1, ''} if no entry.
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
bl_remove(ARGV[5], KEYS[1])
redis.call('ZREM', K.DEFERRED, ARGV[5])
ck_release(ARGV[5], KEYS[1])
if ARGV[1] == 'dead_lettered' then redis.call('ZADD', KEYS[9], ARGV[3], ARGV[5]) end
redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 9 + n))
return {1, state}
