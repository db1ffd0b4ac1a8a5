# Two commands on a fresh machine: `make run` (the sample bot on the embedded store)
# and `make test` (lint, types, tests). Both create the venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 3978

.PHONY: run run-v1 run-agents run-botbuilder test test-oldest lint bench bench-smoke storm soak screenshots

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,agents,botbuilder,metrics]'
	touch $@

run: $(VENV)/.installed
	$(PY) samples/state_management/bot.py --port $(PORT) --store memory://

run-v1: $(VENV)/.installed
	$(PY) samples/counter_v1/bot.py --port $(PORT)

# Seed 004's bot on the Microsoft SDKs (anonymous: no app id, loopback only).
run-agents: $(VENV)/.installed
	CONNECTIONS__SERVICE_CONNECTION__SETTINGS__ANONYMOUS_ALLOWED=true \
		$(PY) samples/agents_state_management/bot.py --port $(PORT) --store memory://

run-botbuilder: $(VENV)/.installed
	$(PY) samples/botbuilder_state_management/bot.py --port $(PORT) --store memory://

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests samples
	$(VENV)/bin/ruff format --check src tests samples
	$(VENV)/bin/mypy

# The botbuilder-js bot behind the proxy in the tests: npm packages from the lockfile.
JS_BOT := tests/bots/js
$(JS_BOT)/node_modules/.package-lock.json: $(JS_BOT)/package-lock.json
	npm ci --prefix $(JS_BOT) --no-audit --no-fund --loglevel=error

test: lint $(JS_BOT)/node_modules/.package-lock.json
	$(VENV)/bin/pytest

# The README's pictures of the chat page and the inspector: the browser journey of the
# tests, saving a screenshot at each step (needs Debian's chromium).
screenshots: $(VENV)/.installed
	SCREENSHOTS=docs/screenshots $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_browser.py \
		-k test_a_persons_journey

# The aiohttp-facing tests on the oldest aiohttp we support (no RequestKey there).
OLDEST_VENV ?= .venv-oldest
$(OLDEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet "aiohttp==3.12.15" -e '.[test]'
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/pytest -p no:cacheprovider tests/test_server.py tests/test_client.py \
		tests/test_helpers.py tests/test_aiohttp_compat.py tests/test_proxy.py tests/test_rest.py \
		tests/test_hostile.py

# Throughput/latency/memory against a plain aiohttp bot and the SDKs, then the growth
# curves and their plot (needs wrk, taskset, redis-server; about 30 minutes).
bench: $(VENV)/.installed
	$(PY) -m pip install --quiet matplotlib
	$(PY) bench/run.py --targets baseline,memory,sqlite,redis,agents,agents-inline,botbuilder,botbuilder-patched \
		--rate 8000 --mem-users 20000
	$(PY) bench/curves.py

# One short round on baseline and memory: keeps the benchmark script working in CI.
bench-smoke: $(VENV)/.installed
	$(PY) bench/run.py --smoke --json bench/results/smoke.json

# The hostile-input storm of the suite, longer (100,000 requests, a new seed each run;
# SEED=n to replay one). Needs redis-server.
storm: $(VENV)/.installed
	$(PY) -m tests.storm --requests $${REQUESTS:-100000} $${SEED:+--seed $$SEED}

# Load under faults (Redis SIGKILL/SIGSTOP, SQLite disk full, bot SIGKILL), minutes; not
# in CI. Needs redis-server. Prints the report the README's soak table comes from.
soak: $(VENV)/.installed
	$(PY) -m tests.soak --duration $${DURATION:-120} --json bench/results/soak.json
