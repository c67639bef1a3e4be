# PlayGate: `make run` serves on 127.0.0.1:8080 (embedded: SQLite, no servers); `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What each command needs in .venv: the service alone for run and reset; the test and bench extras beside it.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run reset test lint typecheck layers check install clean web web-test bench chaos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

# The web app (web/): npm installs from the lock file (workspaces: the player kit in web/packages/player), vite
# builds the kit (library mode, typings by tsc) and the app into src/playgate/web/dist, served at /app/.
WEB_STAMP := web/node_modules/.package-lock.json

$(WEB_STAMP): web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web: $(WEB_STAMP)
	cd web && npm run build

# The Socket.IO compatibility tests (tests/compat) drive the real socket.io-client 2 and 4 in Node.
COMPAT_STAMP := tests/compat/node_modules/.package-lock.json

$(COMPAT_STAMP): tests/compat/package-lock.json
	cd tests/compat && npm ci --no-audit --no-fund

# The player kit's unit tests (web/packages/player, vitest).
web-test: $(WEB_STAMP)
	cd web && npm test

# The browser tests drive Debian's chromium (tests/browser); installed here when missing.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core

# `set -m`: the service runs as a job of its own, the terminal's foreground one, so Ctrl-C reaches it alone (it
# stops cleanly) and not make, which would report "Interrupt"; SIGTERM to the service stops it cleanly as well.
run: SHELL := /bin/bash
run: $(RUN_STAMP) web
	@set -m; $(BIN)/playgate serve; exit $$?

# Delete every user, video, plan, stream and decision (stop the service first); the next run loads the demo again.
reset: $(RUN_STAMP)
	$(BIN)/playgate db reset --yes

# promtool (Debian package prometheus) checks and unit-tests the alert rules in deploy/prometheus (tests/ops).
PROMTOOL := /usr/bin/promtool

$(PROMTOOL):
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

# A real nginx runs in front of the media in tests/lifecycle (auth_request; deploy/nginx); installed when missing.
NGINX := /usr/sbin/nginx

$(NGINX):
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx

# ffprobe (Debian package ffmpeg) reads the HLS and DASH streams through the content gate in tests/lifecycle.
FFPROBE := /usr/bin/ffprobe

$(FFPROBE):
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg

# PgBouncer in transaction mode stands in front of PostgreSQL in tests/distributed/test_postgres_urls.py.
PGBOUNCER := /usr/sbin/pgbouncer

$(PGBOUNCER):
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer

# pytest-xdist workers, one per core (tests/conftest.py keeps the tests that share a fixture's processes on one
# worker); TEST_WORKERS=0 runs every test in this process alone. Three on this 2-core machine took 5 to 5.5 minutes
# of pytest instead of 7 to 7.5, but one of seven such runs failed three Redis failover and restart tests that passed
# alone and in every run with two (2026-12-01); four, when several sessions shared the machine (load average about
# 25), gave failures and setup errors.
TEST_WORKERS ?= 2

test: $(STAMP) web $(COMPAT_STAMP) $(CHROMIUM) $(PROMTOOL) $(NGINX) $(FFPROBE) $(PGBOUNCER)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-cache
	cd web && npm test
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy src

# The layers of DESIGN.md ([tool.importlinter] in pyproject.toml): no module imports from a layer above its own.
layers: $(STAMP)
	$(BIN)/lint-imports --no-cache

check: lint typecheck layers

# The benchmark (bench/README.md): a sweep over C, the admission path alone, 10,000 idle sockets.
# On a 2-core machine the server is pinned to core 0 and the load to core 1. Reports: bench/reports/.
BENCH_DURATION ?= 30
bench: $(STAMP)
	$(BIN)/playgate bench load --sweep 10:10,100:20,1000:20,5000:20 --duration $(BENCH_DURATION) --warmup 5 \
	  --server-cpu 0 --load-cpu 1
	$(BIN)/playgate bench admission --ledger sqlite
	$(BIN)/playgate bench admission --ledger redis
	$(BIN)/playgate bench idle --sockets 10000 --server-cpu 0 --load-cpu 1

# The chaos harness (README, Failure modes): a distributed deployment on loopback, faults injected under load, every
# request audited; exits non-zero when an invariant fails. Needs redis-server and PostgreSQL on 127.0.0.1:5432.
CHAOS_DURATION ?= 60
chaos: $(STAMP)
	$(BIN)/playgate chaos --duration $(CHAOS_DURATION)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/node_modules src/playgate/web/dist
