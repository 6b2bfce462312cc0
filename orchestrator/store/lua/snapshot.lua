-- KEYS: slot
-- ARGV: pattern, count, extra...
-- A point-in-time copy of the orchestrator's state: every key matching the pattern, and the
-- named extra keys, each with its remaining TTL and its DUMP serialization, read in one atomic
-- step (no other client's command runs in between, so the copy is consistent across keys).
-- It takes no KEYS: the keys are found by SCAN (the script is read-only, never replicated).
-- `pattern` is the MATCH pattern, `count` the SCAN count, `extra` the named keys (ARGV[3..]).
-- Returns {key1, pttl1, dump1, key2, ...}; a key SCAN yields twice is copied once.
local pattern, count = ARGV[1], tonumber(ARGV[2])
local out, seen, cursor = {}, {}, "0"
local function copy(key)
  if seen[key] then return end
  seen[key] = true
  local payload = redis.call("DUMP", key)
  if payload then
    out[#out + 1] = key
    out[#out + 1] = redis.call("PTTL", key)
    out[#out + 1] = payload
  end
end
repeat
  local reply = redis.call("SCAN", cursor, "MATCH", pattern, "COUNT", count)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do copy(key) end
until cursor == "0"
for i = 3, #ARGV do copy(ARGV[i]) end  -- extra
return out
