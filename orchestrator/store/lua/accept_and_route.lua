-- A client's submission in one atomic step: ACCEPT and ROUTE (to an agent chosen beforehand)
-- and the broker message's own Redis pushes (built for dispatch 1, a new task's first). A task
-- that is not new changes nothing and nothing is pushed. KEYS = ACCEPT's six, ROUTE's eight,
-- then one list key per push; ARGV = three sections (ACCEPT's, ROUTE's, the payloads).
-- ROUTE checks the agent's free slots: when another router took the last one since the pick,
-- the new task waits in the backlog instead (a fourth section: the backlog context, set,
-- priority, client) and nothing is pushed. Returns {"routed", "1"}, {"queued", ""} or
-- ACCEPT's {"resume" | "duplicate", state}.
local accepting, at = section(1)
local routing, at2 = section(at)
local payloads, at3 = section(at2)
local waiting = section(at3)
local got = accept({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, accepting)
if got[1] ~= 'new' then return got end
-- ACCEPT has just set the new task's dispatch to 0, so ROUTE makes it 1, as in the message.
local routed = route({KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]},
                     routing)
if routed[1] == -1 then
  local cx = context(waiting)
  enqueue(cx, routing[5], 'queued', waiting[7], waiting[8], waiting[9], '', 1, false)
  redis.call('RPUSH', KEYS[2], cjson.encode({ts = cx.now, state = 'queued'}))
  redis.call('HINCRBY', KEYS[9], 'queued', 1)
  return {'queued', ''}
end
for i = 1, #payloads do redis.call('LPUSH', KEYS[14 + i], payloads[i]) end
return {'routed', '1'}
