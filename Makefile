# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per kind of install, each redone when pyproject.toml changes: what running needs
# (`make run`), and that with the dev tools (`make test`, `make lint`, ...).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev
# Material for MkDocs prints a banner about MkDocs 2 on every build; this variable silences it.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

.PHONY: run run-fresh test test-chaos test-all fuzz lint docs bench bench-routing bench-anomaly \
	bench-failover bench-fleet bench-scale bench-dispatch bench-shard \
	clean venv sysdeps FORCE

venv: $(STAMP)

$(BIN)/python:
	@echo "== creating the virtualenv $(VENV)"
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing what running needs into $(VENV) (pip install -e .)"
	$(BIN)/python -m pip install -e .
	touch $(RUN_STAMP)

# The dev extras hold everything the run install does, so its stamp is touched as well.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing the package and the dev tools into $(VENV) (pip install -e '.[dev]')"
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

# Debian packages the tests run for real: Alertmanager (and amtool), Prometheus's promtool.
# Installed only when missing; a machine without apt-get or root gets a warning and the tests
# that need them say why they skip.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sysdeps:
	@{ command -v prometheus-alertmanager && command -v amtool && command -v promtool; } \
	  >/dev/null || { \
	  command -v apt-get >/dev/null && \
	  ( $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	      prometheus-alertmanager prometheus >/dev/null ) || \
	  echo "warning: could not install prometheus-alertmanager and prometheus (promtool)"; }

# The dev stack: its own redis-server on port 6390 unless ORCH_REDIS_URL is set (the banner
# prints what to export in a second terminal), its data, logs and lock in RUN_DIR. The recipe
# execs the stack, so make's child is the stack itself; its target is a file the stack
# watches: make, interrupted (Ctrl-C, or SIGINT to make's pid alone, as an IDE's stop button
# sends), deletes it and waits, and the stack stops. DEV_ARGS: more `orchestrator dev`
# options (--agents 5, --no-flower, ...). `make run-fresh` starts with empty data.
RUN_DIR ?= .run
DEV_ARGS ?=
run: $(RUN_DIR)/running
run-fresh: DEV_FRESH := --fresh
run-fresh: $(RUN_DIR)/running

$(RUN_DIR)/running: $(RUN_STAMP) FORCE
	exec $(BIN)/orchestrator dev --run-dir $(RUN_DIR) --stop-file $@ $(DEV_FRESH) $(DEV_ARGS)

# The suite but the chaos runs, in TEST_WORKERS pytest-xdist processes (each with its own
# redis-server; a test file stays on one process, so a module's shared cluster is started once);
# prints the 15 slowest tests. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not chaos" --durations=15 \
	  $(PYTEST_ARGS)

# The chaos runs alone (workers and Redis killed under load, Sentinel failover; several minutes).
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos --durations=15 $(PYTEST_ARGS)

# Everything CI runs after lint.
test-all: test test-chaos

# The submission fuzzer alone, with more examples than `make test` runs (1,000); FUZZ_SEED=N
# regenerates a batch. -s shows its summary line (the split, the timings, the seed).
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -s --timeout=1800 \
	  tests/integration/test_submit_fuzz.py $(PYTEST_ARGS)

# Ruff, mypy and the import contracts; then the docs site, built strictly into a throwaway
# folder (a broken link, a page missing from the nav or a reference marker nobody fills fails).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && $(MKDOCS) build --strict --quiet --site-dir "$$tmp"

# The documentation site in site/ (mkdocs.yml, docs/); the Reference pages are generated from
# the code at build time (docs/reference_gen.py). `$(BIN)/mkdocs serve` previews it.
docs: $(STAMP)
	$(MKDOCS) build --strict

# The ten headline figures in one table: the routing, scale and fleet benchmarks in turn (about 10
# minutes), each on its own redis-server and workers; writes bench/results.json and RESULTS.md.
# BENCH_ARGS="--quick" for a smoke run of a few minutes, "--only scale" for one stage.
bench: $(STAMP)
	$(BIN)/python bench/bench_all.py $(BENCH_ARGS)

# Routed throughput against plain Celery, round-trip latencies and registration, alone.
bench-routing: $(STAMP)
	$(BIN)/python bench/bench_routing.py $(BENCH_ARGS)

# The anomaly detector scored on ../shared/data/nab-tuning (when present) beside the published
# detectors, with its cost per point and per series; updates bench/RESULTS.md. Then regression
# detection on synthetic run-time series (steps, drifts, noise): detection delay, false alarms.
bench-anomaly: $(STAMP)
	$(BIN)/python bench/bench_anomaly.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_regression.py

# Redis Sentinel failover on loopback (1 primary, 1 replica, 3 sentinels): failover time, the
# client's outage, submissions lost, and what ORCH_SUBMIT_WAIT_REPLICAS costs; updates RESULTS.md.
bench-failover: $(STAMP)
	$(BIN)/python bench/bench_failover.py $(BENCH_ARGS)

# Routing and the periodic loops at 10 and 1,000 synthetic agents (no workers): decision
# latency against PING, registration, the loops' CPU share, memory per task; updates RESULTS.md.
bench-scale: $(STAMP)
	$(BIN)/python bench/bench_scale.py $(BENCH_ARGS)

# One dispatch from the backlog (the fill step) at 10 and 100,000 waiting tasks (50 clients, 3
# priorities, 100 concurrency keys), enqueue and settle at both, the settle's round trips
# (MONITOR); no workers, about 2 minutes; updates RESULTS.md. BENCH_ARGS="--quick" for a smoke run.
bench-dispatch: $(STAMP)
	$(BIN)/python bench/bench_dispatch.py $(BENCH_ARGS)

# Sharding the state store by capability set over a Redis Cluster, simulated (designed, not
# built): the busiest node's share when set names are hashed or shards assigned; a second.
bench-shard: $(STAMP)
	$(BIN)/python bench/shard_sim.py $(BENCH_ARGS)

# Agent worker memory against a plain Celery worker, then 100 real agent processes (-P solo) on
# this machine: registration time, their memory, 3,000 tasks spread by weight; updates RESULTS.md.
bench-fleet: $(STAMP)
	$(BIN)/python bench/bench_fleet.py $(BENCH_ARGS)

# Everything made here: the virtualenv, the tools' caches, the docs site and the dev stack's
# data and logs (.run).
clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache build site *.egg-info
