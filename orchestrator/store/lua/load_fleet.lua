-- The whole fleet in one round trip. KEYS = agents, heartbeats, agent_stats, agent_status,
-- perf scores; ARGV = circuit key prefix, in-flight set prefix. Returns {agents, heartbeats,
-- stats, statuses, {id, circuit}..., scores, {id, in-flight count}...}: an agent's in-flight
-- count is the size of its set of routed, unended tasks (a task moved elsewhere leaves it).
local agents = redis.call('HGETALL', KEYS[1])
local circuits = {}
local inflight = {}
for i = 1, #agents, 2 do
  circuits[#circuits + 1] = agents[i]
  circuits[#circuits + 1] = redis.call('HGETALL', ARGV[1] .. agents[i])
  inflight[#inflight + 1] = agents[i]
  inflight[#inflight + 1] = redis.call('SCARD', ARGV[2] .. agents[i])
end
return {agents, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4]), circuits, redis.call('HGETALL', KEYS[5]), inflight}
