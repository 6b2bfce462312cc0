-- KEYS: affinity, wrr_state
-- ARGV: ttl, pick, wrr.digest, wrr.task_id, wrr.all_free, wrr.ids?, wrr.weights?, wrr.slots?
-- An affinity key's agent, read and written in one step (routing.weights.follow_affinity), so
-- routers racing on a new key agree on one agent. `affinity` is the affinity key, `wrr_state`
-- the round-robin's; `ttl` its TTL in seconds, `pick` the router's own pick ('': take the next
-- smooth weighted round-robin pick, which then advances only when the key needs an agent), then
-- the eligible agents as wrr_pick takes them (`wrr`: all_free '1' skips no full peer). The
-- stuck agent, while eligible, is kept and its TTL refreshed; otherwise the key moves to the
-- new pick. Returns the agent, or -1 when wrr_pick would (the peers are not stored: send them).
local affinity, wrr_state = KEYS[1], KEYS[2]
local ttl, pick = ARGV[1], ARGV[2]
local wrr_argv = {unpack(ARGV, 3)}
local known = redis.call('HGET', wrr_state, 'd') == wrr_argv[1]
if not known and not wrr_argv[4] then return -1 end
local function eligible(id)
  if known then return redis.call('HEXISTS', wrr_state, 'i:' .. id) == 1 end
  for _, peer in ipairs(cjson.decode(wrr_argv[4])) do
    if peer == id then return true end
  end
  return false
end
local stuck = redis.call('GET', affinity)
if stuck and eligible(stuck) then
  redis.call('EXPIRE', affinity, ttl)
  return stuck
end
local chosen = pick
if chosen == '' then
  local i = wrr({wrr_state}, wrr_argv)
  local raw = redis.call('HGET', wrr_state, 'l' .. i)
  chosen = string.sub(raw, select(6, struct.unpack('>diiBd', raw)))  -- the leaf's id
end
redis.call('SET', affinity, chosen, 'EX', ttl)
return chosen
