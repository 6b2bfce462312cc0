-- KEYS: old, new
-- ARGV: (none)
-- One task's history list moved from the older layout's name to its own kind's key
-- (StateStore.migrate_keys): `old` is the older name (`orch:task:<id>:history`), `new` its
-- own (`orch:history:<id>`). Only a list moves: a hash of that name is the ledger entry of a task
-- named `<id>:history` and stays as it is. When the new list exists already (an upgraded
-- worker wrote to it first), the old entries go in front of its own, which are newer, and
-- it keeps its TTL. Returns 1 when entries moved, 0 when there was nothing to move.
local old, new = KEYS[1], KEYS[2]
if redis.call('TYPE', old).ok ~= 'list' then return 0 end
local kind = redis.call('TYPE', new).ok
if kind == 'none' then
  redis.call('RENAME', old, new)
  return 1
end
if kind ~= 'list' then return 0 end
local entries = redis.call('LRANGE', old, 0, -1)
for i = #entries, 1, -1 do redis.call('LPUSH', new, entries[i]) end
redis.call('DEL', old)
return 1
