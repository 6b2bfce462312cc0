-- KEYS: ledger, history, counters, events, outbox, outbox_msg
-- ARGV: submit_id, now, spec, type, entry, ttl, maxlen, task_id, outbox_message, event...
-- Accept a submission. ARGV: the submit message id, now, the spec JSON, its type, the history
-- entry (JSON), the ledger TTL, the events stream's cap, the task id, the outbox message ('' for
-- none: kept in the outbox until routed), then the `task.submitted` event's field/value pairs. Returns {"new"} or {"resume", state} (the
-- same submit message redelivered before it finished routing) or {"duplicate", state}.
local ledger, history, counters = KEYS[1], KEYS[2], KEYS[3]
local events, outbox, outbox_msg = KEYS[4], KEYS[5], KEYS[6]
if redis.call('HSETNX', ledger, 'submit_id', ARGV[1]) == 1 then
  redis.call('HSET', ledger, 'state', 'accepted', 'submitted_at', ARGV[2], 'spec', ARGV[3],
             'type', ARGV[4], 'attempts', 0, 'dispatch', 0)
  redis.call('RPUSH', history, ARGV[5])
  redis.call('EXPIRE', ledger, ARGV[6])
  redis.call('EXPIRE', history, ARGV[6])
  redis.call('HINCRBY', counters, 'submitted', 1)
  if ARGV[9] ~= '' then
    redis.call('ZADD', outbox, ARGV[2], ARGV[8])
    redis.call('HSET', outbox_msg, ARGV[8], ARGV[9])
  end
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 10))
  return {'new', 'accepted'}
end
local owner = redis.call('HGET', ledger, 'submit_id')
local state = redis.call('HGET', ledger, 'state') or ''
if owner == ARGV[1] then return {'resume', state} end
return {'duplicate', state}
