-- KEYS: stats
-- ARGV: agent, ok, latency_ms, success_alpha, latency_alpha, task_type
-- One outcome in an agent's stats. KEYS = stats hash; ARGV = agent, ok (1/0), latency ms,
-- success alpha, latency alpha, task type ('' = none). (What an agent has in flight is the
-- size of its in-flight set, which routing and finishing keep; see load_fleet.)
-- With a type, the same figures per agent and type too (`<agent>|<type>|n|sr|lat`), which
-- orchestrator.optimize turns into the per-capability performance scores routing uses.
local a = ARGV[1]
local ok = tonumber(ARGV[2])
local lat = tonumber(ARGV[3])
if ok == 1 then redis.call('HINCRBY', KEYS[1], a .. '|ok', 1)
else redis.call('HINCRBY', KEYS[1], a .. '|fail', 1) end
local function ewma(prefix)
  local sr = tonumber(redis.call('HGET', KEYS[1], prefix .. '|sr') or '1')
  sr = sr + tonumber(ARGV[4]) * (ok - sr)
  redis.call('HSET', KEYS[1], prefix .. '|sr', tostring(sr))
  local value = lat
  local old = redis.call('HGET', KEYS[1], prefix .. '|lat')
  if old then value = tonumber(old) + tonumber(ARGV[5]) * (lat - tonumber(old)) end
  redis.call('HSET', KEYS[1], prefix .. '|lat', tostring(value))
end
ewma(a)
if ARGV[6] and ARGV[6] ~= '' then
  local prefix = a .. '|' .. ARGV[6]
  redis.call('HINCRBY', KEYS[1], prefix .. '|n', 1)
  ewma(prefix)
end
return 1
