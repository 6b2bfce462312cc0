-- KEYS: ledger, history
-- ARGV: state, entry, allowed[], fields...
-- Move a ledger entry from one of the allowed states to another: `ledger` to the new `state`,
-- `entry` (history JSON) onto its `history`. `allowed` is a count, then the states it may move
-- from (none: any); `fields` are field/value pairs set on the ledger entry with the new state.
-- Returns {1, previous state}, {0, state} when it is not in an allowed state, {-1, ''} if no entry.
local ledger, history = KEYS[1], KEYS[2]
local new_state, entry = ARGV[1], ARGV[2]
local state = redis.call('HGET', ledger, 'state')
if not state then return {-1, ''} end
local n = tonumber(ARGV[3])  -- allowed: the count, then its states at 4 .. 3 + n
local ok = (n == 0)
for i = 4, 3 + n do if ARGV[i] == state then ok = true end end
if not ok then return {0, state} end
redis.call('HSET', ledger, 'state', new_state)
for i = 4 + n, #ARGV, 2 do redis.call('HSET', ledger, ARGV[i], ARGV[i + 1]) end  -- fields
redis.call('RPUSH', history, entry)
return {1, state}
