# The README's commands. Each target creates .venv and installs what it needs when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench stack-up stack-down clean reliability

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,rocksdb]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

# The edit loop: the tests that need no broker, no Redis and no worker subprocess (markers of
# pyproject.toml); nothing is started. `make test` stays the whole suite.
.PHONY: test-fast
test-fast: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m "not broker and not redis and not e2e"

demo: $(STAMP)
	$(BIN)/mta-feedback demo

lint: $(STAMP)
	$(BIN)/ruff check streams tests benchmarks
	$(BIN)/ruff format --check streams tests benchmarks

# Long reliability runs: 30 s Redis outage, bigger fuzz and rebalance volumes, then a
# 10-minute soak at half the measured maximum rate (about 20 minutes in all).
reliability: $(STAMP)
	$(BIN)/mta-feedback stack up
	MTA_RELIABILITY=long $(BIN)/pytest -q -p no:cacheprovider -s \
		tests/e2e/test_crash_recovery.py tests/e2e/test_rebalance.py tests/e2e/test_redis_outage.py \
		tests/e2e/test_producer_outage.py tests/e2e/test_fuzz.py tests/e2e/test_security.py
	$(BIN)/python benchmarks/soak.py --duration 600

# Qualifier speed, the steps per event in process, a gap in event time in the control step,
# the MTA adapters, the HTTP ingest routes and the operator API, then one worker against the
# aiokafka baseline (one JSON line each).
bench: $(STAMP)
	$(BIN)/python benchmarks/qualify_speed.py
	$(BIN)/python benchmarks/step_cost.py
	$(BIN)/python benchmarks/event_time_gap.py
	$(BIN)/python benchmarks/convert_speed.py
	$(BIN)/python benchmarks/ingest_http.py
	$(BIN)/python benchmarks/api_read.py
	$(BIN)/mta-feedback bench --events $(or $(EVENTS),50000)

stack-up: $(STAMP)
	$(BIN)/mta-feedback stack up

stack-down: $(STAMP)
	$(BIN)/mta-feedback stack down

clean:
	rm -rf $(VENV) .run build *.egg-info
