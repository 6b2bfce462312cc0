-- KEYS: agents, heartbeats, stats, statuses, scores, version
-- ARGV: circuit_prefix, inflight_prefix
-- The whole fleet in one round trip. KEYS = agents, heartbeats, agent_stats, agent_status,
-- perf scores, fleet version; ARGV = circuit key prefix, in-flight set prefix. Returns {agents,
-- heartbeats, stats, statuses, {id, circuit}..., scores, {id, in-flight count}..., the fleet
-- version (false when none was written)}: an agent's in-flight
-- count is the size of its set of routed, unended tasks (a task moved elsewhere leaves it).
-- Stats are each agent's `<id>|ok`, `<id>|fail` and `<id>|lat` fields (those present), as
-- field/value pairs: the per-type fields beside them in the hash are not read.
local agents = redis.call('HGETALL', KEYS[1])
local circuits = {}
local inflight = {}
local stats = {}
local names = {'|ok', '|fail', '|lat'}
for i = 1, #agents, 2 do
  local id = agents[i]
  circuits[#circuits + 1] = id
  circuits[#circuits + 1] = redis.call('HGETALL', ARGV[1] .. id)
  inflight[#inflight + 1] = id
  inflight[#inflight + 1] = redis.call('SCARD', ARGV[2] .. id)
  local values = redis.call('HMGET', KEYS[3], id .. names[1], id .. names[2], id .. names[3])
  for j = 1, 3 do
    if values[j] then
      stats[#stats + 1] = id .. names[j]
      stats[#stats + 1] = values[j]
    end
  end
end
return {agents, redis.call('HGETALL', KEYS[2]), stats,
        redis.call('HGETALL', KEYS[4]), circuits, redis.call('HGETALL', KEYS[5]), inflight,
        redis.call('GET', KEYS[6])}
