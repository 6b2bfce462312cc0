-- KEYS: ledger, history, counters, stats, parked, events, outbox, outbox_msg
-- ARGV: agent, now, entry, inflight_prefix, task_id, maxlen, drop_outbox, expect_dispatch, slots,
--   lost_from, event...
-- Hand a task to an agent: a new dispatch number, so any older copy of its message (a kombu
-- restore, a queue of a lost agent) is recognised as stale; counted and announced in the same
-- step; with `drop_outbox` 1 the submission also leaves the client's outbox (a router that
-- publishes in-process drops it itself once the publish succeeded). `agent` takes the task
-- `task_id` at `now`, `entry` (history JSON) onto its `history`; an agent's in-flight set is its
-- id after `inflight_prefix`; `maxlen` caps the `events` stream;
-- `expect_dispatch` ('': any; else only a task still `routed` under that dispatch moves), the
-- agent's `slots` ('': unchecked; else concurrency + prefetch: a full agent takes nothing),
-- `lost_from` the lost agent a `running` task may be moved off ('' none: only while it still
-- runs there, never a live agent's, which would run it twice), then `event`, the
-- `task.routed` event's field/value pairs (ARGV[11..]). Returns {dispatch, previous state},
-- {0, state} if it ended or is not as expected, {-1, state} when the agent has no free slot
-- (or, checked with the slots, no longer takes work).
local ledger, history, counters, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local parked, events, outbox, outbox_msg = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local agent, now, entry, inflight_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local task_id, maxlen, drop_outbox, expect_dispatch = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local slots, lost_from = ARGV[9], ARGV[10]
local state = redis.call('HGET', ledger, 'state')
if state ~= 'accepted' and state ~= 'routed' and state ~= 'recovering'
   and not (state == 'running' and lost_from ~= '' and
            redis.call('HGET', ledger, 'agent') == lost_from) then
  return {0, state or ''}
end
if slots ~= '' then
  -- An agent that stopped taking work since the router's view of the fleet was read
  -- (quarantined, asleep, offline) has no free slot either.
  local status = redis.call('HGET', K.AGENT_STATUS, agent)
  if status and status ~= 'active' then return {-1, state} end
  local held = redis.call('SCARD', inflight_prefix .. agent)
  held = held - redis.call('SISMEMBER', inflight_prefix .. agent, task_id)
  if held >= tonumber(slots) then return {-1, state} end
end
if expect_dispatch ~= ''
   and (state ~= 'routed' or redis.call('HGET', ledger, 'dispatch') ~= expect_dispatch) then
  return {0, state}
end
local prev = redis.call('HGET', ledger, 'agent')
if prev and redis.call('SREM', inflight_prefix .. prev, task_id) == 1 then
  inflight_changed(prev)
end
local dispatch = redis.call('HINCRBY', ledger, 'dispatch', 1)
redis.call('HSET', ledger, 'state', 'routed', 'agent', agent, 'routed_at', now,
           'deliveries', 0)
redis.call('HDEL', ledger, 'pid')
redis.call('RPUSH', history, entry)
if redis.call('SADD', inflight_prefix .. agent, task_id) == 1 then inflight_changed(agent) end
redis.call('HINCRBY', counters, 'routed', 1)
redis.call('ZREM', parked, task_id)
if drop_outbox == '1' then
  redis.call('ZREM', outbox, task_id)
  redis.call('HDEL', outbox_msg, task_id)
end
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 11))
return {dispatch, state}
