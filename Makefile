# swarrow developer tasks. `make` alone lists them.
VENV ?= .venv
PY = $(VENV)/bin/python
STAMP = $(VENV)/.install-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Lint only the trees that exist, so a checkout without benchmarks/ still lints.
LINT_PATHS = $(wildcard swarrow processors tests benchmarks)

.DEFAULT_GOAL := help
.PHONY: help install rabbitmq run test test-unit test-reliability lint bench bench-quick clean

help: ## List the targets
	@echo "usage: make <target>   (VENV=$(VENV))"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(PY):
	@py=""; \
	for c in python3.11 python3 python3.12 python3.13; do \
		if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
			py=$$c; break; \
		fi; \
	done; \
	if [ -z "$$py" ]; then echo "error: swarrow needs Python >= 3.11 (python3.11 or python3)" >&2; exit 1; fi; \
	echo "creating $(VENV) with $$(command -v $$py) ($$($$py -V))"; \
	$$py -m venv $(VENV)

# Re-runs only when pyproject.toml changes (or the venv is new); the stamp lives in the venv so a fresh venv
# always installs.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## Create the venv if missing and install swarrow editable with the dev extras

rabbitmq: ## Make sure RabbitMQ listens on 127.0.0.1:5672 (skip with SWARROW_SKIP_RABBITMQ=1)
	@if [ "$(SWARROW_SKIP_RABBITMQ)" = 1 ]; then \
		echo "SWARROW_SKIP_RABBITMQ=1: not starting RabbitMQ (SWARROW_URL=$${SWARROW_URL:-unset})"; \
	else \
		scripts/rabbitmq.sh start; \
	fi

run: install rabbitmq ## Run the demo: publish a few thousand messages and consume them
	$(PY) -m swarrow.demo

test: install rabbitmq ## Run the whole test suite (pass options with PYTEST_ARGS=...)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: install ## Run the tests that need no broker
	$(PY) -m pytest -q -m "not integration and not reliability and not prometheus" $(PYTEST_ARGS)

test-reliability: install rabbitmq ## Run the chaos suite in tests/reliability
	$(PY) -m pytest -q tests/reliability -m reliability $(PYTEST_ARGS)

lint: install ## ruff check and mypy --strict
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m mypy --strict swarrow processors

bench: install rabbitmq ## Run the benchmarks (benchmarks/run.py, options with BENCH_ARGS=...)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

bench-quick: install rabbitmq ## Run a short benchmark pass
	$(PY) benchmarks/run.py --quick $(BENCH_ARGS)

clean: ## Remove caches and build output (keeps the venv)
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .install-stamp *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
