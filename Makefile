# Funnel: `make up` runs the whole local stack with demo traffic; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export FUNNEL_CACHE ?= $(HOME)/.cache/funnel
# The build lives outside the clone so a fresh clone reuses it.
export CARGO_TARGET_DIR ?= $(FUNNEL_CACHE)/target
BIN := $(CARGO_TARGET_DIR)/debug
STACK := infra/local/stack.sh
ENV := eval "$$(infra/local/env.sh)"
VENV := $(FUNNEL_CACHE)/venv

.PHONY: help up down env test build migrate stack-up stack-down stack-status stack-clean check-deps test-rust test-python test-faults-long bench-ingest bench-processor bench-replay bench-isolation bench-webhook

help:
	@echo "make up            stack + services in the background, demo traffic, a funnel summary"
	@echo "make down          stop services and the stack (data kept; make stack-clean deletes it)"
	@echo "make test          every test (starts or reuses the local stack)"
	@echo "make env           export lines for the running stack: eval \"\$$(make -s env)\""
	@echo "make check-deps    no unused dependency (cargo-machete), no I/O in funnel-schemas, no service crate in funnel-loadtest"
	@echo "make stack-up | stack-down | stack-status | stack-clean | migrate | build"
	@echo "make test-faults-long  the processor crash test with 200 kill -9 at random moments (about 6 minutes)"
	@echo "make bench-ingest  ingest throughput/latency as ratios to a bare endpoint and kafka-producer-perf-test"
	@echo "make bench-processor  processor throughput over 2M pre-filled records as ratios to kafka-consumer-perf-test,"
	@echo "                   a bare batched upsert and a one-upsert-per-message consumer; RSS at 10k and 1M contacts"
	@echo "make bench-replay  replay --from earliest of 1M pre-filled records, timed to the switch, as ratios to"
	@echo "                   the processor's first pass and kafka-consumer-perf-test"
	@echo "make bench-isolation  another tenant's p99 while one sends at 10x its limit and holds 12 stalled"
	@echo "                   exports, as a ratio to its p99 alone"
	@echo "make bench-webhook messages/s through a WhatsApp channel's webhook as a ratio to POST /v1/messages/batch"

stack-up:
	@$(STACK) up
stack-down:
	@$(STACK) down
stack-status:
	@$(STACK) status
stack-clean:
	@infra/local/services.sh down || true
	@$(STACK) clean

env:
	@infra/local/env.sh

build:
	cargo build --workspace --bins

migrate: build
	@$(ENV) && $(BIN)/funnel-processor migrate

up: stack-up build
	@infra/local/services.sh up $(BIN)
	@$(ENV) && $(BIN)/funnel-loadtest demo --url "$$FUNNEL_INGEST_URL" --token "$$FUNNEL_TOKEN" \
	  --out "$${FUNNEL_STACK_DIR:-.funnel}/demo"
	@infra/local/summary.sh
	@$(ENV) && echo && echo "Running in the background:" && $(STACK) status && \
	  echo "ingest API: $$FUNNEL_INGEST_URL (OpenAPI: $$FUNNEL_INGEST_URL/openapi.json, UI: $$FUNNEL_INGEST_URL/docs)" && \
	  echo "demo token (tenant default, scopes ingest,read,admin): $$FUNNEL_TOKEN" && \
	  echo 'this shell: eval "$$(make -s env)"; stop everything: make down'

bench-ingest:
	@loadtest/bench-ingest.sh

bench-processor:
	@loadtest/bench-processor.sh

bench-replay:
	@loadtest/bench-replay.sh

bench-isolation:
	@loadtest/bench-isolation.sh

bench-webhook:
	@loadtest/bench-webhook.sh

down:
	@infra/local/services.sh down
	@$(STACK) down

test: stack-up
	@$(MAKE) --no-print-directory check-deps
	@$(MAKE) --no-print-directory test-rust
	@$(MAKE) --no-print-directory test-python

check-deps:
	@infra/local/check-deps.sh

test-rust:
	@$(ENV) && cargo test --workspace --no-fail-fast

test-faults-long: stack-up build
	@$(ENV) && FUNNEL_BIN=$(BIN) FUNNEL_CRASH_KILLS=200 $(VENV)/bin/python -m pytest -q -s -p no:cacheprovider \
	  infra/local/tests/test_processor_crash.py

test-python: build
	@$(ENV) && FUNNEL_BIN=$(BIN) $(VENV)/bin/python -m pytest -q -p no:cacheprovider infra/local/tests
