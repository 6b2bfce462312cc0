-- KEYS: heartbeats, statuses, quarantined_until, version
-- ARGV: agent, now
-- An agent's heartbeat; it also tells the agent whether the cluster gave it up for lost: the
-- `agent`'s beat at `now` into `heartbeats`; a quarantine (its status in `statuses`) whose time
-- in `quarantined_until` has come ends here, and the fleet `version` moves on.
-- Returns the status after the beat ('' when the agent is not registered).
local heartbeats, statuses, quarantined_until, version = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local agent, now = ARGV[1], ARGV[2]
redis.call('HSET', heartbeats, agent, now)
local status = redis.call('HGET', statuses, agent) or ''
if status == 'quarantined' then
  local untilts = tonumber(redis.call('HGET', quarantined_until, agent) or '0')
  if untilts <= tonumber(now) then
    redis.call('HSET', statuses, agent, 'active')
    redis.call('HDEL', quarantined_until, agent)
    redis.call('INCR', version)
    return 'active'
  end
end
return status
