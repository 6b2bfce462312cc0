-- KEYS: lock
-- ARGV: token
-- Compare-and-delete: release the `lock` only if it still holds our `token`.
local lock, token = KEYS[1], ARGV[1]
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0
