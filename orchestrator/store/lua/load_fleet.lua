-- KEYS: agents, heartbeats, stats, statuses, scores, version
-- ARGV: circuit_prefix, inflight_prefix
-- The whole fleet in one round trip: the `agents` hash, `heartbeats`, `stats`, `statuses`,
-- the perf `scores` and the fleet `version`; an agent's circuit hash and in-flight set are its
-- id after `circuit_prefix` and `inflight_prefix`. Returns {agents, heartbeats, stats,
-- statuses, {id, circuit}..., scores, {id, in-flight count}..., the fleet version (false when
-- none was written)}: an agent's in-flight
-- count is the size of its set of routed, unended tasks (a task moved elsewhere leaves it).
-- Stats are each agent's `<id>|ok`, `<id>|fail` and `<id>|lat` fields (those present), as
-- field/value pairs: the per-type fields beside them in the hash are not read.
local agents, heartbeats, stats = KEYS[1], KEYS[2], KEYS[3]
local statuses, scores, version = KEYS[4], KEYS[5], KEYS[6]
local circuit_prefix, inflight_prefix = ARGV[1], ARGV[2]
local registered = redis.call('HGETALL', agents)
local circuits = {}
local inflight = {}
local figures = {}  -- the stats read
local names = {'|ok', '|fail', '|lat'}
for i = 1, #registered, 2 do
  local id = registered[i]
  circuits[#circuits + 1] = id
  circuits[#circuits + 1] = redis.call('HGETALL', circuit_prefix .. id)
  inflight[#inflight + 1] = id
  inflight[#inflight + 1] = redis.call('SCARD', inflight_prefix .. id)
  local values = redis.call('HMGET', stats, id .. names[1], id .. names[2], id .. names[3])
  for j = 1, 3 do
    if values[j] then
      figures[#figures + 1] = id .. names[j]
      figures[#figures + 1] = values[j]
    end
  end
end
return {registered, redis.call('HGETALL', heartbeats), figures,
        redis.call('HGETALL', statuses), circuits, redis.call('HGETALL', scores), inflight,
        redis.call('GET', version)}
