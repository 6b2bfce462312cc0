-- KEYS: stats_key, circuit_key, finish.ledger, finish.history, finish.counters, finish.plans,
--   finish.deadlines, finish.parked, finish.outbox, finish.outbox_msg, finish.dead_letters,
--   finish.events, count.minute, count.hour, count.total?
-- ARGV: stats[], breaker[], ending[], counts[], dispatching[], result[]
-- The end of a handler run on an agent, in one round trip (the agent's hot path): the agent's
-- stats, its breaker (when the circuit part is not empty), the ledger's terminal state, and,
-- when this run is the one that ended the task, its telemetry. KEYS: the agent's stats hash,
-- its circuit hash, FINISH's keys, TELEMETRY_ADD's; ARGV: six sections (RECORD_OUTCOME's
-- ARGV, RECORD_CIRCUIT's or none, FINISH's, TELEMETRY_ADD's, dispatching: the backlog context
-- (6 items) and the run time in seconds, or none; result: Celery's result of a success, or
-- none: the backend's key prefix, the task's id, the encoded meta without its task_id and
-- closing brace, the expiry in seconds (0: none), the set of the task's aliases, whose keys
-- the backend names as it does the task's). When this run ended the task, the slot it
-- frees is filled from the backlog in the same step (backlog.fill), and a task that came from
-- the backlog corrects its client's fair-share charge by its recorded run time. Returns
-- {FINISH's two items, RECORD_CIRCUIT's transition, then fill's flat list}.
local stats_key, circuit_key = KEYS[1], KEYS[2]
local finish_keys, count_keys = {unpack(KEYS, 3, 12)}, {unpack(KEYS, 13)}
local stats, at = section(1)
local breaker, at2 = section(at)
local ending, at3 = section(at2)
local counts, at4 = section(at3)
local dispatching, at5 = section(at4)
local result = section(at5)
outcome({stats_key}, stats)
local transition = ''
if #breaker > 0 then transition = circuit({circuit_key}, breaker) end
local done = finish(finish_keys, ending)
if done[1] == 1 and #counts > 2 then count(count_keys, counts) end
-- Celery's result, as its Redis backend writes one (SET with the expiry, PUBLISH to the
-- waiters), under the task's id and each alias; not over an earlier SUCCESS (the backend's
-- own rule), nor when another path had already ended the task (it wrote the outcome).
if #result > 0 and done[1] ~= 0 then
  local prefix, task_id, head, expires = result[1], result[2], result[3], tonumber(result[4])
  local current = redis.call('GET', prefix .. task_id)
  if not (current and string.find(current, '"status": "SUCCESS"', 1, true)) then
    local ids = redis.call('SMEMBERS', result[5])
    table.sort(ids)
    table.insert(ids, 1, task_id)
    for _, id in ipairs(ids) do
      local value = head .. ', "task_id": ' .. cjson.encode(id) .. '}'
      if expires > 0 then redis.call('SETEX', prefix .. id, expires, value)
      else redis.call('SET', prefix .. id, value) end
      redis.call('PUBLISH', prefix .. id, value)
    end
  end
end
local out = {done[1], done[2], transition}
if #dispatching == 0 then return out end
local cx = context(dispatching)
if done[1] == 1 then
  local f = redis.call('HMGET', finish_keys[1], 'fc', 'fest')  -- the ledger entry
  if f[1] and f[2] then
    local ran = tonumber(dispatching[7])
    local w = cx.weights[f[1]] or 1
    redis.call('HINCRBYFLOAT', K.FAIR_VT, f[1], (ran - tonumber(f[2])) / w)
    local est = num(redis.call('HGET', K.FAIR_EST, f[1]), ran)
    redis.call('HSET', K.FAIR_EST, f[1], est + 0.3 * (ran - est))
  end
end
for _, item in ipairs(fill(cx, stats[1], nil)) do out[#out + 1] = item end
return out
