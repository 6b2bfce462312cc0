-- Accept a submission: KEYS = ledger, history, counters, events, outbox, outbox messages;
-- ARGV = submit_id, now, spec JSON, type, history entry JSON, ttl, events max length, task id,
-- the outbox message ('' for none: kept in the outbox until routed), then the
-- `task.submitted` event's field/value pairs. Returns {"new"} or {"resume", state} (the
-- same submit message redelivered before it finished routing) or {"duplicate", state}.
if redis.call('HSETNX', KEYS[1], 'submit_id', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'accepted', 'submitted_at', ARGV[2], 'spec', ARGV[3],
             'type', ARGV[4], 'attempts', 0, 'dispatch', 0)
  redis.call('RPUSH', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'submitted', 1)
  if ARGV[9] ~= '' then
    redis.call('ZADD', KEYS[5], ARGV[2], ARGV[8])
    redis.call('HSET', KEYS[6], ARGV[8], ARGV[9])
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 10))
  return {'new', 'accepted'}
end
local owner = redis.call('HGET', KEYS[1], 'submit_id')
local state = redis.call('HGET', KEYS[1], 'state') or ''
if owner == ARGV[1] then return {'resume', state} end
return {'duplicate', state}
