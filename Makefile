# Liberator: make test | make lint | make demo | make bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo bench stack-build clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

stack-build: $(STAMP)
	hack/stack build

test: $(STAMP) stack-build
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check publisher operator hack tests bench
	$(PY) -m mypy -p liberator_publisher -p liberator_operator

demo: $(STAMP)
	PYTHONPATH=hack $(PY) hack/demo.py

bench: $(STAMP) stack-build
	$(PY) -m bench $(BENCH_ARGS)

clean:
	hack/stack down || true
	rm -rf $(VENV) .stack
