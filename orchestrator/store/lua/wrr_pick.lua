-- KEYS: state
-- ARGV: digest, ids, weights, slots?, inflight?, peers?, task_id?
-- Smooth weighted round-robin (routing.weights.wrr_step): every peer gains its weight, the
-- largest `current` wins (ties: the first, peers being sorted by id), the winner pays back
-- the total. KEYS = the state hash; ARGV = digest of the peers, the peers (a JSON array of ids
-- sorted), their weights (a MessagePack array of integers, aligned), and optionally their
-- slots (a MessagePack array, aligned: concurrency + prefetch), the in-flight set prefix and
-- the ids again as a MessagePack array (cheaper to decode than the JSON), and the task's id
-- (a task moved again does not count against the agent already holding it):
-- a peer holding that many unended tasks is skipped this round, as nginx skips a peer at
-- max_conns (it neither gains nor pays). Returns the winner's index (1-based), 0 when every
-- peer is full. The state is {d = digest, ids = the peers' JSON, cur = MessagePack array of
-- `current` aligned with them}: while the peers stay the same (the usual case) a pick decodes
-- and writes two arrays of numbers and never the ids; when they change, `current` carries
-- over by id and peers no longer given drop out. (MessagePack, not JSON: cjson spends most of
-- a pick formatting numbers; at 1,000 peers a pick costs about 0.3 ms of Redis CPU.)
local d = ARGV[1]
local stored = redis.call('HMGET', KEYS[1], 'd', 'cur')
local w = cmsgpack.unpack(ARGV[3])
local cur
local fresh = false
if stored[1] == d then
  cur = cmsgpack.unpack(stored[2])
else
  local old = {}
  if stored[1] then
    local oldids = cjson.decode(redis.call('HGET', KEYS[1], 'ids'))
    local oldcur = cmsgpack.unpack(stored[2])
    for i = 1, #oldids do old[oldids[i]] = oldcur[i] end
  end
  local ids = cjson.decode(ARGV[2])
  cur = {}
  for i = 1, #ids do cur[i] = old[ids[i]] or 0 end
  -- Rewritten whole: whatever else the hash held (an older layout's fields) goes.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'd', d, 'ids', ARGV[2])
  fresh = true
end
local slots, peers = nil, nil
if ARGV[4] then slots, peers = cmsgpack.unpack(ARGV[4]), cmsgpack.unpack(ARGV[6]) end
local total, best, bestv = 0, 0, nil
for i = 1, #w do
  local free = true
  if slots then
    local held = redis.call('SCARD', ARGV[5] .. peers[i])
    if held >= slots[i] and ARGV[7] and redis.call('SISMEMBER', ARGV[5] .. peers[i], ARGV[7]) == 1
    then
      held = held - 1
    end
    free = held < slots[i]
  end
  if free then
    local c = cur[i] + w[i]
    cur[i] = c
    total = total + w[i]
    if bestv == nil or c > bestv then best = i; bestv = c end
  end
end
if best == 0 then
  if fresh then redis.call('HSET', KEYS[1], 'cur', cmsgpack.pack(cur)) end
  return 0
end
cur[best] = cur[best] - total
redis.call('HSET', KEYS[1], 'cur', cmsgpack.pack(cur))
return best
