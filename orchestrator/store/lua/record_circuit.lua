-- KEYS: circuit
-- ARGV: ok, now, failure_threshold, successes_to_close, window_size, minimum_calls, failure_rate
-- recovery.breaker.record_success / record_failure, atomically, on the agent's `circuit` hash:
-- an outcome (`ok`: 1/0) at `now`. Closed, it opens after `failure_threshold` failures in a row
-- or, with at least `minimum_calls` outcomes in the last `window_size`, at a share of failures
-- of `failure_rate`; half-open, a failure opens it again and `successes_to_close` successes
-- close it. Returns the transition ('opened', 'closed') or ''.
local circuit = KEYS[1]
local ok, now = ARGV[1] == '1', ARGV[2]
local failure_threshold, successes_to_close = tonumber(ARGV[3]), tonumber(ARGV[4])
local window_size, minimum_calls, failure_rate = tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local h = redis.call('HGETALL', circuit)
local s = {}
for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
local state = s['state'] or 'closed'
if state == '' then state = 'closed' end
local function open()
  redis.call('DEL', circuit)
  redis.call('HSET', circuit, 'state', 'open', 'opened_at', now, 'consecutive_failures', 0,
             'half_open_calls', 0, 'half_open_successes', 0, 'outcomes', '',
             'half_opened_at', '')
  return 'opened'
end
if state == 'closed' then
  local outcomes = (s['outcomes'] or '') .. (ok and 'S' or 'F')
  if #outcomes > window_size then outcomes = string.sub(outcomes, #outcomes - window_size + 1) end
  if ok then
    redis.call('HSET', circuit, 'state', 'closed', 'consecutive_failures', 0,
               'outcomes', outcomes)
    return ''
  end
  local failures = tonumber(s['consecutive_failures'] or '0') + 1
  local _, nf = string.gsub(outcomes, 'F', '')
  if failures >= failure_threshold or
     (#outcomes >= minimum_calls and nf / #outcomes >= failure_rate) then
    return open()
  end
  redis.call('HSET', circuit, 'state', 'closed', 'consecutive_failures', failures,
             'outcomes', outcomes)
  return ''
elseif state == 'half_open' then
  if not ok then return open() end
  local successes = tonumber(s['half_open_successes'] or '0') + 1
  if successes >= successes_to_close then
    redis.call('DEL', circuit)
    return 'closed'
  end
  redis.call('HSET', circuit, 'half_open_successes', successes)
end
return ''
