# Every target an operator or developer needs; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test lint bench migrate up down logs clean samples

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install pinned dependencies

run: $(STAMP) ## Run API, worker, beat and Flower locally; ingest the default sources; Ctrl-C stops all
	$(PY) scripts/run_local.py

test: $(STAMP) ## Full test suite against real PostgreSQL, Redis and a real Celery worker
	$(PY) -m pytest

lint: $(STAMP) ## ruff, mypy and the import layers (lint-imports)
	$(VENV)/bin/ruff check app workers tests scripts celeryconfig.py
	$(VENV)/bin/mypy app workers celeryconfig.py
	$(VENV)/bin/lint-imports

bench: $(STAMP) ## Performance benchmark (1M-row CSV, 100k JSON API, API latency, a 10M-row CSV whole and killed halfway); writes docs/benchmarks.md
	$(PY) scripts/bench.py

migrate: $(STAMP) ## Create the database if missing and apply migrations
	$(PY) -m app.cli migrate

samples: $(STAMP) ## Regenerate the bundled sample data in data/samples/
	$(PY) scripts/generate_samples.py

up: ## docker compose up -d (the whole stack in containers)
	docker compose up -d --build

down: ## docker compose down
	docker compose down

logs: ## Follow docker compose logs
	docker compose logs -f --tail=100

clean: ## Remove caches, test artifacts and the virtualenv
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache test-artifacts bench-out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
