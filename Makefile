# mlbackend developer commands. Every target sets up what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := .tools/node_modules/.bin/buf
BUF_VERSION := 1.75.0
STAMP := $(VENV)/.installed

.PHONY: venv proto proto-check lint buf-lint buf-breaking buf-baseline fmt typecheck test sanitize demo up clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py native/protowire.h services/mlbackend_serving/_treewalk.c services/mlbackend_serving/_oipwire.c services/mlbackend_features/_wire.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUF):
	npm install --silent --no-save --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

## Regenerate Python wire code and mypy stubs from protos/ (committed).
proto: venv
	$(BIN)/python scripts/gen_protos.py --out clients

buf-lint: $(BUF)
	$(BUF) lint

## Compare protos/ with the committed image of the last released contract.
buf-breaking: $(BUF)
	$(BUF) breaking --against contracts/baseline.binpb

## Update the baseline on purpose, when a breaking change is intended or a release is cut.
buf-baseline: $(BUF)
	$(BUF) build -o contracts/baseline.binpb

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy services clients/mlbackend_clients scripts

lint: venv buf-lint buf-breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services clients/mlbackend_clients scripts

test: venv
	$(BIN)/python -m pytest

## The C extensions under ASan/UBSan: their tests and a bounded mutation fuzz.
sanitize: venv
	$(BIN)/python scripts/sanitize_native.py

## The main job on the embedded defaults.
demo: venv
	$(BIN)/mlbackend demo --data-dir $${DATA_DIR:-./data}

up: venv
	$(BIN)/mlbackend up --data-dir $${DATA_DIR:-./data}

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
