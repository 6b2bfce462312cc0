-- The end of a handler run on an agent, in one round trip (the agent's hot path): the agent's
-- stats, its breaker (when the circuit part is not empty), the ledger's terminal state, and,
-- when this run is the one that ended the task, its telemetry. KEYS = stats hash, circuit
-- hash, FINISH's ten keys, the three telemetry keys; ARGV = four sections (RECORD_OUTCOME's
-- six, RECORD_CIRCUIT's seven or none, FINISH's, TELEMETRY_ADD's). Returns {FINISH's two
-- items, RECORD_CIRCUIT's transition}.
local stats, at = section(1)
local breaker, at2 = section(at)
local ending, at3 = section(at2)
local counts = section(at3)
outcome({KEYS[1]}, stats)
local transition = ''
if #breaker > 0 then transition = circuit({KEYS[2]}, breaker) end
local done = finish({KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
                     KEYS[11], KEYS[12]}, ending)
if done[1] == 1 and #counts > 2 then count({KEYS[13], KEYS[14], KEYS[15]}, counts) end
return {done[1], done[2], transition}
