-- KEYS: ledger, history
-- ARGV: state, entry, allowed[], fields...
-- Move a ledger entry from one of the allowed states to another.
-- KEYS = ledger, history; ARGV = new state, history JSON, n, allowed..., then field/value pairs.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, ''} end
local n = tonumber(ARGV[3])
local ok = (n == 0)
for i = 4, 3 + n do if ARGV[i] == state then ok = true end end
if not ok then return {0, state} end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 4 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[2])
return {1, state}
