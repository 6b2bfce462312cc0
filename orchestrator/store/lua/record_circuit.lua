-- KEYS: circuit
-- ARGV: ok, now, failure_threshold, successes_to_close, window_size, minimum_calls, failure_rate
-- recovery.breaker.record_success / record_failure, atomically. KEYS = circuit hash;
-- ARGV = ok (1/0), now, failure threshold, successes to close, window size, minimum calls,
-- failure-rate threshold. Returns the transition ('opened', 'closed') or ''.
local h = redis.call('HGETALL', KEYS[1])
local s = {}
for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
local state = s['state'] or 'closed'
if state == '' then state = 'closed' end
local ok = ARGV[1] == '1'
local function open()
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2], 'consecutive_failures', 0,
             'half_open_calls', 0, 'half_open_successes', 0, 'outcomes', '',
             'half_opened_at', '')
  return 'opened'
end
if state == 'closed' then
  local outcomes = (s['outcomes'] or '') .. (ok and 'S' or 'F')
  local window = tonumber(ARGV[5])
  if #outcomes > window then outcomes = string.sub(outcomes, #outcomes - window + 1) end
  if ok then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'consecutive_failures', 0,
               'outcomes', outcomes)
    return ''
  end
  local failures = tonumber(s['consecutive_failures'] or '0') + 1
  local _, nf = string.gsub(outcomes, 'F', '')
  if failures >= tonumber(ARGV[3]) or
     (#outcomes >= tonumber(ARGV[6]) and nf / #outcomes >= tonumber(ARGV[7])) then
    return open()
  end
  redis.call('HSET', KEYS[1], 'state', 'closed', 'consecutive_failures', failures,
             'outcomes', outcomes)
  return ''
elseif state == 'half_open' then
  if not ok then return open() end
  local successes = tonumber(s['half_open_successes'] or '0') + 1
  if successes >= tonumber(ARGV[4]) then
    redis.call('DEL', KEYS[1])
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'half_open_successes', successes)
end
return ''
