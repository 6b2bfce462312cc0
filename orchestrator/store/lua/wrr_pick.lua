-- Smooth weighted round-robin: ARGV = agent, weight, agent, weight, ... sorted by agent id
-- (ties go to the first, as in routing.weights.wrr_step). The whole state is rewritten, so
-- agents that are no longer eligible drop out of it.
local cur = redis.call('HGETALL', KEYS[1])
local state = {}
for i = 1, #cur, 2 do state[cur[i]] = tonumber(cur[i + 1]) end
local total, best, bestv = 0, nil, nil
local new = {}
for i = 1, #ARGV, 2 do
  local peer, w = ARGV[i], tonumber(ARGV[i + 1])
  local c = (state[peer] or 0) + w
  new[#new + 1] = peer
  new[#new + 1] = c
  total = total + w
  if bestv == nil or c > bestv then best = i + 1; bestv = c end
end
new[best] = new[best] - total
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(new))
return new[best - 1]
