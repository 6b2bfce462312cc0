-- KEYS: poison, details, counters, events
-- ARGV: id, ts, detail, keep, maxlen, event...
-- A message refused at a worker's edge (orchestrator.runtime.gate), kept for inspection:
-- `poison` is the zset of refused messages by time, `details` their hash (`detail` is the
-- JSON kept), `event` the flat fields of the event announcing it (ARGV[6..]). The oldest
-- beyond `keep` are forgotten.
local poison, details, counters, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ts, detail, keep, maxlen = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
redis.call('ZADD', poison, ts, id)
redis.call('HSET', details, id, detail)
redis.call('HINCRBY', counters, 'poison', 1)
local excess = redis.call('ZCARD', poison) - keep
if excess > 0 then
  local old = redis.call('ZRANGE', poison, 0, excess - 1)
  redis.call('ZREM', poison, unpack(old))
  redis.call('HDEL', details, unpack(old))
end
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 6))
return excess
