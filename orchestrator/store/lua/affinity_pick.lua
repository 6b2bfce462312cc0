-- KEYS: affinity, wrr_state
-- ARGV: ttl, pick, wrr.digest, wrr.ids, wrr.weights, wrr.slots?, wrr.inflight?, wrr.peers?
-- An affinity key's agent, read and written in one step (routing.weights.follow_affinity), so
-- routers racing on a new key agree on one agent. KEYS = affinity key, round-robin key; ARGV =
-- TTL seconds, the router's own pick ('': take the next smooth weighted round-robin pick, which
-- then advances only when the key needs an agent), then the eligible agents as wrr_pick takes
-- them (digest, JSON ids sorted, JSON weights). The stuck agent, while eligible, is kept and
-- its TTL refreshed; otherwise the key moves to the new pick. Returns the agent.
local ids = cjson.decode(ARGV[4])
local stuck = redis.call('GET', KEYS[1])
if stuck then
  for i = 1, #ids do
    if ids[i] == stuck then
      redis.call('EXPIRE', KEYS[1], ARGV[1])
      return stuck
    end
  end
end
local chosen = ARGV[2]
if chosen == '' then chosen = ids[wrr({KEYS[2]}, {ARGV[3], ARGV[4], ARGV[5]})] end
redis.call('SET', KEYS[1], chosen, 'EX', ARGV[1])
return chosen
