# modelcourt — `make run` starts the whole service, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install run web worker test lint bench bench-validity clean-data lock

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The embedded default: SQLite and the filesystem broker under ./data, the web server, a gpu-queue worker
## (disputes, stress tests) and a cpu-queue worker with beat (upload checks, checkpoints, sweeps).
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v 0
	$(BIN)/python manage.py rotate_keys --init
	@echo "modelcourt on http://$(HOST):$(PORT)/  (Ctrl-C stops the web server and the workers)"
	@trap 'kill -TERM $$web $$gpu $$cpu 2>/dev/null; wait' INT TERM; \
	$(BIN)/celery -A workers.celery worker -Q gpu --concurrency=1 --prefetch-multiplier=1 \
		-n gpu@%h --loglevel=INFO & gpu=$$!; \
	$(BIN)/celery -A workers.celery worker --beat -Q cpu --concurrency=2 --prefetch-multiplier=1 \
		-n cpu@%h --schedule $${MODELCOURT_DATA_DIR:-data}/celerybeat-schedule --loglevel=INFO & cpu=$$!; \
	$(BIN)/gunicorn config.wsgi --bind $(HOST):$(PORT) --workers 2 --access-logfile - & web=$$!; \
	wait

web: install
	$(BIN)/gunicorn config.wsgi --bind $(HOST):$(PORT) --workers 2 --access-logfile -

worker: install
	$(BIN)/celery -A workers.celery worker -Q $${QUEUES:-gpu,cpu} --concurrency=1 --prefetch-multiplier=1 --loglevel=INFO

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks.trust_layer
	$(BIN)/python -m benchmarks.dispute_latency
	$(BIN)/python -m benchmarks.sandbox_layers
	$(BIN)/python -m benchmarks.guard

## Outcome rates of every method against every kind of suspect, over five seeds (pure methods, no services).
bench-validity: install
	$(BIN)/python -m benchmarks.validity full

## Regenerate the pinned constraints from the current virtual environment.
lock: install
	$(BIN)/pip freeze --exclude-editable | grep -v "^-e " | sed "s/+cpu$$//" > constraints.txt
