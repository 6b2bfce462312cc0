-- KEYS: state
-- ARGV: (none)
-- The round-robin state wrr_pick keeps, readable: the `state` hash. Returns {the peers'
-- JSON ids, their `current` values} ({false, {}} when there is none).
local state = KEYS[1]
local stored = redis.call('HMGET', state, 'ids', 'h')
if not stored[1] or not stored[2] then return {false, {}} end
local n, _, t = struct.unpack('>iidddii', stored[2])  -- as wrr_pick writes them
local cur = {}
for i = 1, n do
  local b, w, _, full, frozen = struct.unpack('>diiBd', redis.call('HGET', state, 'l' .. i))
  if full == 1 then cur[i] = frozen else cur[i] = b + t * w end
end
return {stored[1], cur}
