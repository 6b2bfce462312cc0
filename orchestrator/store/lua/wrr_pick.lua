-- KEYS: state
-- ARGV: digest, ids, weights, slots?, inflight?, peers?, task_id?
-- Smooth weighted round-robin (routing.weights.wrr_step): every peer gains its weight, the
-- largest `current` wins (ties: the first, peers being sorted by id), the winner pays back
-- the total. `state` is the round-robin's hash; `digest` names the peers, `ids` are the peers
-- (a JSON array of ids sorted), `weights` their weights (a MessagePack array of integers,
-- aligned), and optionally `slots` theirs (a MessagePack array, aligned: concurrency +
-- prefetch), `inflight` the in-flight set prefix, `peers` the ids again as a MessagePack array
-- (cheaper to decode than the JSON), and `task_id` the task's id (a task moved again does not
-- count against the agent already holding it):
-- a peer holding that many unended tasks is skipped this round, as nginx skips a peer at
-- max_conns (it neither gains nor pays). Returns the winner's index (1-based), 0 when every
-- peer is full. The state is {d = digest, ids = the peers' JSON, cur = MessagePack array of
-- `current` aligned with them}: while the peers stay the same (the usual case) a pick decodes
-- and writes two arrays of numbers and never the ids; when they change, `current` carries
-- over by id and peers no longer given drop out. (MessagePack, not JSON: cjson spends most of
-- a pick formatting numbers; at 1,000 peers a pick costs about 0.3 ms of Redis CPU.)
local state = KEYS[1]
local digest, ids, weights = ARGV[1], ARGV[2], ARGV[3]
local slots, inflight, peers, task_id = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local stored = redis.call('HMGET', state, 'd', 'cur')
local w = cmsgpack.unpack(weights)
local cur
local fresh = false
if stored[1] == digest then
  cur = cmsgpack.unpack(stored[2])
else
  local old = {}
  if stored[1] then
    local oldids = cjson.decode(redis.call('HGET', state, 'ids'))
    local oldcur = cmsgpack.unpack(stored[2])
    for i = 1, #oldids do old[oldids[i]] = oldcur[i] end
  end
  local newids = cjson.decode(ids)
  cur = {}
  for i = 1, #newids do cur[i] = old[newids[i]] or 0 end
  -- Rewritten whole: whatever else the hash held (an older layout's fields) goes.
  redis.call('DEL', state)
  redis.call('HSET', state, 'd', digest, 'ids', ids)
  fresh = true
end
local room, holders = nil, nil  -- slots and peers, decoded
if slots then room, holders = cmsgpack.unpack(slots), cmsgpack.unpack(peers) end
local total, best, bestv = 0, 0, nil
for i = 1, #w do
  local free = true
  if room then
    local held = redis.call('SCARD', inflight .. holders[i])
    if held >= room[i] and task_id
       and redis.call('SISMEMBER', inflight .. holders[i], task_id) == 1 then
      held = held - 1
    end
    free = held < room[i]
  end
  if free then
    local c = cur[i] + w[i]
    cur[i] = c
    total = total + w[i]
    if bestv == nil or c > bestv then best = i; bestv = c end
  end
end
if best == 0 then
  if fresh then redis.call('HSET', state, 'cur', cmsgpack.pack(cur)) end
  return 0
end
cur[best] = cur[best] - total
redis.call('HSET', state, 'cur', cmsgpack.pack(cur))
return best
