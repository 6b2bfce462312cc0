-- The backlog (store/keys.py, "dispatch"), as local functions the dispatching scripts are
-- composed with. Key names come from the generated header (keys.lua_header: K.*). A
-- waiting task is one entry in the list of its (capability set, priority, client); per
-- capability set a sorted set of the priorities waiting, per (set, priority) a sorted set of
-- the clients waiting scored by their fair-share tag. Taking the next task: the highest
-- priority, then the lowest tag (start-time fair queuing on worker-seconds: a client is
-- charged its estimated run time / weight when a task of its starts, and the difference
-- from the recorded run time when it settles), then the oldest of that client. Each step is
-- O(log n) in the waiting clients and priorities, O(1) in the waiting tasks.
-- cx (context) = {now, weights = {client = weight}, est = default seconds, prefetch,
-- timeout = seconds a heartbeat stays fresh, maxlen = events stream cap}.

local function bl_prios(k) return K.BL_PRIOS .. k end
local function bl_clients(k, p) return K.BL_CLIENTS .. k .. '|' .. p end
local function bl_queue(k, p, c) return K.BL_QUEUE .. k .. '|' .. p .. '|' .. c end
local function ck_holders(key) return K.CK_HOLDERS .. key end
local function ck_waiting(key) return K.CK_WAITING .. key end
local function ledger(id) return K.TASK_PRE .. id .. K.TASK_SUF end
local function history(id) return K.HISTORY_PRE .. id .. K.HISTORY_SUF end
local function num(s, default) return tonumber(s or '') or default end
local NO_FAIR = '*'  -- the one client every task waits under with ORCH_FAIR_SHARE=off

local function split_slot(slot)
  return string.match(slot, '^([^|]*)|(%d)|(.*)$')
end

-- A (set, priority, client) list may have emptied: drop it from the indexes above it.
local function bl_fix(k, p, c)
  if redis.call('LLEN', bl_queue(k, p, c)) > 0 then return end
  redis.call('ZREM', bl_clients(k, p), c)
  if redis.call('ZCARD', bl_clients(k, p)) > 0 then return end
  redis.call('ZREM', bl_prios(k), p)
  if redis.call('ZCARD', bl_prios(k)) > 0 then return end
  redis.call('SREM', K.BL_SETS, k)
  redis.call('HDEL', K.BL_COUNT, k)
end

local function bl_push(id, k, p, c, front)
  local q = bl_queue(k, p, c)
  local n
  if front then n = redis.call('LPUSH', q, id) else n = redis.call('RPUSH', q, id) end
  if n == 1 then
    -- A client that starts waiting starts at its list's virtual time, never behind it.
    local v = num(redis.call('HGET', K.FAIR_V, k .. '|' .. p), 0)
    local vt = num(redis.call('HGET', K.FAIR_VT, c), 0)
    redis.call('ZADD', bl_clients(k, p), math.max(v, vt), c)
  end
  redis.call('ZADD', bl_prios(k), p, p)
  redis.call('SADD', K.BL_SETS, k)
  redis.call('HINCRBY', K.BL_COUNT, k, 1)
end

-- Take a waiting task out of wherever it waits (cancel, expiry, end): its slot field says.
local function bl_remove(id, l)
  local f = redis.call('HMGET', l, 'bl', 'blw')
  if not f[1] then return end
  redis.call('HDEL', l, 'bl', 'blw')
  if f[2] then
    redis.call('LREM', ck_waiting(f[2]), 1, id)
    return
  end
  local k, p, c = split_slot(f[1])
  if k and redis.call('LREM', bl_queue(k, p, c), 1, id) > 0 then
    if redis.call('HINCRBY', K.BL_COUNT, k, -1) <= 0 then redis.call('HDEL', K.BL_COUNT, k) end
    bl_fix(k, p, c)
  end
end

-- The best (priority, client, tag) waiting in one capability set, or nil.
local function bl_head(k)
  local top = redis.call('ZREVRANGE', bl_prios(k), 0, 0)
  if #top == 0 then return nil end
  local c = redis.call('ZRANGE', bl_clients(k, top[1]), 0, 0, 'WITHSCORES')
  if #c == 0 then
    redis.call('ZREM', bl_prios(k), top[1])
    return nil
  end
  return tonumber(top[1]), c[1], tonumber(c[2])
end

-- Pop the head of (k, p, c) (the client is charged once the task is dispatched: charge).
local function bl_pop(k, p, c)
  local q = bl_queue(k, p, c)
  local id = redis.call('LPOP', q)
  if id and redis.call('HINCRBY', K.BL_COUNT, k, -1) <= 0 then redis.call('HDEL', K.BL_COUNT, k) end
  bl_fix(k, p, c)
  return id
end

-- Charge a client whose task at (k, p) with fair-share tag `tag` was dispatched: its
-- estimated run time / weight; the client's place among those waiting moves accordingly.
local function charge(cx, k, p, c, tag)
  local w = cx.weights[c] or 1
  local est = num(redis.call('HGET', K.FAIR_EST, c), cx.est)
  local vt = math.max(num(redis.call('HGET', K.FAIR_VT, c), 0), tag) + est / w
  redis.call('HSET', K.FAIR_VT, c, vt)
  local lv = k .. '|' .. p
  if tag > num(redis.call('HGET', K.FAIR_V, lv), 0) then redis.call('HSET', K.FAIR_V, lv, tag) end
  if redis.call('LLEN', bl_queue(k, p, c)) > 0 then redis.call('ZADD', bl_clients(k, p), vt, c) end
  return est
end

-- The capability sets waiting that an agent offering `caps` (name -> proficiency) can take.
local function bl_sets_for(caps)
  local out = {}
  for _, k in ipairs(redis.call('SMEMBERS', K.BL_SETS)) do
    local ok = true
    for name in string.gmatch(k, '[^,]+') do
      if caps[name] == nil then ok = false break end
    end
    if ok then out[#out + 1] = k end
  end
  return out
end

-- The enqueue order of a list's oldest task (ORCH_FAIR_SHARE=off compares sets by it).
local function head_seq(k, p, c)
  local id = redis.call('LINDEX', bl_queue(k, p, c), 0)
  if not id then return 0 end
  return num(redis.call('HGET', ledger(id), 'qseq'), 0)
end

-- Among the sets' heads: the highest priority, then the lowest tag; with fair share off (one
-- client, '*'), the oldest.
local function bl_best(sets)
  local bk, bp, bc, bt, bs
  for _, k in ipairs(sets) do
    local p, c, t = bl_head(k)
    if p then
      local better = bp == nil or p > bp
      if not better and p == bp then
        if c == NO_FAIR and bc == NO_FAIR then
          bs = bs or head_seq(bk, bp, bc)
          local seq = head_seq(k, p, c)
          better = seq < bs
          if better then bs = seq end
        else
          better = t < bt
        end
      elseif better then
        bs = nil
      end
      if better then bk, bp, bc, bt = k, p, c, t end
    end
  end
  return bk, bp, bc, bt
end

-- The stream an event of `etype` goes to (keys.events_key): the task lifecycle types have
-- their own.
local function events_key(etype)
  if K.TASK_EVENT_TYPES[etype] then return K.TASK_EVENTS end
  return K.EVENTS
end

local function event(cx, etype, source, data)
  redis.call('XADD', events_key(etype), 'MAXLEN', '~', cx.maxlen, '*', 'type', etype,
             'ts', string.format('%.17g', cx.now), 'severity', 'info', 'source', source,
             'data', cjson.encode(data))
end

-- An event only some control worker's handler wants (keys.ON_DEMAND_EVENTS): nothing when
-- none listens, so it costs the hot path one SCARD.
local function event_if_wanted(cx, etype, source, data)
  if redis.call('SCARD', K.EVENTS_WANT .. etype) > 0 then event(cx, etype, source, data) end
end

-- `text` with every `stand_in` (plain text, not a pattern) replaced by `id`.
local function put(text, stand_in, id)
  local out, from = {}, 1
  while true do
    local i, j = string.find(text, stand_in, from, true)
    if not i then break end
    out[#out + 1] = string.sub(text, from, i - 1)
    out[#out + 1] = id
    from = j + 1
  end
  if from == 1 then return text end
  out[#out + 1] = string.sub(text, from)
  return table.concat(out)
end

-- A new task that waited from its submission keeps the message its submitter built for a
-- stand-in agent (ledger fields pm: payload, pk: list key, ps: the stand-in's id, pq: its
-- queue, ph: '1' when named by type, which only an agent with handler tasks runs): pushed here,
-- the stand-in replaced by `agent`, when it is the task's first dispatch and fits `rec` (the
-- agent's registration). Returns whether it was pushed.
local function push_kept(f, id, agent, rec, dispatch)
  if not f[7] then return false end
  redis.call('HDEL', ledger(id), 'pm', 'pk', 'ps', 'pq', 'ph')
  if dispatch ~= 1 or not rec or put(f[10], f[9], agent) ~= rec['queue'] then return false end
  if f[11] == '1' and rec['handler_tasks'] ~= true then return false end
  redis.call('LPUSH', put(f[8], f[9], agent), put(f[7], f[9], agent))
  return true
end

-- Hand a waiting task to `agent` (a new dispatch number; `rec` its registration, when read).
-- Returns {id, dispatch, spec} for the caller to publish, or {id, dispatch} when its kept
-- message was pushed here; nil when the task no longer waits (it ended or moved meanwhile);
-- false when the task is to avoid this agent (it failed there: the recovery that moved it
-- said so).
local function assign(cx, id, agent, client, est, rec)
  local l = ledger(id)
  local f = redis.call('HMGET', l, 'state', 'agent', 'spec', 'type', 'avoid', 'queued_at',
                       'pm', 'pk', 'ps', 'pq', 'ph')
  if f[1] ~= 'queued' and f[1] ~= 'parked' then return nil end
  if f[5] and string.find(',' .. f[5] .. ',', ',' .. agent .. ',', 1, true) then return false end
  if f[2] and redis.call('SREM', K.INFLIGHT .. f[2], id) == 1 then inflight_changed(f[2]) end
  local dispatch = redis.call('HINCRBY', l, 'dispatch', 1)
  redis.call('HSET', l, 'state', 'routed', 'agent', agent, 'routed_at',
             string.format('%.17g', cx.now), 'deliveries', 0)
  if client then redis.call('HSET', l, 'fc', client, 'fest', est) end
  redis.call('HDEL', l, 'pid', 'bl', 'blw', 'due', 'avoid')
  redis.call('RPUSH', history(id), cjson.encode({ts = cx.now, state = 'routed', agent = agent,
                                                  from = f[1]}))
  if redis.call('SADD', K.INFLIGHT .. agent, id) == 1 then inflight_changed(agent) end
  redis.call('HINCRBY', K.COUNTERS, 'routed', 1)
  redis.call('ZREM', K.PARKED, id)
  event(cx, 'task.routed', 'dispatch', {task_id = id, agent_id = agent, type = f[4],
                                        dispatch = dispatch})
  event_if_wanted(cx, 'task.dispatched', 'dispatch', {task_id = id, agent_id = agent,
                                                      waited_s = cx.now - num(f[6], cx.now)})
  if push_kept(f, id, agent, rec, dispatch) then return {id, dispatch} end
  return {id, dispatch, f[3]}
end

-- An agent's free slots: concurrency + prefetch - its unended tasks (0 when it may not take
-- work now: not active, heartbeat stale, circuit not closed unless `trusted` (a router that
-- chose it already judged its circuit: a half-open trial it took, or the ejection floor),
-- not registered).
local function free_slots(cx, agent, trusted)
  if redis.call('HGET', K.AGENT_STATUS, agent) ~= 'active' then return 0, nil end
  local beat = num(redis.call('HGET', K.HEARTBEATS, agent), 0)
  if cx.now - beat > cx.timeout then return 0, nil end
  local circuit = redis.call('HGET', K.CIRCUIT .. agent, 'state')
  if not trusted and (circuit == 'open' or circuit == 'half_open') then return 0, nil end
  local raw = redis.call('HGET', K.AGENTS, agent)
  if not raw then return 0, nil end
  local rec = cjson.decode(raw)
  local cap = num(rec['concurrency'], 1) + cx.prefetch
  return cap - redis.call('SCARD', K.INFLIGHT .. agent), rec
end

-- Dispatch to `agent` the best waiting tasks it can take, while it has free slots (at most
-- `limit`). Returns a flat list {id, dispatch, spec, ...} for the caller to publish (a task
-- whose kept message was pushed here is not in it).
local function fill(cx, agent, limit, trusted)
  local out = {}
  if redis.call('SCARD', K.BL_SETS) == 0 then return out end
  local free, rec = free_slots(cx, agent, trusted)
  if limit and limit < free then free = limit end
  if free <= 0 then return out end
  local sets = bl_sets_for(rec['capabilities'])
  local skipped = {}
  while free > 0 and #sets > 0 and #skipped < 10 do
    local k, p, c, t = bl_best(sets)
    if not k then break end
    local id = bl_pop(k, p, c)
    if id then
      local est = num(redis.call('HGET', K.FAIR_EST, c), cx.est)
      local got = assign(cx, id, agent, c, est, rec)
      if got then
        charge(cx, k, p, c, t)
        if got[3] then  -- for the caller to publish (no kept message was pushed)
          out[#out + 1] = got[1]
          out[#out + 1] = got[2]
          out[#out + 1] = got[3]
        end
        free = free - 1
      elseif got == false then
        skipped[#skipped + 1] = {id, k, p, c}
      end
    end
  end
  -- Tasks that avoid this agent go back where they were, ahead of their client's others.
  for i = #skipped, 1, -1 do
    local s = skipped[i]
    bl_push(s[1], s[2], s[3], s[4], true)
  end
  return out
end

-- A keyed task takes one of its key's permits, or waits in the key's own list (where it holds
-- back no other task). Returns true when it holds a permit.
local function ck_admit(id, l, key, limit)
  if not key or key == '' then return true end
  redis.call('HSET', K.CK_LIMITS, key, limit)
  redis.call('HSET', l, 'ckey', key)
  local h = ck_holders(key)
  if redis.call('SISMEMBER', h, id) == 1 then return true end
  if redis.call('SCARD', h) < tonumber(limit) then
    redis.call('SADD', h, id)
    return true
  end
  redis.call('RPUSH', ck_waiting(key), id)
  redis.call('HSET', l, 'blw', key)
  return false
end

-- A keyed task ended: its permit goes to the next waiting task of the key, which joins the
-- backlog.
local function ck_release(id, l)
  local key = redis.call('HGET', l, 'ckey')
  if not key then return end
  local h = ck_holders(key)
  redis.call('SREM', h, id)
  local limit = num(redis.call('HGET', K.CK_LIMITS, key), 1)
  while redis.call('SCARD', h) < limit do
    local nxt = redis.call('LPOP', ck_waiting(key))
    if not nxt then break end
    local l2 = ledger(nxt)
    local f = redis.call('HMGET', l2, 'state', 'bl')
    if (f[1] == 'queued' or f[1] == 'parked') and f[2] then
      redis.call('SADD', h, nxt)
      redis.call('HDEL', l2, 'blw')
      local k, p, c = split_slot(f[2])
      bl_push(nxt, k, p, c, false)
    end
  end
  if redis.call('SCARD', h) == 0 and redis.call('LLEN', ck_waiting(key)) == 0 then
    redis.call('HDEL', K.CK_LIMITS, key)
  end
end

-- Put a task into the backlog (state `queued` or `parked`): behind its key's limit, or into
-- its (set, priority, client) list; at the front when it had already been dispatched once.
local function enqueue(cx, id, state, k, p, c, key, limit, front, avoid, keep)
  local l = ledger(id)
  redis.call('HSET', l, 'state', state, 'bl', k .. '|' .. p .. '|' .. c)
  -- A restored waiting task keeps its time queued and its place in the order.
  if not keep or redis.call('HEXISTS', l, 'queued_at') == 0 then
    redis.call('HSET', l, 'queued_at', string.format('%.17g', cx.now))
  end
  if not keep or redis.call('HEXISTS', l, 'qseq') == 0 then
    redis.call('HSET', l, 'qseq', redis.call('INCR', K.BL_SEQ))
  end
  if avoid and avoid ~= '' then redis.call('HSET', l, 'avoid', avoid) end
  if ck_admit(id, l, key, limit) then bl_push(id, k, p, c, front) end
  if state == 'queued' then
    event_if_wanted(cx, 'task.queued', 'dispatch', {task_id = id, capabilities = k,
                                                    priority = tonumber(p), client_id = c,
                                                    concurrency_key = key})
  end
end

-- The context of a dispatching script from its ARGV section: now, weights JSON, default
-- estimate, prefetch, heartbeat timeout, events cap.
local function context(a)
  return {now = tonumber(a[1]), weights = cjson.decode(a[2]), est = tonumber(a[3]),
          prefetch = tonumber(a[4]), timeout = tonumber(a[5]), maxlen = a[6]}
end
