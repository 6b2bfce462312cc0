-- KEYS: block, bucket
-- ARGV: now, rate, burst, check_block
-- A submission's per-client limits in one round trip (run only when one of them is on):
-- `block` is the client's block key, `bucket` its token bucket; `rate` is per second (0: no
-- rate limit); `check_block` is "1" to check the block. The bucket is security.take_token's:
-- refill at `rate` up to `burst` since the last refill (never backwards), then take one token
-- if there is one.
-- Returns {"ok", ""}, {"blocked", until} or {"limited", seconds until a token is there}.
local block, bucket = KEYS[1], KEYS[2]
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local check_block = ARGV[4]
if check_block == '1' then
  local untl = redis.call('GET', block)
  if untl and tonumber(untl) > now then return {'blocked', untl} end
end
if rate <= 0 then return {'ok', ''} end
local b = redis.call('HMGET', bucket, 't', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
ts = math.max(ts, now)
local verdict, value = 'ok', ''
if tokens >= 1 then
  tokens = tokens - 1
else
  verdict, value = 'limited', string.format('%.17g', (1 - tokens) / rate)
end
redis.call('HSET', bucket, 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', bucket, math.ceil(burst / rate * 1000) + 1000)
return {verdict, value}
