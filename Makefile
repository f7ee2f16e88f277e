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

# Local mode (replyguy/launch.py): DEBUG on, SQLite file in var/, the web server, one
# django-q2 cluster and the Telegram poller. Variables in .env (if present) override the
# defaults. Without X credentials the local sandbox stands in for X, the model and
# Telegram (the owner's chat in a browser at the sandbox phone), with demo accounts
# posting. What it adds to .env goes to var/local.env, which manage.py reads too.
# Ctrl-C stops everything.
run: $(STAMP)
	@$(BIN)/python -m replyguy.launch --host $(HOST) --port $(PORT)

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
	$(BIN)/python -m bench.write_limit

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
