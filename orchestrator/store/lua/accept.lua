-- KEYS: ledger, history, counters, events, outbox, outbox_msg
-- ARGV: submit_id, now, spec, type, entry, ttl, maxlen, task_id, outbox_message, event...
-- Accept a submission: the submit message `submit_id` creates the task `task_id`'s `ledger`
-- entry at `now` with its `spec` (JSON) and its `type`, `entry` (history JSON) onto its
-- `history`, both expiring after `ttl`; `outbox_message` ('' for none) is kept in the `outbox`
-- until routed; `maxlen` caps the `events` stream, `event` is the `task.submitted` event's
-- field/value pairs. Returns {"new"} or {"resume", state} (the same submit message redelivered
-- before it finished routing) or {"duplicate", state}.
local ledger, history, counters = KEYS[1], KEYS[2], KEYS[3]
local events, outbox, outbox_msg = KEYS[4], KEYS[5], KEYS[6]
local submit_id, now, spec, spec_type, entry = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, maxlen, task_id, outbox_message = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call('HSETNX', ledger, 'submit_id', submit_id) == 1 then
  redis.call('HSET', ledger, 'state', 'accepted', 'submitted_at', now, 'spec', spec,
             'type', spec_type, 'attempts', 0, 'dispatch', 0)
  redis.call('RPUSH', history, entry)
  redis.call('EXPIRE', ledger, ttl)
  redis.call('EXPIRE', history, ttl)
  redis.call('HINCRBY', counters, 'submitted', 1)
  if outbox_message ~= '' then
    redis.call('ZADD', outbox, now, task_id)
    redis.call('HSET', outbox_msg, task_id, outbox_message)
  end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 10))
  return {'new', 'accepted'}
end
local owner = redis.call('HGET', ledger, 'submit_id')
local state = redis.call('HGET', ledger, 'state') or ''
if owner == submit_id then return {'resume', state} end
return {'duplicate', state}
