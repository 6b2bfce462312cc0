-- KEYS: stats
-- ARGV: agent, ok, latency_ms, success_alpha, latency_alpha, task_type
-- One outcome in an agent's `stats` hash: `ok` (1/0) and `latency_ms` move the agent's success
-- rate and latency averages (EWMA, by `success_alpha` and `latency_alpha`). (What an agent has
-- in flight is the size of its in-flight set, which routing and finishing keep; see load_fleet.)
-- With a `task_type` ('' = none), the same figures per agent and type too
-- (`<agent>|<type>|n|sr|lat`), which orchestrator.optimize turns into the per-capability
-- performance scores routing uses.
local stats = KEYS[1]
local agent, ok, latency_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local success_alpha, latency_alpha, task_type = ARGV[4], ARGV[5], ARGV[6]
if ok == 1 then redis.call('HINCRBY', stats, agent .. '|ok', 1)
else redis.call('HINCRBY', stats, agent .. '|fail', 1) end
local function ewma(prefix)
  local sr = tonumber(redis.call('HGET', stats, prefix .. '|sr') or '1')
  sr = sr + tonumber(success_alpha) * (ok - sr)
  redis.call('HSET', stats, prefix .. '|sr', tostring(sr))
  local value = latency_ms
  local old = redis.call('HGET', stats, prefix .. '|lat')
  if old then value = tonumber(old) + tonumber(latency_alpha) * (latency_ms - tonumber(old)) end
  redis.call('HSET', stats, prefix .. '|lat', tostring(value))
end
ewma(agent)
if task_type and task_type ~= '' then
  local prefix = agent .. '|' .. task_type
  redis.call('HINCRBY', stats, prefix .. '|n', 1)
  ewma(prefix)
end
return 1
