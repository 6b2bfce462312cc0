-- KEYS: ledger, history
-- ARGV: agent, now, entry, dispatch, pid, max_deliveries, force
-- Start running a delivered copy: the `agent`'s child `pid` runs the copy of dispatch number
-- `dispatch` from `now`, `entry` (history JSON) onto the task's `history`; `force` ('1') runs it
-- although the ledger says this agent's child was running it. Returns {attempt, previous state,
-- submitted_at} to run, or:
--   {-1, state}  already ended: do not run
--   {-2, state}  a stale copy (an older dispatch): do not run
--   {-3, n}      delivered more than max_deliveries times: poison
--   {-4, pid}    this agent's child `pid` was running it: the caller checks whether that child
--                is alive (a restored copy of a running task) or died (worker lost), then
--                calls again with force=1 to run it
--   {-5, ''}     no ledger entry (expired, or never accepted)
local ledger, history = KEYS[1], KEYS[2]
local agent, now, entry = ARGV[1], ARGV[2], ARGV[3]
local dispatch, pid, max_deliveries, force = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]
local f = redis.call('HMGET', ledger, 'state', 'dispatch', 'agent', 'pid', 'submitted_at')
-- The ledger's: the latest dispatch, and the agent and child that last began running it.
local state, latest, holder, holder_pid = f[1], tonumber(f[2] or '0'), f[3], f[4]
if not state then return {-5, ''} end
if state == 'succeeded' or state == 'failed' or state == 'dead_lettered' then
  return {-1, state}
end
if dispatch < latest then return {-2, state} end
if state == 'running' and holder == agent and holder_pid and force ~= '1' then
  return {-4, holder_pid}
end
local deliveries = redis.call('HINCRBY', ledger, 'deliveries', 1)
if deliveries > max_deliveries then return {-3, tostring(deliveries - 1)} end
local attempts = redis.call('HINCRBY', ledger, 'attempts', 1)
redis.call('HSET', ledger, 'state', 'running', 'agent', agent, 'started_at', now, 'pid', pid)
redis.call('RPUSH', history, entry)
return {attempts, state, f[5] or ''}
