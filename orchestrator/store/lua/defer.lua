-- KEYS: slot
-- ARGV: task_id, due, now, entry, prefer
-- Hold a task until `due` (a countdown or a retry's backoff longer than the broker could keep
-- a message unacknowledged): state queued, in the deferred set, out of every agent's
-- in-flight set; a dispatch sweep releases it into the backlog when due (scripts.ENQUEUE,
-- from due). `entry` is the history JSON, `prefer` the agent to try first ('' none).
-- Returns {1, previous state} or {0, state}.
local id, due, now, entry, prefer = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local l = ledger(id)
local f = redis.call('HMGET', l, 'state', 'agent')
local prev = f[1]
if prev ~= 'accepted' and prev ~= 'recovering' and prev ~= 'routed' then return {0, prev or ''} end
if f[2] and redis.call('SREM', K.INFLIGHT .. f[2], id) == 1 then inflight_changed(f[2]) end
if prev == 'routed' then redis.call('HINCRBY', l, 'dispatch', 1) end
redis.call('HSET', l, 'state', 'queued', 'due', due, 'queued_at', now)
if prefer ~= '' then redis.call('HSET', l, 'prefer', prefer) end
redis.call('HDEL', l, 'pid')
redis.call('ZADD', K.DEFERRED, due, id)
redis.call('ZREM', K.OUTBOX, id)
redis.call('HDEL', K.OUTBOX_MSG, id)
redis.call('RPUSH', history(id), entry)
return {1, prev}
