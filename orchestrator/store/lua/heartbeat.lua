-- KEYS: heartbeats, statuses, quarantined_until, version
-- ARGV: agent, now
-- An agent's heartbeat; it also tells the agent whether the cluster gave it up for lost.
-- KEYS = heartbeats, agent_status, quarantined_until, fleet version; ARGV = agent, now.
-- Returns the status after the beat ('' when the agent is not registered).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local status = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if status == 'quarantined' then
  local untilts = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if untilts <= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[2], ARGV[1], 'active')
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('INCR', KEYS[4])
    return 'active'
  end
end
return status
