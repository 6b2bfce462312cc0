-- KEYS: inflight, unacked, lists...
-- ARGV: ledger_prefix, routed_before
-- Tasks of one agent still `routed` since before a moment whose message is nowhere: not in
-- the agent's queue lists, not among kombu's unacknowledged deliveries (kombu pops a message
-- before recording it as unacknowledged, and a Redis restart from its AOF can keep the first
-- and lose the second). Each message is parsed once for its header id. `inflight` is the
-- agent's in-flight set, `unacked` kombu's hash, `lists` the queue's lists (KEYS[3..]);
-- `ledger_prefix` names a task's ledger entry with its id after it. Returns
-- {task id, dispatch, ...}.
local inflight, unacked = KEYS[1], KEYS[2]
local ledger_prefix, routed_before = ARGV[1], tonumber(ARGV[2])
local old = {}
local any = false
for _, id in ipairs(redis.call('SMEMBERS', inflight)) do
  local f = redis.call('HMGET', ledger_prefix .. id, 'state', 'routed_at', 'dispatch')
  if f[1] == 'routed' and tonumber(f[2] or '0') < routed_before then
    old[id] = f[3]
    any = true
  end
end
if not any then return {} end
local function seen(raw)
  local id = string.match(raw, '"id": "([^"]*)"')
  if id then old[id] = nil end
end
for _, raw in ipairs(redis.call('HVALS', unacked)) do seen(raw) end
for i = 3, #KEYS do  -- lists
  for _, raw in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do seen(raw) end
end
local out = {}
for id, dispatch in pairs(old) do
  out[#out + 1] = id
  out[#out + 1] = dispatch
end
return out
