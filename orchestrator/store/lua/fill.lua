-- KEYS: slot
-- ARGV: cx.now, cx.weights, cx.estimate, cx.prefetch, cx.timeout, cx.maxlen, agent, limit, trusted
-- Dispatch waiting tasks to one agent while it has free slots (backlog.fill): after it
-- registered or woke, its circuit closed, recovery moved work, or from the dispatch sweep.
-- `cx` is the context (6 items, backlog.context), `limit` how many at most ('' = as many as
-- it has slots), `trusted` '1' when the caller (a router that chose the agent) vouches for
-- its circuit. Returns the flat list {task id, dispatch, spec JSON, ...} for the caller to
-- publish.
local cx = context(ARGV)
local agent, limit, trusted = ARGV[7], ARGV[8], ARGV[9] == '1'
if limit == '' then limit = nil else limit = tonumber(limit) end
return fill(cx, agent, limit, trusted)
