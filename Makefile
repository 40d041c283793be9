# spikeprune developer tasks. `make test` is also what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
# Marks a finished install; redone only when the package's requirements change.
STAMP := $(VENV)/.installed

# GLUE data in the classic download layout (SST-2/, CoLA/, ...): make GLUE_DIR=..., else
# $SPIKEPRUNE_GLUE_DIR, else ../shared/glue beside the repo.
ifndef GLUE_DIR
GLUE_DIR := $(or $(SPIKEPRUNE_GLUE_DIR),$(abspath ../shared/glue))
endif

# Extra arguments: make demo DEMO_ARGS="..."; make test PYTEST_ARGS="-k ops -x".
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast services clean

# venv: create .venv and install the package (editable) with its test extras. torch goes first,
# pinned by constraints-cpu.txt, so that no dependency pulls a multi-GB CUDA build.
venv: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip

$(STAMP): pyproject.toml constraints-cpu.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -c constraints-cpu.txt torch
	$(VENV)/bin/python -m pip install -c constraints-cpu.txt -e ".[test]"
	touch $@

# Environment for anything that runs the package: fail fast on Hugging Face hub access (there is
# no internet here), keep Ray on 127.0.0.1, without usage stats or token auth (docs/DESIGN.md §8).
# A value already set in the environment wins. The tests read the GLUE data from SPIKEPRUNE_GLUE_DIR.
demo test test-fast: export SPIKEPRUNE_GLUE_DIR := $(GLUE_DIR)
demo test test-fast: export HF_HUB_OFFLINE ?= 1
demo test test-fast: export RAY_USAGE_STATS_ENABLED ?= 0
demo test test-fast: export RAY_AUTH_MODE ?= disabled
demo test test-fast: export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

# demo: the end-to-end demo of the CLI, on the GLUE data when it is there.
demo: venv
	$(VENV)/bin/spikeprune demo $(if $(wildcard $(GLUE_DIR)),--glue-dir $(GLUE_DIR)) $(DEMO_ARGS)

# test: the test suite, with PostgreSQL and chromium running. "No tests collected" (pytest's
# exit code 5) is a failure, like any other non-zero exit.
test: venv services
	eval "$$(bash scripts/services.sh env)"; \
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) || { \
		rc=$$?; [ $$rc -ne 5 ] || echo "error: pytest collected no tests" >&2; exit $$rc; }

# test-fast: the edit loop, every test but the integration ones (Ray, PostgreSQL, clusters, servers,
# the browser), so no service is started. `make test` still runs everything.
test-fast: venv
	$(VENV)/bin/python -m pytest -q -m "not integration" $(PYTEST_ARGS) || { \
		rc=$$?; [ $$rc -ne 5 ] || echo "error: pytest collected no tests" >&2; exit $$rc; }

# services: install (if missing) and start PostgreSQL on 127.0.0.1:55432 and chromium; idempotent.
services:
	bash scripts/services.sh start

# clean: build artefacts and caches (not .venv, not runs/; `rm -rf .venv` forces a re-install).
clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
