-- KEYS: affinity, wrr_state
-- ARGV: ttl, pick, wrr.digest, wrr.ids, wrr.weights, wrr.slots?, wrr.inflight?, wrr.peers?
-- An affinity key's agent, read and written in one step (routing.weights.follow_affinity), so
-- routers racing on a new key agree on one agent. `affinity` is the affinity key, `wrr_state`
-- the round-robin's; `ttl` its TTL in seconds, `pick` the router's own pick ('': take the next
-- smooth weighted round-robin pick, which then advances only when the key needs an agent), then
-- the eligible agents as wrr_pick takes them (`wrr`: digest, JSON ids sorted, weights; only
-- those three are passed on). The stuck agent, while eligible, is kept and its TTL refreshed;
-- otherwise the key moves to the new pick. Returns the agent.
local affinity, wrr_state = KEYS[1], KEYS[2]
local ttl, pick = ARGV[1], ARGV[2]
local wrr_argv = {unpack(ARGV, 3, 5)}  -- digest, ids, weights
local ids = cjson.decode(wrr_argv[2])
local stuck = redis.call('GET', affinity)
if stuck then
  for i = 1, #ids do
    if ids[i] == stuck then
      redis.call('EXPIRE', affinity, ttl)
      return stuck
    end
  end
end
local chosen = pick
if chosen == '' then chosen = ids[wrr({wrr_state}, wrr_argv)] end
redis.call('SET', affinity, chosen, 'EX', ttl)
return chosen
