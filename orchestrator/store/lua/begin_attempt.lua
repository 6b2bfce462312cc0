-- KEYS: ledger, history
-- ARGV: agent, now, entry, dispatch, pid, max_deliveries, force
-- Start running a delivered copy. KEYS = ledger, history; ARGV = agent, now, history JSON,
-- dispatch, pid, max deliveries, force. Returns {attempt, previous state, submitted_at} to run,
-- or:
--   {-1, state}  already ended: do not run
--   {-2, state}  a stale copy (an older dispatch): do not run
--   {-3, n}      delivered more than max deliveries times: poison
--   {-4, pid}    this agent's child `pid` was running it: the caller checks whether that child
--                is alive (a restored copy of a running task) or died (worker lost), then
--                calls again with force=1 to run it
--   {-5, ''}     no ledger entry (expired, or never accepted)
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
