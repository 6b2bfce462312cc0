-- KEYS: ledger, history, counters, stats, parked, events, outbox, outbox_msg
-- ARGV: agent, now, entry, inflight_prefix, task_id, maxlen, drop_outbox, expect_dispatch, slots,
--   lost_from, event...
-- Hand a task to an agent: a new dispatch number, so any older copy of its message (a kombu
-- restore, a queue of a lost agent) is recognised as stale; counted and announced in the same
-- step; with drop-outbox 1 the submission also leaves the client's outbox (a router that
-- publishes in-process drops it itself once the publish succeeded). ARGV: the agent, now, the
-- history entry (JSON), the in-flight key prefix, the task id, the events stream's cap,
-- drop_outbox ('1' or '0'), the expected dispatch ('': any; else only a task still `routed`
-- under that dispatch moves), the agent's slots ('': unchecked; else concurrency + prefetch: a
-- full agent takes nothing), the lost agent a `running` task may be moved off ('' none: only
-- while it still runs there, never a live agent's, which would run it twice), then the
-- `task.routed` event's field/value pairs. Returns {dispatch, previous state}, {0, state} if it
-- ended or is not as expected, {-1, state} when the agent has no free slot (or, checked with
-- the slots, no longer takes work).
local ledger, history, counters, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local parked, events, outbox, outbox_msg = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local state = redis.call('HGET', ledger, 'state')
if state ~= 'accepted' and state ~= 'routed' and state ~= 'recovering'
   and not (state == 'running' and ARGV[10] ~= '' and
            redis.call('HGET', ledger, 'agent') == ARGV[10]) then
  return {0, state or ''}
end
if ARGV[9] ~= '' then
  -- An agent that stopped taking work since the router's view of the fleet was read
  -- (quarantined, asleep, offline) has no free slot either.
  local status = redis.call('HGET', K.AGENT_STATUS, ARGV[1])
  if status and status ~= 'active' then return {-1, state} end
  local held = redis.call('SCARD', ARGV[4] .. ARGV[1])
  held = held - redis.call('SISMEMBER', ARGV[4] .. ARGV[1], ARGV[5])
  if held >= tonumber(ARGV[9]) then return {-1, state} end
end
if ARGV[8] ~= '' and (state ~= 'routed' or redis.call('HGET', ledger, 'dispatch') ~= ARGV[8])
then
  return {0, state}
end
local prev = redis.call('HGET', ledger, 'agent')
if prev then redis.call('SREM', ARGV[4] .. prev, ARGV[5]) end
local dispatch = redis.call('HINCRBY', ledger, 'dispatch', 1)
redis.call('HSET', ledger, 'state', 'routed', 'agent', ARGV[1], 'routed_at', ARGV[2],
           'deliveries', 0)
redis.call('HDEL', ledger, 'pid')
redis.call('RPUSH', history, ARGV[3])
redis.call('SADD', ARGV[4] .. ARGV[1], ARGV[5])
redis.call('HINCRBY', counters, 'routed', 1)
redis.call('ZREM', parked, ARGV[5])
if ARGV[7] == '1' then
  redis.call('ZREM', outbox, ARGV[5])
  redis.call('HDEL', outbox_msg, ARGV[5])
end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[6], '*', unpack(ARGV, 11))
return {dispatch, state}
