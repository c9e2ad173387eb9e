# The two commands: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup test demo bench clean

setup:
	@bash tools/setup.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	@bash tools/demo.sh

bench: setup
	$(PY) tools/bench_prune.py

clean:
	rm -rf work data/fashion-mnist .pytest_cache
