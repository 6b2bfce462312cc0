-- KEYS: minute, hour, total?
-- ARGV: minute_ttl, hour_ttl, counts...
-- Add counts to the telemetry buckets: the `minute` and `hour` buckets, and the cumulative
-- hash `total` when given; `counts` are field/count pairs (ARGV[3..]). The `minute` and `hour`
-- buckets expire after `minute_ttl` and `hour_ttl`.
local minute, hour, total = KEYS[1], KEYS[2], KEYS[3]
local minute_ttl, hour_ttl = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', minute, ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', hour, ARGV[i], ARGV[i + 1])
  if total then redis.call('HINCRBY', total, ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', minute, minute_ttl)
redis.call('EXPIRE', hour, hour_ttl)
return 1
