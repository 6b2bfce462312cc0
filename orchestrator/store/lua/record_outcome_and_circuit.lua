-- KEYS: stats, circuit
-- ARGV: outcome.agent, outcome.ok, outcome.latency_ms, outcome.success_alpha,
--   outcome.latency_alpha, outcome.task_type, breaker.ok, breaker.now, breaker.failure_threshold,
--   breaker.successes_to_close, breaker.window_size, breaker.minimum_calls, breaker.failure_rate
-- RECORD_OUTCOME and RECORD_CIRCUIT in one round trip (the agent's hot path), their texts
-- unchanged. KEYS = stats hash, circuit hash; ARGV = RECORD_OUTCOME's six, then
-- RECORD_CIRCUIT's seven. Returns RECORD_CIRCUIT's transition.
outcome({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]})
return circuit({KEYS[2]}, {ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]})
