# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make demo   run the bundled demo
#   make test   run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TOOLS := .tools

# uv from PATH if present, else installed from PyPI into .tools/ (kept apart from .venv,
# which `uv sync` keeps exactly to the lock).
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)

export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1

.PHONY: demo test check sync bench clean

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

sync: $(if $(findstring $(TOOLS),$(UV)),$(TOOLS)/bin/uv)
	$(UV) sync --frozen --python $(PYTHON) --quiet --compile-bytecode

demo: sync
	$(VENV)/bin/conveyor demo

# Lint, format and types first; then the suite, with a private PostgreSQL on 127.0.0.1 (started,
# then stopped, by the script).
check: sync
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: check
	bash scripts/with-test-services.sh $(VENV)/bin/python -m pytest

bench: sync
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(TOOLS) .conveyor
