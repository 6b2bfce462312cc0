-- KEYS: poison, details, counters, events
-- ARGV: id, ts, detail, keep, maxlen, event...
-- A message refused at a worker's edge (orchestrator.runtime.gate), kept for inspection: KEYS =
-- poison zset, poison detail hash, counters, events; ARGV = id, ts, detail JSON, how many to keep,
-- events maxlen, then the event's flat fields. The oldest beyond `keep` are forgotten.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'poison', 1)
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
return excess
