-- KEYS: accept.ledger, accept.history, accept.counters, accept.events, accept.outbox,
--   accept.outbox_msg, route.ledger, route.history, route.counters, route.stats, route.parked,
--   route.events, route.outbox, route.outbox_msg, pushes...
-- ARGV: accepting[], routing[], payloads[], waiting[]
-- A client's submission in one atomic step: ACCEPT and ROUTE (to an agent chosen beforehand)
-- and the broker message's own Redis pushes (built for dispatch 1, a new task's first). A task
-- that is not new changes nothing and nothing is pushed. KEYS: ACCEPT's, ROUTE's, then one
-- list key per push; ARGV: three sections (ACCEPT's, ROUTE's, the payloads).
-- ROUTE checks the agent's free slots: when another router took the last one since the pick,
-- the new task waits in the backlog instead (a fourth section: the backlog context, set,
-- priority, client) and nothing is pushed. Returns {"routed", "1"}, {"queued", ""} or
-- ACCEPT's {"resume" | "duplicate", state}.
local accept_keys, route_keys = {unpack(KEYS, 1, 6)}, {unpack(KEYS, 7, 14)}
local pushes = {unpack(KEYS, 15)}
local accepting, at = section(1)
local routing, at2 = section(at)
local payloads, at3 = section(at2)
local waiting = section(at3)
local got = accept(accept_keys, accepting)
if got[1] ~= 'new' then return got end
-- ACCEPT has just set the new task's dispatch to 0, so ROUTE makes it 1, as in the message.
local routed = route(route_keys, routing)
if routed[1] == -1 then
  local cx = context(waiting)
  enqueue(cx, routing[5], 'queued', waiting[7], waiting[8], waiting[9], '', 1, false)
  redis.call('RPUSH', accept_keys[2], cjson.encode({ts = cx.now, state = 'queued'}))  -- history
  redis.call('HINCRBY', route_keys[3], 'queued', 1)  -- counters
  return {'queued', ''}
end
for i = 1, #payloads do redis.call('LPUSH', pushes[i], payloads[i]) end
return {'routed', '1'}
