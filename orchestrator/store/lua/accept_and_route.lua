-- KEYS: accept.ledger, accept.history, accept.counters, accept.events, accept.outbox,
--   accept.outbox_msg, route.ledger, route.history, route.counters, route.stats, route.parked,
--   route.events, route.outbox, route.outbox_msg, wrr_state, pushes...
-- ARGV: accepting[], routing[], payloads[], waiting[], picking[]
-- A client's submission in one atomic step: ACCEPT and ROUTE and the broker message's own
-- Redis pushes (built for dispatch 1, a new task's first). A task that is not new changes
-- nothing and nothing is pushed. KEYS: ACCEPT's, ROUTE's, the round-robin's state (wrr_pick's
-- `state`), then one list key per push; ARGV: five sections (ACCEPT's, ROUTE's, the payloads,
-- the backlog's: context, set, priority, client; and `picking`: none when the agent was
-- chosen beforehand, else a stand-in id, its queue, '1' when the message is named by type
-- ('0' else), and wrr_pick's ARGV (its peers with their slots).
-- Picking, the next smooth weighted round-robin pick among the peers with a free slot takes
-- the task: the stand-in id in ROUTE's arguments, the list keys and the payloads becomes the
-- pick's (ids with nothing JSON escapes, checked by the caller), and ROUTE checks the pick's
-- slots. ROUTE checks the agent's free slots: when another router took the last one since the
-- pick, or (picking) every peer is full, the new task waits in the backlog instead and
-- nothing is pushed (every peer full: its message is kept for the fill that dispatches it).
-- Returns {"routed", agent}, {"queued", the agent whose slot went, or '' when every peer was
-- full} or ACCEPT's {"resume" | "duplicate", state}; {"peers", ''}, with nothing done, when
-- the round-robin does not know the peers' digest and they were not given (wrr_pick's -1:
-- send them).
local accept_keys, route_keys = {unpack(KEYS, 1, 6)}, {unpack(KEYS, 7, 14)}
local wrr_state = KEYS[15]
local pushes = {unpack(KEYS, 16)}
local accepting, at = section(1)
local routing, at2 = section(at)
local payloads, at3 = section(at2)
local waiting, at4 = section(at3)
local picking = section(at4)
-- `picking`: stand-in, queue, by type, then wrr_pick's digest, task_id, all_free, ids?, ...
if #picking > 0 and not picking[7] and redis.call('HGET', wrr_state, 'd') ~= picking[4] then
  return {'peers', ''}
end
local got = accept(accept_keys, accepting)
if got[1] ~= 'new' then return got end

-- Into the backlog; `refused` is the agent whose slot went ('' when every peer was full:
-- then the message built for the stand-in is kept with the task, for the fill that
-- dispatches it to push (backlog.push_kept)).
local function wait(refused)
  local cx = context(waiting)
  if refused == '' and #payloads == 1 then
    redis.call('HSET', accept_keys[1], 'pm', payloads[1], 'pk', pushes[1], 'ps', picking[1],
               'pq', picking[2], 'ph', picking[3])
  end
  enqueue(cx, routing[5], 'queued', waiting[7], waiting[8], waiting[9], '', 1, false)
  redis.call('RPUSH', accept_keys[2], cjson.encode({ts = cx.now, state = 'queued'}))  -- history
  redis.call('HINCRBY', route_keys[3], 'queued', 1)  -- counters
  return {'queued', refused}
end

local agent = routing[1]
if #picking > 0 then
  local stand_in = picking[1]
  local wrr_argv = {unpack(picking, 4)}
  local best = wrr({wrr_state}, wrr_argv)
  if best == 0 then return wait('') end
  -- The pick's leaf (lua/wrr_pick.lua): {b, w, slots, full, cur}, then its id.
  local raw = redis.call('HGET', wrr_state, 'l' .. best)
  local _, _, room, _, _, at = struct.unpack('>diiBd', raw)
  agent = string.sub(raw, at)
  for i = 1, #routing do routing[i] = put(routing[i], stand_in, agent) end
  routing[9] = tostring(room)  -- ROUTE's `slots`
  for i = 1, #pushes do
    pushes[i] = put(pushes[i], stand_in, agent)
    payloads[i] = put(payloads[i], stand_in, agent)
  end
end
-- ACCEPT has just set the new task's dispatch to 0, so ROUTE makes it 1, as in the message.
local routed = route(route_keys, routing)
if routed[1] == -1 then return wait(agent) end
for i = 1, #payloads do redis.call('LPUSH', pushes[i], payloads[i]) end
return {'routed', agent}
