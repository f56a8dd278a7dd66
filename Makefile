# The README's commands. Each target creates .venv and installs what it needs when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench stack-up stack-down clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,rocksdb]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/mta-feedback demo

lint: $(STAMP)
	$(BIN)/ruff check streams tests
	$(BIN)/ruff format --check streams tests

bench: $(STAMP)
	$(BIN)/python tests/bench_qualify.py

stack-up: $(STAMP)
	$(BIN)/mta-feedback stack up

stack-down: $(STAMP)
	$(BIN)/mta-feedback stack down

clean:
	rm -rf $(VENV) .run build *.egg-info
