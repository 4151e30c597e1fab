# swarrow developer tasks. `make` alone lists them.
VENV ?= .venv
PY = $(VENV)/bin/python
STAMP = $(VENV)/.install-stamp
PYTEST_ARGS ?=
RABBITMQ_SCRIPT ?= scripts/rabbitmq.sh
BENCH_ARGS ?=
# The benchmark's peers (FastStream, dramatiq) live in a venv of their own: FastStream pins aio-pika ranges
# that must not move the project's.
PEERS_VENV = benchmarks/.venv-peers
PEERS_PY = $(PEERS_VENV)/bin/python
PEERS_STAMP = $(PEERS_VENV)/.install-stamp
PEERS_REQ = benchmarks/peers-requirements.txt
# Lint only the trees that exist, so a checkout without benchmarks/ still lints.
LINT_PATHS = $(wildcard swarrow processors tests benchmarks)

.DEFAULT_GOAL := help
.PHONY: test-lowest test-lowest-unit test-lowest-smoke help install rabbitmq postgresql cluster cluster-stop test-cluster run test test-unit test-reliability lint bench bench-quick bench-peers-env clean

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
		$(RABBITMQ_SCRIPT) start; \
	fi

cluster: ## Start a 3-node RabbitMQ cluster on 127.0.0.1:5701-5703 for the cluster tests (scripts/rabbitmq-cluster.sh)
	scripts/rabbitmq-cluster.sh start

cluster-stop: ## Stop the 3-node cluster that `make cluster` started
	scripts/rabbitmq-cluster.sh stop

postgresql: ## Start the job-tracking tests' PostgreSQL on 127.0.0.1:55432 (scripts/postgresql.sh; best effort)
	@scripts/postgresql.sh start || echo "warning: no PostgreSQL (apt-get install postgresql): its job-store tests are skipped" >&2

# Without SWARROW_URL, a RabbitMQ that cannot be installed or started (no root, no apt) is no dead end: the
# demo runs on the in-memory broker and says so on its first line.
run: install ## Run the demo: publish a few thousand messages and consume them (in memory if no RabbitMQ)
	@if [ -n "$$SWARROW_URL" ] || [ "$(SWARROW_SKIP_RABBITMQ)" = 1 ]; then \
		$(PY) -m swarrow.demo; \
	elif $(RABBITMQ_SCRIPT) start; then \
		$(PY) -m swarrow.demo; \
	else \
		$(PY) -m swarrow.demo --in-memory "RabbitMQ could not be installed or started (see above)"; \
	fi

test: install rabbitmq postgresql ## Run the whole test suite (pass options with PYTEST_ARGS=...)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: install ## Run the tests that need no broker
	$(PY) -m pytest -q -m "not integration and not reliability and not prometheus and not cluster" $(PYTEST_ARGS)

# The lowest versions pyproject.toml allows, in a venv of their own: a lower bound that does not work
# fails here, not on a user's machine. Re-installs only when pyproject.toml changes.
LOWEST_VENV = .venv-lowest
LOWEST_PY = $(LOWEST_VENV)/bin/python
LOWEST_STAMP = $(LOWEST_VENV)/.install-stamp
LOWEST_SMOKE = tests/integration/test_amqp_provider.py tests/integration/test_ack_rabbitmq.py \
	tests/integration/test_cli_rabbitmq.py tests/integration/test_fastpath_rabbitmq.py

$(LOWEST_STAMP): pyproject.toml scripts/lowest-constraints.py | $(PY)
	@test -x $(LOWEST_PY) || { echo "creating $(LOWEST_VENV)"; $(PY) -m venv --clear $(LOWEST_VENV); }
	$(PY) scripts/lowest-constraints.py > $(LOWEST_VENV)/constraints.txt
	@cat $(LOWEST_VENV)/constraints.txt
	$(LOWEST_PY) -m pip install --disable-pip-version-check -q -c $(LOWEST_VENV)/constraints.txt -e '.[dev]'
	$(LOWEST_PY) -m pip list --disable-pip-version-check 2>/dev/null | \
		grep -iE '^(aio-pika|aiormq|pamqp|anyio|click|prometheus.client|uvloop|asyncpg) '
	@touch $@

test-lowest: test-lowest-unit test-lowest-smoke ## Unit tests + a RabbitMQ smoke test on the lowest dependency versions allowed

# The two halves apart, so CI runs the unit half (no broker) beside `make test`'s cluster tests, which mostly wait.
test-lowest-unit: $(LOWEST_STAMP) ## The unit tests on the lowest dependency versions (no broker)
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider -m "not integration and not reliability and not prometheus" \
		--ignore=tests/cluster \
		$(PYTEST_ARGS)

test-lowest-smoke: $(LOWEST_STAMP) rabbitmq ## The RabbitMQ smoke test on the lowest dependency versions
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider $(LOWEST_SMOKE) $(PYTEST_ARGS)

test-reliability: install rabbitmq ## Run the chaos suite in tests/reliability
	$(PY) -m pytest -q tests/reliability -m reliability $(PYTEST_ARGS)

test-cluster: install cluster ## Run the cluster suite in tests/cluster (starts the 3-node cluster first)
	$(PY) -m pytest -q tests/cluster -m cluster $(PYTEST_ARGS)

lint: install ## ruff check and mypy --strict
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m mypy --strict swarrow processors

# Like $(STAMP): re-runs only when the pins change or the venv is new. Bounded retries, so a machine without
# PyPI fails fast; a failed install leaves no stamp and the next run tries again.
$(PEERS_STAMP): $(PEERS_REQ) | $(PY)
	@test -x $(PEERS_PY) || { echo "creating $(PEERS_VENV)"; $(PY) -m venv $(PEERS_VENV); }
	$(PEERS_PY) -m pip install --disable-pip-version-check -q --retries 1 --timeout 20 -r $(PEERS_REQ)
	@touch $@

bench-peers-env: $(PEERS_STAMP) ## Build benchmarks/.venv-peers: FastStream and dramatiq, pinned, for the bench

# The peers are best effort: when their venv cannot be built the bench says so and runs everything else
# (run.py prints why the peers were skipped).
PEERS_OR_SKIP = $(MAKE) --no-print-directory bench-peers-env || \
	echo "warning: could not build $(PEERS_VENV) (is PyPI reachable?): the FastStream and dramatiq peers are skipped" >&2

bench: install rabbitmq ## Run the benchmarks, peers included (benchmarks/run.py, options with BENCH_ARGS=...)
	@$(PEERS_OR_SKIP)
	SWARROW_PEERS_PYTHON=$(abspath $(PEERS_PY)) $(PY) benchmarks/run.py $(BENCH_ARGS)

bench-quick: install rabbitmq ## Run a short benchmark pass (under a minute once the venvs exist)
	@$(PEERS_OR_SKIP)
	SWARROW_PEERS_PYTHON=$(abspath $(PEERS_PY)) $(PY) benchmarks/run.py --quick $(BENCH_ARGS)

bench-cluster: install cluster ## Quorum vs classic, 1 vs 3 nodes, 1 vs 3 workers on the 3-node cluster (benchmarks/cluster.py)
	$(PY) benchmarks/cluster.py $(BENCH_ARGS)

clean: ## Remove caches and build output (keeps the venv)
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .install-stamp *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
