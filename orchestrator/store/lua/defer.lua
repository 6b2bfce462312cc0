-- KEYS: (none)
-- ARGV: task_id, due, now, entry, prefer
-- Hold a task until `due` (a countdown or a retry's backoff longer than the broker could keep
-- a message unacknowledged): state queued, in the deferred set, out of every agent's
-- in-flight set; a dispatch sweep releases it into the backlog when due (scripts.ENQUEUE,
-- from due). ARGV = task id, due, now, history JSON, prefer ('' none: the agent to try first).
-- Returns {1, previous state} or {0, state}.
local id = ARGV[1]
local l = ledger(id)
local f = redis.call('HMGET', l, 'state', 'agent')
local prev = f[1]
if prev ~= 'accepted' and prev ~= 'recovering' and prev ~= 'routed' then return {0, prev or ''} end
if f[2] then redis.call('SREM', K.INFLIGHT .. f[2], id) end
if prev == 'routed' then redis.call('HINCRBY', l, 'dispatch', 1) end
redis.call('HSET', l, 'state', 'queued', 'due', ARGV[2], 'queued_at', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', l, 'prefer', ARGV[5]) end
redis.call('HDEL', l, 'pid')
redis.call('ZADD', K.DEFERRED, ARGV[2], id)
redis.call('ZREM', K.OUTBOX, id)
redis.call('HDEL', K.OUTBOX_MSG, id)
redis.call('RPUSH', history(id), ARGV[4])
return {1, prev}
