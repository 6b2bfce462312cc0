-- KEYS: minute, hour, total?
-- ARGV: minute_ttl, hour_ttl, counts...
-- Add counts to the telemetry buckets. KEYS = minute bucket, hour bucket, and optionally the
-- cumulative hash; ARGV = minute TTL, hour TTL, then field/count pairs.
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  if KEYS[3] then redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
