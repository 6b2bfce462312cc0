-- KEYS: slot
-- ARGV: cx.now, cx.weights, cx.estimate, cx.prefetch, cx.timeout, cx.maxlen, task_id, state,
--   capability_set, priority, client, concurrency_key, limit, source, expect_dispatch, front,
--   entry, event_type, event_data, avoid, lost_from
-- Put a task into the backlog (backlog.enqueue): a new one no agent had a free slot for
-- (from accepted), one moved off an agent (from routed: its older copies become stale under a
-- new dispatch number; from running only when its agent was lost), one recovery hands back,
-- or one whose countdown came due. `cx` is the context (6 items, backlog.context); the task
-- `task_id` goes into the new `state` (queued | parked) under its `capability_set`, `priority`,
-- `client` and `concurrency_key` ('' none) with its `limit`; `source` is where it comes from
-- (new | move | lost | due | restore: any unended state), `expect_dispatch` the dispatch it must
-- still be at ('' any), `front` ('1') puts it ahead of its client's other tasks, `entry` is its
-- history JSON, `event_type` ('' none) and `event_data` (JSON) the event announcing it, `avoid`
-- the agents it failed on (comma-separated; '' none), `lost_from` the lost agent a `running`
-- task is moved off (it moves only while it still runs there: a second mover must not take it
-- off its new agent).
-- Returns {1, previous state} or {0, state} when the task is not in a state to move.
local cx = context(ARGV)
local now = ARGV[1]  -- cx.now as given, for the event's `ts`
local id, state, capability_set, priority = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local client, concurrency_key, limit, from = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local expect_dispatch, front, entry = ARGV[15], ARGV[16], ARGV[17]
local event_type, event_data, avoid, lost_from = ARGV[18], ARGV[19], ARGV[20], ARGV[21]
local l = ledger(id)
local f = redis.call('HMGET', l, 'state', 'dispatch', 'agent')
local prev = f[1]
local restoring = from == 'restore' and (prev == 'queued' or prev == 'parked')
local ok = prev == 'accepted' or prev == 'recovering'
  or (prev == 'routed' and from ~= 'new')
  or (prev == 'running' and from == 'lost' and f[3] == lost_from)
  or (prev == 'queued' and from == 'due' and redis.call('HEXISTS', l, 'bl') == 0)
  or (from == 'restore' and prev and prev ~= 'succeeded' and prev ~= 'failed'
      and prev ~= 'dead_lettered')
if not ok then return {0, prev or ''} end
if expect_dispatch ~= '' and f[2] ~= expect_dispatch then return {0, prev} end
if f[3] and redis.call('SREM', K.INFLIGHT .. f[3], id) == 1 then inflight_changed(f[3]) end
bl_remove(id, l)  -- a restored task that was waiting: out of where it waited, then back in
if prev == 'routed' or prev == 'running' then redis.call('HINCRBY', l, 'dispatch', 1) end
redis.call('HDEL', l, 'pid', 'due')
redis.call('ZREM', K.DEFERRED, id)
-- In the backlog it is safe: a submission kept in the client's outbox leaves it in this same
-- step (apart, a failover could keep the one and lose the other).
redis.call('ZREM', K.OUTBOX, id)
redis.call('HDEL', K.OUTBOX_MSG, id)
enqueue(cx, id, state, capability_set, priority, client, concurrency_key, limit, front == '1',
        avoid, restoring)
if restoring then return {1, prev} end  -- back where it waited, as it was
redis.call('RPUSH', history(id), entry)
redis.call('HINCRBY', K.COUNTERS, state, 1)
if state == 'parked' then redis.call('ZADD', K.PARKED, 'NX', cx.now, id) end
if event_type ~= '' then
  redis.call('XADD', events_key(event_type), 'MAXLEN', '~', cx.maxlen, '*', 'type', event_type,
             'ts', now, 'severity', 'info', 'source', 'router', 'data', event_data)
end
return {1, prev}
