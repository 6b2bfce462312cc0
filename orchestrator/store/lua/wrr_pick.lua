-- KEYS: state
-- ARGV: digest, task_id, all_free, ids?, weights?, slots?
-- Smooth weighted round-robin (routing.weights.wrr_step), one step in O(log n): every free
-- peer gains its weight, the largest `current` wins (ties: the first, peers being sorted by
-- id), the winner pays back the total of the free peers' weights. A peer holding as many
-- unended tasks as its slots (concurrency + prefetch) is skipped this round, as nginx skips a
-- peer at max_conns: it neither gains nor pays; `task_id`'s own slot, where its agent holds
-- it, counts as free ('': none); `all_free` '1' skips nobody (an affinity key's pick).
-- `digest` names the peers with their weights and slots; `ids` (a JSON array of ids sorted),
-- `weights` and `slots` (MessagePack arrays of integers, aligned; no slots: nobody is ever
-- full) are sent only when the script answered -1: it keeps the peers under the digest.
-- Returns the winner's index (1-based), 0 when every peer is full, -1 when the digest is not
-- the stored one and the peers were not given.
--
-- The state hash: d digest, ids, h {n peers, L leaves (a power of two), t steps, W the free
-- weights' total, q the in-flight log's position read, s 1 with slots, nf peers full};
-- `i:<id>` a peer's index; `l<i>` leaf i {b, w, slots, full, cur when full, id}: a free
-- peer's `current` is b + t * w, so a step writes only its winner; `k<node>` a node of the
-- tournament over the leaves (root 1, children 2k and 2k+1, leaf i is node L + i - 1)
-- {winner leaf or 0, the first step at which a comparison in its subtree may turn}. It is a
-- kinetic tournament: lines b + t * w compared in exact integers, each node's certificate
-- the step its winner is overtaken; a step recomputes the nodes whose certificate expired and
-- the winner's path. Fullness follows the in-flight log (K.INFLIGHT_LOG: every script that
-- changes an agent's in-flight set appends the agent): a pick reads the entries since `q`
-- and checks only those agents (all of them when the log was trimmed past `q`).
local state = KEYS[1]
local digest, task_id, all_free = ARGV[1], ARGV[2], ARGV[3]
local INF = 4503599627370496  -- 2^52: a certificate that never expires
local RECHECK = 4096  -- steps between checks of every peer's slots
local head = redis.call('HMGET', state, 'd', 'h', 'k1')
local leaves, nodes, dirty = {}, {}, {}
local n, L, t, W, q, s, nf
-- Records as struct binary (a third of cmsgpack's time): a leaf {b, w, slots, full, cur},
-- then its id; a node {winner, expiry, b, w}; the numbers {n, L, t, W, q, s, nf}.
local LEAF, NODE, HEAD = '>diiBd', '>iddi', '>iidddii'
local function leaf_of(raw)
  local b, w, room, full, cur, at = struct.unpack(LEAF, raw)
  return {b, w, room, full, cur, string.sub(raw, at)}
end
local function node_of(raw)
  local win, exp, b, w = struct.unpack(NODE, raw)
  return {win, exp, b, w}
end

local function leaf(i)
  local r = leaves[i]
  if not r then
    r = leaf_of(redis.call('HGET', state, 'l' .. i))
    leaves[i] = r
  end
  return r
end
local function set_leaf(i, r) leaves[i] = r; dirty['l' .. i] = r end
local function node(k)  -- {winner, expiry, the winner's b and w}
  if k >= L then
    local i = k - L + 1
    if i > n then return {0, INF, 0, 0} end
    local r = leaf(i)
    if r[4] == 1 then return {0, INF, 0, 0} end
    return {i, INF, r[1], r[2]}
  end
  local r = nodes[k]
  if not r then
    r = node_of(redis.call('HGET', state, 'k' .. k))
    nodes[k] = r
  end
  return r
end
local function floordiv(a, b)  -- exact floor(a / b) for integers, b > 0
  local f = math.floor(a / b)
  while f * b > a do f = f - 1 end
  while (f + 1) * b <= a do f = f + 1 end
  return f
end
local function recompute(k)
  local la, lb = node(2 * k), node(2 * k + 1)
  local win, cert = la, INF
  if la[1] == 0 then win = lb
  elseif lb[1] ~= 0 then
    if la[3] + t * la[4] >= lb[3] + t * lb[4] then
      -- b overtakes at the first step where b_b + x w_b > b_a + x w_a
      if lb[4] > la[4] then cert = floordiv(la[3] - lb[3], lb[4] - la[4]) + 1 end
    else
      win = lb  -- a takes it back at the first step where b_a + x w_a >= b_b + x w_b
      if la[4] > lb[4] then cert = -floordiv(la[3] - lb[3], la[4] - lb[4]) end
    end
  end
  local rec = {win[1], math.min(cert, la[2], lb[2]), win[3], win[4]}
  nodes[k] = rec
  dirty['k' .. k] = rec
end
local function load(fields, at)  -- fields of nodes (at > 0) and leaves (at < 0), one HMGET
  if #fields == 0 then return end
  local got = redis.call('HMGET', state, unpack(fields))
  for j = 1, #fields do
    local x = at[j]
    if x > 0 then nodes[x] = node_of(got[j]) else leaves[-x] = leaf_of(got[j]) end
  end
end
local function siblings(i, fields, at)  -- what leaf i's path compares with, not read yet
  local c = L + i - 1
  while c > 1 do
    local sib = c + 1 - 2 * (c % 2)
    if sib < L then
      if not nodes[sib] then
        fields[#fields + 1] = 'k' .. sib
        at[#at + 1] = sib
      end
    else
      local j = sib - L + 1
      if j <= n and not leaves[j] then
        fields[#fields + 1] = 'l' .. j
        at[#at + 1] = -j
      end
    end
    c = (c - c % 2) / 2
  end
  return fields, at
end
local function path(i)  -- recompute leaf i's path to the root
  local k = math.floor((L + i - 1) / 2)
  while k >= 1 do
    recompute(k)
    k = math.floor(k / 2)
  end
end
local function up(i)  -- leaf i changed
  load(siblings(i, {}, {}))
  path(i)
end
local function advance(k)  -- recompute the nodes whose certificate expired by step t
  if k >= L or node(k)[2] > t then return end
  advance(2 * k)
  advance(2 * k + 1)
  recompute(k)
end
local function full(r)  -- the peer holds as many unended tasks as its slots
  return s == 1 and redis.call('SCARD', K.INFLIGHT .. r[6]) >= r[3]
end
local function freeze(i, r)
  r[5] = r[1] + t * r[2]; r[4] = 1
  W = W - r[2]; nf = nf + 1
  set_leaf(i, r)
end
local function thaw(i, r)
  r[1] = r[5] - t * r[2]; r[4] = 0; r[5] = 0
  W = W + r[2]; nf = nf - 1
  set_leaf(i, r)
end
local function build()  -- every node from the leaves, bottom up
  for k = L - 1, 1, -1 do recompute(k) end
end

local seq = tonumber(redis.call('GET', K.INFLIGHT_SEQ) or '0')
if head[1] == digest then
  n, L, t, W, q, s, nf = struct.unpack(HEAD, head[2])
  if head[3] then nodes[1] = node_of(head[3]) end
else
  local ids = ARGV[4]
  if not ids then return -1 end
  -- New peers (or weights, or slots): `current` carries over by id, peers no longer given
  -- drop out, and the whole state is written anew (O(n), once per change).
  local old = {}
  if head[2] then
    local on, _, ot = struct.unpack(HEAD, head[2])
    for from = 1, on or 0, 1000 do  -- in chunks: unpack's bound on how many values it gives
      local fields = {}
      for i = from, math.min(from + 999, on) do fields[#fields + 1] = 'l' .. i end
      for _, raw in ipairs(redis.call('HMGET', state, unpack(fields))) do
        if raw then
          local r = leaf_of(raw)
          old[r[6]] = (r[4] == 1) and r[5] or (r[1] + ot * r[2])
        end
      end
    end
  end
  local peers, w = cjson.decode(ids), cmsgpack.unpack(ARGV[5])
  local room = ARGV[6] and cmsgpack.unpack(ARGV[6])
  n, t, W, q, nf = #peers, 0, 0, seq, 0
  s = room and 1 or 0
  L = 1
  while L < n do L = L * 2 end
  redis.call('DEL', state)
  local index = {}
  for i = 1, n do
    local r = {old[peers[i]] or 0, w[i], room and room[i] or 0, 0, 0, peers[i]}
    if full(r) then r[4], r[5] = 1, r[1]; nf = nf + 1 else W = W + w[i] end
    set_leaf(i, r)
    index[#index + 1] = 'i:' .. peers[i]
    index[#index + 1] = i
  end
  for j = 1, #index, 2000 do
    redis.call('HSET', state, unpack(index, j, math.min(j + 1999, #index)))
  end
  build()
  dirty['d'], dirty['ids'] = digest, ids
end

-- Fullness changed since the last pick: the agents the in-flight log names since `q`.
-- Every peer now and then, too: a change no step logged (a restore) is not missed for long.
if s == 1 and (seq ~= q or t % RECHECK == RECHECK - 1) then
  local len = redis.call('LLEN', K.INFLIGHT_LOG)
  local first = seq - len + 1  -- the log's oldest entry's number
  local names
  if q + 1 < first or q > seq or t % RECHECK == RECHECK - 1 then
    names = {}
    for i = 1, n do names[i] = leaf(i)[6] end
  else
    names = redis.call('LRANGE', K.INFLIGHT_LOG, q + 1 - first, -1)
  end
  local seen = {}
  for _, id in ipairs(names) do
    if not seen[id] then
      seen[id] = true
      local i = tonumber(redis.call('HGET', state, 'i:' .. id))
      if i then
        local r = leaf(i)
        local now_full = full(r)
        if now_full and r[4] == 0 then freeze(i, r); up(i)
        elseif not now_full and r[4] == 1 then thaw(i, r); up(i) end
      end
    end
  end
  q = seq
end

-- Peers full now that take part this round anyway: `task_id`'s agent (its own slot), or all.
local lent = {}
if nf > 0 and all_free == '1' then
  for i = 1, n do
    local r = leaf(i)
    if r[4] == 1 then thaw(i, r); up(i); lent[#lent + 1] = i end
  end
elseif nf > 0 and task_id ~= '' then
  local holder = redis.call('HGET', K.TASK_PRE .. task_id .. K.TASK_SUF, 'agent')
  local i = holder and tonumber(redis.call('HGET', state, 'i:' .. holder))
  if i and leaf(i)[4] == 1
     and redis.call('SISMEMBER', K.INFLIGHT .. holder, task_id) == 1
     and redis.call('SCARD', K.INFLIGHT .. holder) - 1 < leaf(i)[3] then
    thaw(i, leaf(i)); up(i); lent[1] = i
  end
end

local best = node(1)[1]
if best > 0 then
  t = t + 1
  advance(1)
  best = node(1)[1]
  if leaves[best] then load(siblings(best, {}, {}))
  else load(siblings(best, {'l' .. best}, {-best})) end
  local r = leaves[best]
  r[1] = r[1] - W
  set_leaf(best, r)
  path(best)
end
for _, i in ipairs(lent) do freeze(i, leaf(i)); up(i) end

local out = {'h', struct.pack(HEAD, n, L, t, W, q, s, nf)}
for f, v in pairs(dirty) do
  out[#out + 1] = f
  if type(v) ~= 'table' then out[#out + 1] = v
  elseif string.byte(f) == 107 then out[#out + 1] = struct.pack(NODE, v[1], v[2], v[3], v[4])
  else out[#out + 1] = struct.pack(LEAF, v[1], v[2], v[3], v[4], v[5]) .. v[6] end
end
for j = 1, #out, 2000 do  -- unpack's bound on how many values one call takes
  redis.call('HSET', state, unpack(out, j, math.min(j + 1999, #out)))
end
return best
