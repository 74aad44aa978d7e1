# Liberator: make test | make lint | make demo | make bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo bench stack-build image clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# As root (CI), also the node and the image, for the cluster tier (tests/test_cluster); with
# LIBERATOR_TEST_KUBECONFIG the tier runs on that cluster instead (docs/cluster.md).
stack-build: $(STAMP)
	hack/stack build
	@if [ "$$(id -u)" = 0 ] && [ -z "$${LIBERATOR_TEST_KUBECONFIG:-}" ]; then \
	  hack/stack build cluster && hack/stack image; \
	else echo "[stack] not root: the node is not built and tests/test_cluster will skip" >&2; fi

# The Dockerfile built with buildah, loaded into the local node when it runs (needs root).
image: $(STAMP)
	hack/stack image

test: $(STAMP) stack-build
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff format --check publisher operator hack tests bench examples
	$(PY) -m ruff check publisher operator hack tests bench examples
	$(PY) -m mypy -p liberator_publisher -p liberator_operator
	$(VENV)/bin/lint-imports

demo: $(STAMP)
	PYTHONPATH=hack $(PY) hack/demo.py

bench: $(STAMP) stack-build
	$(PY) -m bench $(BENCH_ARGS)

clean:
	hack/stack down || true
	rm -rf $(VENV) .stack
