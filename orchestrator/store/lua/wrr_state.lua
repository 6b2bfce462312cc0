-- KEYS: state
-- ARGV: (none)
-- The round-robin state wrr_pick keeps, readable: the `state` hash. Returns {the peers'
-- JSON ids, their `current` values} ({false, {}} when there is none).
local state = KEYS[1]
local stored = redis.call('HMGET', state, 'ids', 'cur')
if not stored[1] then return {false, {}} end
return {stored[1], cmsgpack.unpack(stored[2])}
