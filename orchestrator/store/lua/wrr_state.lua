-- KEYS: state
-- ARGV: (none)
-- The round-robin state wrr_pick keeps, readable: the `state` hash. Returns {the peers'
-- JSON ids, their `current` values} ({false, {}} when there is none).
local state = KEYS[1]
local stored = redis.call('HMGET', state, 'ids', 'h')
if not stored[1] or not stored[2] then return {false, {}} end
local h = cmsgpack.unpack(stored[2])
local n, t = h[1], h[3]
local cur = {}
for i = 1, n do
  local r = cmsgpack.unpack(redis.call('HGET', state, 'l' .. i))
  if r[4] == 1 then cur[i] = r[5] else cur[i] = r[1] + t * r[2] end
end
return {stored[1], cur}
