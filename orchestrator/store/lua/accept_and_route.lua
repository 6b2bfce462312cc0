-- A client's submission in one atomic step: ACCEPT and ROUTE (to an agent chosen beforehand)
-- and the broker message's own Redis pushes (built for dispatch 1, a new task's first). A task
-- that is not new changes nothing and nothing is pushed. KEYS = ACCEPT's six, ROUTE's eight,
-- then one list key per push; ARGV = three sections (ACCEPT's, ROUTE's, the payloads).
-- Returns {"routed", "1"} or ACCEPT's {"resume" | "duplicate", state}.
local accepting, at = section(1)
local routing, at2 = section(at)
local payloads = section(at2)
local got = accept({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, accepting)
if got[1] ~= 'new' then return got end
-- ACCEPT has just set the new task's dispatch to 0, so ROUTE makes it 1, as in the message.
route({KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]}, routing)
for i = 1, #payloads do redis.call('LPUSH', KEYS[14 + i], payloads[i]) end
return {'routed', '1'}
