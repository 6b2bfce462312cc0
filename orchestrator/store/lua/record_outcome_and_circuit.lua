-- KEYS: stats_key, circuit_key
-- ARGV: outcome.agent, outcome.ok, outcome.latency_ms, outcome.success_alpha,
--   outcome.latency_alpha, outcome.task_type, breaker.ok, breaker.now, breaker.failure_threshold,
--   breaker.successes_to_close, breaker.window_size, breaker.minimum_calls, breaker.failure_rate
-- RECORD_OUTCOME and RECORD_CIRCUIT in one round trip (the agent's hot path), their texts
-- unchanged: the agent's stats hash and its circuit hash; RECORD_OUTCOME's six arguments,
-- then RECORD_CIRCUIT's seven. Returns RECORD_CIRCUIT's transition.
local stats_key, circuit_key = KEYS[1], KEYS[2]
local outcome_argv, breaker_argv = {unpack(ARGV, 1, 6)}, {unpack(ARGV, 7, 13)}
outcome({stats_key}, outcome_argv)
return circuit({circuit_key}, breaker_argv)
