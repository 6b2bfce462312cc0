-- KEYS: old, new
-- ARGV: (none)
-- One task's history list moved from the older layout's name to its own kind's key
-- (StateStore.migrate_keys). KEYS = the old name (`orch:task:<id>:history`), the new one
-- (`orch:history:<id>`). Only a list moves: a hash of that name is the ledger entry of a task
-- named `<id>:history` and stays as it is. When the new list exists already (an upgraded
-- worker wrote to it first), the old entries go in front of its own, which are newer, and
-- it keeps its TTL. Returns 1 when entries moved, 0 when there was nothing to move.
if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return 0 end
local kind = redis.call('TYPE', KEYS[2]).ok
if kind == 'none' then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
if kind ~= 'list' then return 0 end
local old = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #old, 1, -1 do redis.call('LPUSH', KEYS[2], old[i]) end
redis.call('DEL', KEYS[1])
return 1
