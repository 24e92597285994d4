PYTHON ?= python3

.PHONY: setup test test-fast lint format demo bench clean

setup:            ## install segtool + test deps (CPU torch unless a GPU is present)
	PYTHON=$(PYTHON) ./scripts/setup.sh

test:             ## the full suite (what CI runs)
	$(PYTHON) -m pytest -q

test-fast:        ## skip slow tests
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	$(PYTHON) -m ruff check segtool tests benchmarks examples
	$(PYTHON) -m ruff format --check segtool tests benchmarks examples

format:
	$(PYTHON) -m ruff format segtool tests benchmarks examples
	$(PYTHON) -m ruff check --fix segtool tests benchmarks examples

demo:             ## init a project from the template and run it end to end
	rm -rf /tmp/segtool-demo && segtool init /tmp/segtool-demo && segtool run --project-dir /tmp/segtool-demo && segtool show behaviour --project-dir /tmp/segtool-demo

bench:
	$(PYTHON) benchmarks/run_sql.py --users 100000

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
