# Two commands matter: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JS_STAMP := tests/js/node_modules/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
# The local capture server that `make run` starts next to the service (inbox on HTTP).
CAPTURE_SMTP_PORT ?= 1025
CAPTURE_HTTP_PORT ?= 8025

.PHONY: run test lint typecheck pytest chromium node postgresql bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "notifier needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# The capture server runs in the background for as long as the service does: the trap
# stops it (SIGTERM, it finishes storing what it received) when serve ends or on Ctrl-C.
run: $(STAMP)
	@$(BIN)/python -m notifier.capture --smtp-host $(HOST) --smtp-port $(CAPTURE_SMTP_PORT) \
		--http-host $(HOST) --http-port $(CAPTURE_HTTP_PORT) --dir var/capture & \
	capture=$$!; \
	trap 'kill $$capture 2>/dev/null; wait $$capture 2>/dev/null' EXIT INT TERM; \
	echo "notifier: API at http://$(HOST):$(PORT), operator console at http://$(HOST):$(PORT)/console"; \
	$(BIN)/notifier serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check notifier tests bench
	$(BIN)/ruff format --check notifier tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected no tests: that is a failure here, said plainly.
pytest: $(STAMP) chromium postgresql $(JS_STAMP)
	@$(BIN)/pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

# The inbox page is tested in Debian's headless Chromium; install it when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
		else \
			echo "make test needs Debian's chromium for the inbox browser test:" \
				"run 'sudo apt-get install chromium' (or make test as root)" >&2; \
			exit 1; \
		fi; \
	}

# nodemailer's mailparser (tests/js) reads composed headers as a second, independent RFC 2047
# reader; it needs Node.js and npm. Install Debian's when they are missing.
node:
	@command -v npm >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; \
		else \
			echo "make test needs Node.js and npm for the mailparser test:" \
				"run 'sudo apt-get install nodejs npm' (or make test as root)" >&2; \
			exit 1; \
		fi; \
	}

# The PostgreSQL tests use NOTIFIER_TEST_POSTGRES_URL, else a server on 127.0.0.1:5432, else
# a throwaway cluster they start from Debian's postgresql binaries (tests/postgres.py).
# Install those binaries when none of the three is there. Only a TCP connect is tried here;
# whether the server on 5432 lets the tests in is for tests/postgres.py to find out.
# `make bench` looks at its own variable instead (target-specific, set on bench).
POSTGRES_URL_VARIABLE ?= NOTIFIER_TEST_POSTGRES_URL
postgresql:
	@[ -n "$${$(POSTGRES_URL_VARIABLE)}" ] || \
	$(PYTHON) -c 'import socket; socket.create_connection(("127.0.0.1", 5432), timeout=2).close()' \
		2>/dev/null || \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
		else \
			echo "make $(MAKECMDGOALS) needs PostgreSQL: run 'sudo apt-get install postgresql'" \
				"(or make as root), or set $(POSTGRES_URL_VARIABLE) to a server it may" \
				"create databases on" >&2; \
			exit 1; \
		fi; \
	}

# The pinned modules, installed again when node_modules is missing or older than the lock.
$(JS_STAMP): tests/js/package-lock.json | node
	npm ci --prefix tests/js --no-audit --no-fund
	@touch $@

test: lint typecheck pytest

# Benchmarks are not part of `make test`; results and how to read them: docs/benchmarks.md.
# Short runs here (about two minutes in all); the doc gives each one's longer command.
# The PostgreSQL ones use NOTIFIER_BENCH_POSTGRES_URL, else what the tests would use.
bench: POSTGRES_URL_VARIABLE = NOTIFIER_BENCH_POSTGRES_URL
bench: $(STAMP) postgresql
	$(BIN)/python bench/render_bench.py --rounds 7
	$(BIN)/python bench/http_bench.py --seconds 1 --rounds 3
	$(BIN)/python bench/delivery_bench.py --messages 500 --rounds 2 --seconds 1
	$(BIN)/python bench/send_bench.py --seconds 1 --rounds 3
	$(BIN)/python bench/outbox_bench.py --messages 500 --rounds 3
	$(BIN)/python bench/replica_bench.py --seconds 1 --rounds 3
	$(BIN)/python bench/memory_bench.py --sends 5000 --warmup 1000
	$(BIN)/python bench/dkim_bench.py --rounds 3

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/js/node_modules
