# Reply Guy: `make run` starts the service, `make test` runs lint and the whole suite.
# Both bootstrap .venv from requirements-dev.txt on first use (Python 3.11+ and make only).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Local mode: DEBUG on, SQLite file in var/, the web server, one django-q2 cluster and,
# when Telegram is configured, its poller. Variables in .env (if present) override the
# defaults. Without X credentials the local sandbox stands in for X, the model and
# Telegram (the owner's chat in a browser at the sandbox phone), with demo accounts posting.
run: $(STAMP)
	@set -e; if [ -f .env ]; then set -a; . ./.env; set +a; fi; \
	export DEBUG=$${DEBUG:-true}; \
	$(BIN)/python manage.py migrate --no-input; \
	$(BIN)/python manage.py local_admin; \
	pids=""; \
	if [ -z "$${X_API_KEY:-}" ]; then \
	  eval "$$($(BIN)/python manage.py sandbox --env)"; \
	  $(BIN)/python manage.py sandbox --demo & pids="$$!"; \
	  echo "No X_API_KEY: X, the model and Telegram are the local sandbox (manage.py sandbox)"; \
	fi; \
	$(BIN)/python manage.py qcluster & pids="$$pids $$!"; \
	if [ -n "$${TELEGRAM_BOT_TOKEN:-}" ]; then \
	  $(BIN)/python manage.py telegram_bot & pids="$$pids $$!"; \
	fi; \
	trap 'kill $$pids 2>/dev/null; wait; exit' EXIT INT TERM; \
	echo "Reply Guy: admin at http://$(HOST):$(PORT)/admin/ (Ctrl-C stops everything)"; \
	$(BIN)/python manage.py runserver --noreload $(HOST):$(PORT)

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.breaker_overhead
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.timeline_reads
	$(BIN)/python -m bench.health_latency
	$(BIN)/python -m bench.metrics_scrape --queue-sizes 1000,100000
	$(BIN)/python -m bench.recover_stale
	$(BIN)/python -m bench.dead_letter_retry --rows 1000,10000 --repeats 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
