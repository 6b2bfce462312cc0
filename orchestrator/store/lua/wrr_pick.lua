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
-- The state hash: d digest, ids, h {n peers, H levels, t steps, W the free weights' total,
-- q the in-flight log's position read, s 1 with slots, nf peers full}; `i:<id>` a peer's
-- index; `l<i>` leaf i {b, w, slots, full, cur when full, id}: a free peer's `current` is
-- b + t * w, so a step writes only its winner. Over the leaves, a tournament of F-way nodes:
-- `g<h>:<j>` the F children of node j of level h (level 1's children are leaves), each
-- {winner leaf or 0, expiry, the winner's b and w}; `r` the root alike. It is a kinetic
-- tournament: lines b + t * w compared in exact integers, a node's expiry the first step at
-- which a child overtakes its winner or a node below it changes; a step recomputes the nodes
-- that expired and the winner's path (H = log_F n groups read and written). Fullness follows
-- the in-flight log (K.INFLIGHT_LOG: every script that changes an agent's in-flight set
-- appends the agent): a pick reads the entries since `q` and checks only those agents (all
-- of them when the log was trimmed past `q`, and every RECHECK steps).
local state = KEYS[1]
local digest, task_id, all_free = ARGV[1], ARGV[2], ARGV[3]
local INF = 4503599627370496  -- 2^52: a certificate that never expires
local RECHECK = 4096  -- steps between checks of every peer's slots
local F = 8  -- a node's children
local head = redis.call('HMGET', state, 'd', 'h', 'r')
local leaves, groups, dirty = {}, {}, {}
local n, H, t, W, q, s, nf, root
-- Records as struct binary (a third of cmsgpack's time): a leaf {b, w, slots, full, cur},
-- then its id; the root {winner, expiry, b, w}; a group the F children of one node, each
-- {winner, expiry, b, w}; the numbers {n, H, t, W, q, s, nf}.
local LEAF, NODE, HEAD = '>diiBd', '>iddi', '>iidddii'
local GROUP = '>' .. string.rep('iddi', F)
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
local function group(h, j)  -- the children of node j of level h (level 1's are leaves)
  local key = 'g' .. h .. ':' .. j
  local g = groups[key]
  if not g then
    g = {struct.unpack(GROUP, redis.call('HGET', state, key))}
    groups[key] = g
  end
  dirty[key] = g
  return g
end
local function floordiv(a, b)  -- exact floor(a / b) for integers, b > 0
  local f = math.floor(a / b)
  while f * b > a do f = f - 1 end
  while (f + 1) * b <= a do f = f + 1 end
  return f
end
local function slot_put(g, slot, win, exp, b, w)
  local o = 4 * slot
  g[o + 1], g[o + 2], g[o + 3], g[o + 4] = win, exp, b, w
end
local function put_leaf(g, slot, i)  -- leaf i's line, or nothing (full, or past the last)
  local r = i <= n and leaf(i)
  if r and r[4] == 0 then slot_put(g, slot, i, INF, r[1], r[2])
  else slot_put(g, slot, 0, INF, 0, 0) end
end
-- The node over a group at step t: its children's largest line (ties: the first), and the
-- first step at which a child's line overtakes it or a child's own node changes.
local function combine(g)
  local best, bv = nil, nil
  for o = 0, 4 * F - 4, 4 do
    if g[o + 1] ~= 0 then
      local v = g[o + 3] + t * g[o + 4]
      if not best or v > bv then best, bv = o, v end
    end
  end
  local exp = INF
  if not best then
    for o = 0, 4 * F - 4, 4 do exp = math.min(exp, g[o + 2]) end
    return 0, exp, 0, 0
  end
  local bb, bw = g[best + 3], g[best + 4]
  for o = 0, 4 * F - 4, 4 do
    local e = g[o + 2]
    if e < exp then exp = e end
    local w = g[o + 4]
    if o ~= best and g[o + 1] ~= 0 and w > bw then
      if o < best then
        -- an earlier child takes it at the first step where b_c + x w_c >= b + x w
        e = -floordiv(g[o + 3] - bb, w - bw)
      else
        e = floordiv(bb - g[o + 3], w - bw) + 1  -- a later one where b_c + x w_c > b + x w
      end
      if e < exp then exp = e end
    end
  end
  return g[best + 1], exp, bb, bw
end
local function load(i)  -- the groups on leaf i's path, not read yet, in one HMGET
  local fields, x = {}, i - 1
  for h = 1, H do
    x = (x - x % F) / F
    local key = 'g' .. h .. ':' .. x
    if not groups[key] then fields[#fields + 1] = key end
  end
  if not leaves[i] then fields[#fields + 1] = 'l' .. i end
  if #fields == 0 then return end
  local got = redis.call('HMGET', state, unpack(fields))
  for j, f in ipairs(fields) do
    if string.byte(f) == 103 then groups[f] = {struct.unpack(GROUP, got[j])}  -- 'g'
    else leaves[i] = leaf_of(got[j]) end
  end
end
local function up(i)  -- leaf i changed: its path to the root
  load(i)
  local x = i - 1
  local g = group(1, (x - x % F) / F)
  put_leaf(g, x % F, i)
  for h = 1, H do
    local j = (x - x % F) / F
    local win, exp, b, w = combine(group(h, j))
    if h == H then root = {win, exp, b, w}
    else slot_put(group(h + 1, (j - j % F) / F), j % F, win, exp, b, w) end
    x = j
  end
end
local function advance(h, j)  -- recompute the nodes whose certificate expired by step t
  local g = group(h, j)
  if h > 1 then
    for slot = 0, F - 1 do
      if g[4 * slot + 2] <= t then slot_put(g, slot, advance(h - 1, F * j + slot)) end
    end
  end
  return combine(g)
end
local function build()  -- every node from the leaves, bottom up
  local below = n  -- nodes on the level below
  for h = 1, H do
    local count = math.ceil(below / F)
    for j = 0, count - 1 do
      local g = {}
      groups['g' .. h .. ':' .. j] = g
      dirty['g' .. h .. ':' .. j] = g
      for slot = 0, F - 1 do
        local c = F * j + slot
        if h == 1 then put_leaf(g, slot, c + 1)
        elseif c < below then slot_put(g, slot, combine(groups['g' .. (h - 1) .. ':' .. c]))
        else slot_put(g, slot, 0, INF, 0, 0) end
      end
    end
    below = count
  end
  root = {combine(groups['g' .. H .. ':0'])}
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
local seq = tonumber(redis.call('GET', K.INFLIGHT_SEQ) or '0')
if head[1] == digest then
  n, H, t, W, q, s, nf = struct.unpack(HEAD, head[2])
  root = node_of(head[3])
else
  local ids = ARGV[4]
  if not ids then return -1 end
  -- New peers (or weights, or slots): `current` carries over by id, peers no longer given
  -- drop out, and the whole state is written anew (O(n), once per change).
  local old = {}
  local before = not head[2] and redis.call('HMGET', state, 'ids', 'cur')
  if before and before[1] and before[2] then  -- the layout before: ids, and `current` aligned
    local oldids, oldcur = cjson.decode(before[1]), cmsgpack.unpack(before[2])
    for i = 1, #oldids do old[oldids[i]] = oldcur[i] end
  elseif head[2] then
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
  H = 1
  while F ^ H < n do H = H + 1 end
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

local best = root[1]
if best > 0 then
  t = t + 1
  if root[2] <= t then root = {advance(H, 0)} end
  best = root[1]
  load(best)
  local r = leaves[best]
  r[1] = r[1] - W
  set_leaf(best, r)
  up(best)
end
for _, i in ipairs(lent) do freeze(i, leaf(i)); up(i) end

local out = {'h', struct.pack(HEAD, n, H, t, W, q, s, nf), 'r', struct.pack(NODE, unpack(root))}
for f, v in pairs(dirty) do
  out[#out + 1] = f
  if type(v) ~= 'table' then out[#out + 1] = v
  elseif string.byte(f) == 103 then out[#out + 1] = struct.pack(GROUP, unpack(v, 1, 4 * F))
  else out[#out + 1] = struct.pack(LEAF, v[1], v[2], v[3], v[4], v[5]) .. v[6] end
end
for j = 1, #out, 2000 do  -- unpack's bound on how many values one call takes
  redis.call('HSET', state, unpack(out, j, math.min(j + 1999, #out)))
end
return best
