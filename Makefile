# the project's virtual environment when there is one (scripts/setup.sh makes it)
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: setup test test-fast lint format demo docs bench clean

setup:            ## install segtool + test deps into .venv (CPU torch unless a GPU is present)
	./scripts/setup.sh

# one pytest worker per CPU (pytest-xdist); a test file stays on one worker, so
# its module fixtures are built once. `pytest -p no:xdist` runs serially.
PYTEST = $(PYTHON) -m pytest -q -n auto --dist loadfile

test:             ## the full suite (what CI runs), on every CPU
	$(PYTEST)

test-fast:        ## skip slow tests
	$(PYTEST) -m "not slow"

lint:
	$(PYTHON) -m ruff check segtool tests benchmarks examples scripts
	$(PYTHON) -m ruff format --check segtool tests benchmarks examples scripts

format:
	$(PYTHON) -m ruff format segtool tests benchmarks examples scripts
	$(PYTHON) -m ruff check --fix segtool tests benchmarks examples scripts

demo:             ## init a project from the template and run it end to end
	$(PYTHON) -m segtool init --force /tmp/segtool-demo && $(PYTHON) -m segtool run --project-dir /tmp/segtool-demo && $(PYTHON) -m segtool show behaviour --project-dir /tmp/segtool-demo

docs:             ## regenerate the outputs shown in docs/quickstart.md (CI checks them)
	$(PYTHON) scripts/docs_session.py docs/quickstart.md

bench:
	$(PYTHON) benchmarks/run_sql.py --users 100000

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
